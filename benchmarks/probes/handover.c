/* Producer -> sparse 1x1 consumer hand-over at 2 threads: why a layer that reads what the layer
 * before just wrote runs slower at 2 threads than on a warm input, even where each core reads only
 * the pixels it wrote itself.
 *
 * The consumer is a sparse pointwise layer in the shape of MobileNetV2's 576 -> 96 projection on a
 * 14x14 map at p = 0.9 (58 stored 1x4 blocks per block row): each core takes a pixel range of every
 * input plane it needs (core 0 pixels [0, SPLIT), core 1 the rest), jumping between planes. Before
 * each timed consumer run a writer rewrites the input in one of several ways, and the consumer's
 * time (both cores, fork to join) is averaged over the rounds.
 *
 * Layout "chw": plane c at c * P floats, so the two cores' pixel ranges interleave every 784 bytes.
 * Layout "tiled": each core's pixel range of all planes is one contiguous region ([tile][C][pixels]).
 *
 * Usage: handover LAYOUT THREADS ROUNDS   (LAYOUT chw|tiled, THREADS 1|2); one line per writer:
 * "<writer> <mean us> <core 0 us> <core 1 us>".
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { CI = 576, CO = 96, P = 196, NNZ = 58, SPLIT = 112, MAXPIX = 256 };
enum { WARM, OWN, CORE0_ALL, OTHER, CHANNEL_HALVES, WRITERS };
static const char *WRITER_NAMES[WRITERS] = {"none (warm: read again)", "each core its own pixels",
                                            "core 0 everything", "each core the other's pixels",
                                            "each core half of the planes"};
static float *tile[2], *out, *weights;
static int *channels, tiled, threads;
static double task_us[2];
static atomic_int phase, acks, command;

static double now_us(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static int pin(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

static float *at(int c, int p) { /* element (c, p) of the input in the chosen layout */
  if (!tiled) return tile[0] + (size_t)c * P + p;
  return p < SPLIT ? tile[0] + (size_t)c * SPLIT + p : tile[1] + (size_t)c * (P - SPLIT) + (p - SPLIT);
}

static void consume(int lo, int hi) {
  static __thread float acc[4][MAXPIX];
  int n = hi - lo;
  for (int r = 0; r < CO / 4; r++) {
    for (int j = 0; j < 4; j++) memset(acc[j], 0, sizeof(float) * n);
    for (int k = r * NNZ; k < (r + 1) * NNZ; k++) {
      const float *x = at(channels[k], lo), *w = weights + 4 * k;
      for (int v = 0; v < n; v++) {
        float xv = x[v];
        acc[0][v] += w[0] * xv; acc[1][v] += w[1] * xv; acc[2][v] += w[2] * xv; acc[3][v] += w[3] * xv;
      }
    }
    for (int j = 0; j < 4; j++) memcpy(out + (size_t)(4 * r + j) * P + lo, acc[j], sizeof(float) * n);
  }
}

static void write_range(int c0, int c1, int lo, int hi) {
  for (int c = c0; c < c1; c++)
    for (int p = lo; p < hi; p++) *at(c, p) = 1e-3f * (float)(p + c);
}

static void produce(int writer, int core) {
  int mine_lo = core ? SPLIT : 0, mine_hi = core ? P : SPLIT;
  if (threads == 1) { if (writer != WARM) write_range(0, CI, 0, P); return; }
  switch (writer) {
    case OWN: write_range(0, CI, mine_lo, mine_hi); break;
    case CORE0_ALL: if (core == 0) write_range(0, CI, 0, P); break;
    case OTHER: write_range(0, CI, core ? 0 : SPLIT, core ? SPLIT : P); break;
    case CHANNEL_HALVES: write_range(core ? CI / 2 : 0, core ? CI : CI / 2, 0, P); break;
    default: break;
  }
}

static void task(int cmd, int core) { /* cmd < WRITERS: a writer; cmd == WRITERS: the consumer */
  double start = now_us();
  if (cmd == WRITERS) consume(threads == 1 ? 0 : (core ? SPLIT : 0), threads == 1 ? P : (core ? P : SPLIT));
  else produce(cmd, core);
  task_us[core] = now_us() - start;
}

static void *worker(void *arg) {
  (void)arg;
  pin(1);
  for (int seen = 0;;) {
    int g;
    while ((g = atomic_load(&phase)) == seen) {}
    seen = g;
    int cmd = atomic_load(&command);
    if (cmd < 0) return NULL;
    task(cmd, 1);
    atomic_fetch_add(&acks, 1);
  }
}

static double on_all_cores(int cmd) {
  double start = now_us();
  if (threads == 1) { task(cmd, 0); return now_us() - start; }
  int before = atomic_load(&acks);
  atomic_store(&command, cmd);
  atomic_fetch_add(&phase, 1);
  task(cmd, 0);
  while (atomic_load(&acks) == before) {}
  return now_us() - start;
}

int main(int argc, char **argv) {
  if (argc != 4 || (strcmp(argv[1], "chw") && strcmp(argv[1], "tiled")) || (atoi(argv[2]) != 1 && atoi(argv[2]) != 2)) {
    fprintf(stderr, "usage: handover chw|tiled 1|2 ROUNDS\n");
    return 2;
  }
  tiled = !strcmp(argv[1], "tiled");
  threads = atoi(argv[2]);
  int rounds = atoi(argv[3]);
  if (pin(0) != 0 || (threads == 2 && sysconf(_SC_NPROCESSORS_ONLN) < 2)) {
    fprintf(stderr, "handover: needs CPUs 0%s\n", threads == 2 ? " and 1" : "");
    return 2;
  }
  size_t bytes = (size_t)CI * P * sizeof(float);
  tile[0] = aligned_alloc(4096, bytes + 4096);
  tile[1] = aligned_alloc(4096, bytes + 4096); /* a separate region: no page shared with tile 0 */
  out = aligned_alloc(4096, (size_t)CO * P * sizeof(float) + 4096);
  weights = malloc(sizeof(float) * 4 * (CO / 4) * NNZ);
  channels = malloc(sizeof(int) * (CO / 4) * NNZ);
  srand(0);
  for (int r = 0; r < CO / 4; r++) { /* each block row: NNZ distinct input channels, ascending (BSR order) */
    int n = 0;
    for (int c = 0; c < CI && n < NNZ; c++)
      if (rand() % (CI - c) < NNZ - n) channels[r * NNZ + n++] = c;
  }
  for (int i = 0; i < 4 * (CO / 4) * NNZ; i++) weights[i] = 0.5f;
  memset(tile[0], 0, bytes); memset(tile[1], 0, bytes);
  pthread_t thread;
  if (threads == 2) pthread_create(&thread, NULL, worker, NULL);
  double total[WRITERS] = {0}, core[WRITERS][2] = {{0}};
  for (int round = 0; round < rounds; round++)
    for (int w = 0; w < WRITERS; w++) {
      on_all_cores(w == WARM ? WRITERS : w); /* WARM: the consumer once, untimed */
      total[w] += on_all_cores(WRITERS);
      core[w][0] += task_us[0];
      core[w][1] += threads == 2 ? task_us[1] : 0;
    }
  for (int w = 0; w < (threads == 1 ? 2 : WRITERS); w++)
    printf("%s\t%.2f\t%.2f\t%.2f\n", w == OWN && threads == 1 ? "the core itself" : WRITER_NAMES[w],
           total[w] / rounds, core[w][0] / rounds, core[w][1] / rounds);
  if (threads == 2) {
    atomic_store(&command, -1);
    atomic_fetch_add(&phase, 1);
    pthread_join(thread, NULL);
  }
  return 0;
}
