// The thread pool our multi-core builds run their parallel loops on, linked into the model's library.
//
// Why not TVM's own: its workers wait for work in a loop of sched_yield() system calls and its caller
// waits for them the same way, so handing a layer to the other core and hearing back took 0.6-2.5 us
// on a Zen 5 cloud host with its two vCPUs near each other (and up to 5.5 us in some sessions); our
// models make 30-50 such hand-overs per inference. Here the workers spin on one cache line with a
// pause instruction (as XNNPACK's pthreadpool and onnxruntime's pool do) for 50 us, then offer their
// core with sched_yield for 2 ms, then sleep on a futex; the caller spins until the last worker is
// done: 0.10-0.28 us a hand-over on the same host (0.9-1.3 us with the vCPUs apart).
//
// How it replaces TVM's: TVM's LLVM code calls parallel loops through the pointer
// __TVMBackendParallelLaunch (and barriers through __TVMBackendParallelBarrier), which TVM's loader
// fills with its own functions when it can find the symbol in the library. The definitions below are
// strong and hidden: the linker takes them over the generated weak ones, and the loader, no longer
// seeing the symbols, leaves them pointing here. Any loader (Python, C++, RPC on a phone) therefore
// runs the library on this pool without knowing about it.
//
// The pool has as many threads (the caller included) as TVM_NUM_THREADS says, else ONEXN_POOL_THREADS
// (the build's num-cores). It starts on the first parallel loop and again in a forked child (which
// inherits no threads). A parallel loop entered while another thread's loop runs on the pool is run
// whole by its caller instead. Each library has its own pool: two libraries used in turn in one
// process have a worker each, which is why a waiting worker soon gives its core away.
#if defined(__linux__) || defined(__ANDROID__)

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstdlib>

#ifndef ONEXN_POOL_THREADS
#define ONEXN_POOL_THREADS 1
#endif

namespace {

struct ParallelGroupEnv {  // TVMParallelGroupEnv (tvm/runtime/c_backend_api.h)
  void* sync_handle;
  int32_t num_task;
};
typedef int (*ParallelLambda)(int task_id, ParallelGroupEnv* penv, void* cdata);

constexpr int kMaxThreads = 64;
constexpr int64_t kSpinNs = 50000;     // spinning, then
constexpr int64_t kYieldNs = 2000000;  // offering the core, then asleep

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield" ::: "memory");
#endif
}

struct Pool {
  alignas(64) std::atomic<uint32_t> generation{0};  // bumped once per parallel loop: the workers' signal
  alignas(64) std::atomic<int> pending{0};          // workers not yet done with the current loop
  alignas(64) ParallelLambda lambda = nullptr;
  void* cdata = nullptr;
  ParallelGroupEnv env{nullptr, 0};
  std::atomic<int> failed{0};
  alignas(64) std::atomic<int> sleepers{0};
  std::atomic<int> busy{0};
  int threads = 0;  // 0: not started (in this process)
  uint32_t first_generation = 0;
  pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
  alignas(64) std::atomic<int> barrier_count[kMaxThreads * 16];  // one cache line per task
  std::atomic<int> barrier_used{0};
};
Pool pool;

long futex(std::atomic<uint32_t>* word, int op, uint32_t value) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), op, value, nullptr, nullptr, 0);
}

void run_tasks(int first) {
  for (int task = first; task < pool.env.num_task; task += pool.threads) {
    if (pool.lambda(task, &pool.env, pool.cdata) != 0) pool.failed.store(1, std::memory_order_relaxed);
  }
}

int64_t now_ns() {
  timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<int64_t>(now.tv_sec) * 1000000000 + now.tv_nsec;
}

// Waits until ``ready()``: spinning for kSpinNs (the next layer's loop comes within microseconds), then
// offering the core with sched_yield (another library's pool, or anything else, may want it: two
// libraries alternating in one process each have a pool, and two pools spinning on two cores slowed
// both up to fourfold), then, where ``word`` is given, asleep on it.
template <typename Ready>
void wait_until(Ready ready, std::atomic<uint32_t>* word, uint32_t asleep_while) {
  const int64_t start = now_ns();
  for (int spins = 1; !ready(); ++spins) {
    if (spins % 64 != 0) {
      cpu_relax();
      continue;
    }
    const int64_t waited = now_ns() - start;
    if (waited < kSpinNs) continue;
    if (word == nullptr || waited < kYieldNs) {
      sched_yield();
      continue;
    }
    pool.sleepers.fetch_add(1);
    if (!ready()) futex(word, FUTEX_WAIT_PRIVATE, asleep_while);
    pool.sleepers.fetch_sub(1);
  }
}

void* worker(void* arg) {
  const int id = static_cast<int>(reinterpret_cast<intptr_t>(arg));
  uint32_t seen = pool.first_generation;  // the loops before this pool started are not its work
  for (;;) {
    wait_until([seen] { return pool.generation.load(std::memory_order_acquire) != seen; }, &pool.generation, seen);
    seen = pool.generation.load(std::memory_order_acquire);
    run_tasks(id);
    pool.pending.fetch_sub(1, std::memory_order_release);
  }
  return nullptr;
}

int requested_threads() {
  const char* env = getenv("TVM_NUM_THREADS");
  int threads = env ? atoi(env) : ONEXN_POOL_THREADS;
  if (threads < 1) threads = ONEXN_POOL_THREADS;
  return threads < kMaxThreads ? threads : kMaxThreads;
}

void forget_threads_in_child() {  // a forked child has only the thread that forked
  pool.threads = 0;
  pool.busy.store(0);
  pool.sleepers.store(0);
  pthread_mutex_init(&pool.start_lock, nullptr);
}

void start() {
  pthread_mutex_lock(&pool.start_lock);
  if (pool.threads == 0) {
    static bool registered = false;
    if (!registered) pthread_atfork(nullptr, nullptr, forget_threads_in_child);
    registered = true;
    const int threads = requested_threads();
    pool.first_generation = pool.generation.load();
    int started = 1;
    for (; started < threads; ++started) {
      pthread_t thread;
      if (pthread_create(&thread, nullptr, worker, reinterpret_cast<void*>(static_cast<intptr_t>(started))) != 0) break;
      pthread_detach(thread);
    }
    pool.threads = started;
  }
  pthread_mutex_unlock(&pool.start_lock);
}

int run_serially(ParallelLambda lambda, void* cdata, int num_task) {
  ParallelGroupEnv env{nullptr, num_task};
  for (int task = 0; task < num_task; ++task) {
    if (lambda(task, &env, cdata) != 0) return -1;
  }
  return 0;
}

int parallel_launch(ParallelLambda lambda, void* cdata, int num_task) {
  if (pool.threads == 0) start();
  if (num_task <= 0) num_task = pool.threads;
  int idle = 0;
  if (pool.threads == 1 || !pool.busy.compare_exchange_strong(idle, 1, std::memory_order_acquire)) {
    return run_serially(lambda, cdata, num_task);  // one thread, or the pool is another thread's now
  }
  if (pool.barrier_used.exchange(0, std::memory_order_relaxed)) {
    for (int i = 0; i < kMaxThreads; ++i) pool.barrier_count[i * 16].store(0, std::memory_order_relaxed);
  }
  pool.lambda = lambda;
  pool.cdata = cdata;
  pool.env.num_task = num_task;
  pool.env.sync_handle = &pool;
  pool.failed.store(0, std::memory_order_relaxed);
  pool.pending.store(pool.threads - 1, std::memory_order_relaxed);
  pool.generation.fetch_add(1);  // sequentially consistent, like the sleepers count read next: a worker
                                 // going to sleep sees this bump or is seen and woken
  if (pool.sleepers.load() != 0) futex(&pool.generation, FUTEX_WAKE_PRIVATE, INT_MAX);
  run_tasks(0);
  // (a worker the system put on this core cannot finish while we spin: after kSpinNs we offer it)
  wait_until([] { return pool.pending.load(std::memory_order_acquire) == 0; }, nullptr, 0);
  const int failed = pool.failed.load(std::memory_order_relaxed);
  pool.busy.store(0, std::memory_order_release);
  return failed ? -1 : 0;
}

// All tasks of the loop wait here for each other (TIR's global storage sync in a parallel loop).
// Needs every task running at once: not when the loop has more tasks than the pool has threads.
int parallel_barrier(int task_id, ParallelGroupEnv* penv) {
  const int num_task = penv->num_task;
  if (penv->sync_handle != &pool || num_task > pool.threads) return -1;
  pool.barrier_used.store(1, std::memory_order_relaxed);
  const int before = pool.barrier_count[task_id * 16].fetch_add(1, std::memory_order_release);
  for (int i = 0; i < num_task; ++i) {
    while (i != task_id && pool.barrier_count[i * 16].load(std::memory_order_acquire) <= before) cpu_relax();
  }
  return 0;
}

}  // namespace

extern "C" {
__attribute__((visibility("hidden"))) void* __TVMBackendParallelLaunch = reinterpret_cast<void*>(&parallel_launch);
__attribute__((visibility("hidden"))) void* __TVMBackendParallelBarrier = reinterpret_cast<void*>(&parallel_barrier);
// So a test (or a user) can see which pool a loaded library runs on: its thread count, 0 before its
// first parallel loop.
__attribute__((visibility("default"))) int onexn_thread_pool_threads() { return pool.threads; }
}

#endif
