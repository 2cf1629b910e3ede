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
// One pool per process, as TVM's is: every library carries a pool, but when it is loaded a library
// looks for one already published in TVM-FFI's global function table (the one meeting point
// libraries loaded RTLD_LOCAL all see: the runtime is loaded RTLD_GLOBAL, and the generated code calls
// into it anyway) and runs on it; only the first library to get there publishes and starts its own.
// Two pools in one process (models used in turn, a library and its profiled twin, knob-search
// candidates) would each keep a worker waiting beside the other's work. Where no TVM-FFI is found
// (weak symbols left null), a library runs on its own pool.
//
// The pool has as many threads (the caller included) as TVM_NUM_THREADS says, else ONEXN_POOL_THREADS
// (the num-cores of the library that started it). It starts on the first parallel loop and again in a
// forked child (which inherits no threads). A parallel loop entered while another thread's loop runs on
// the pool is run whole by its caller instead.
#if defined(__linux__) || defined(__ANDROID__)

#include <tvm/ffi/c_api.h>

// Weak: a library loaded where no TVM-FFI runtime is keeps its own pool instead of failing to load.
#pragma weak TVMFFIFunctionGetGlobal
#pragma weak TVMFFIFunctionSetGlobal
#pragma weak TVMFFIFunctionCreate
#pragma weak TVMFFIFunctionCall
#pragma weak TVMFFIObjectDecRef
#pragma weak TVMFFIErrorMoveFromRaised

#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <climits>
#include <cstdint>
#include <cstring>
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
  int wanted = 0;   // threads set with set_threads (0: TVM_NUM_THREADS, else ONEXN_POOL_THREADS)
  std::atomic<int> stopping{0};
  std::atomic<int> alive{0};  // workers running
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
// offering the core with sched_yield (another process, or a library that found no TVM-FFI and runs its
// own pool, may want it: two pools spinning on two cores slowed both up to fourfold), then, where
// ``word`` is given, asleep on it.
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
    if (pool.stopping.load(std::memory_order_acquire)) break;
    run_tasks(id);
    pool.pending.fetch_sub(1, std::memory_order_release);
  }
  pool.alive.fetch_sub(1, std::memory_order_release);
  return nullptr;
}

int requested_threads() {
  const char* env = getenv("TVM_NUM_THREADS");
  int threads = pool.wanted > 0 ? pool.wanted : env ? atoi(env) : ONEXN_POOL_THREADS;
  if (threads < 1) threads = ONEXN_POOL_THREADS;
  return threads < kMaxThreads ? threads : kMaxThreads;
}

void forget_threads_in_child() {  // a forked child has only the thread that forked
  pool.threads = 0;
  pool.busy.store(0);
  pool.sleepers.store(0);
  pool.alive.store(0);
  pool.stopping.store(0);
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
    pool.alive.store(started - 1);
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
  int idle = 0;
  if (!pool.busy.compare_exchange_strong(idle, 1, std::memory_order_acquire)) {
    return run_serially(lambda, cdata, num_task > 0 ? num_task : 1);  // the pool is another thread's now
  }
  if (pool.threads == 0) start();
  if (num_task <= 0) num_task = pool.threads;
  if (pool.threads == 1) {
    pool.busy.store(0, std::memory_order_release);
    return run_serially(lambda, cdata, num_task);
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

int pool_threads() { return pool.threads; }

int next_threads() { return pool.threads != 0 ? pool.threads : requested_threads(); }

// The pool's size from now on (0: back to TVM_NUM_THREADS, else the build's num-cores), as TVM's
// runtime.config_threadpool sets its own: the running workers stop and the next loop starts anew.
// Returns the threads the next loop runs on.
int set_threads(int threads) {
  int idle = 0;
  while (!pool.busy.compare_exchange_weak(idle, 1, std::memory_order_acquire)) {
    idle = 0;
    sched_yield();
  }
  pthread_mutex_lock(&pool.start_lock);
  const int wanted = threads > 0 ? threads : 0;
  if (wanted != pool.wanted && pool.threads != 0) {
    pool.stopping.store(1);
    pool.generation.fetch_add(1);
    futex(&pool.generation, FUTEX_WAKE_PRIVATE, INT_MAX);
    while (pool.alive.load(std::memory_order_acquire) != 0) sched_yield();
    pool.stopping.store(0);
    pool.threads = 0;
  }
  pool.wanted = wanted;
  const int next = next_threads();
  pthread_mutex_unlock(&pool.start_lock);
  pool.busy.store(0, std::memory_order_release);
  return next;
}

// What a library publishes and the others run on. ``abi`` changes whenever these fields do, so a
// library never calls a pool laid out differently (it then keeps its own).
struct PoolApi {
  int abi;
  int (*launch)(ParallelLambda, void*, int);
  int (*barrier)(int, ParallelGroupEnv*);
  int (*threads)();
};
constexpr int kPoolAbi = 1;
const PoolApi own_pool{kPoolAbi, parallel_launch, parallel_barrier, pool_threads};
std::atomic<const PoolApi*> chosen_pool{nullptr};
constexpr char kGlobalName[] = "onexn.thread_pool.v1";
constexpr char kThreadsName[] = "onexn.thread_pool.threads";

TVMFFIByteArray byte_array(const char* name) { return TVMFFIByteArray{name, strlen(name)}; }

int publish_call(void*, const TVMFFIAny*, int32_t, TVMFFIAny* result) {
  result->type_index = kTVMFFIOpaquePtr;
  result->v_ptr = const_cast<PoolApi*>(&own_pool);
  return 0;
}

// onexn.thread_pool.threads(): the threads the process pool's next loop runs on; with an int
// argument, sets them first (see set_threads). How a runner (onexn-bench --threads) sizes the pool.
int threads_call(void*, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  const bool setting = num_args >= 1 && (args[0].type_index == kTVMFFIInt || args[0].type_index == kTVMFFIBool);
  result->type_index = kTVMFFIInt;
  result->v_int64 = setting ? set_threads(static_cast<int>(args[0].v_int64)) : next_threads();
  return 0;
}

void drop_raised_error() {
  TVMFFIObjectHandle error = nullptr;
  TVMFFIErrorMoveFromRaised(&error);
  if (error != nullptr) TVMFFIObjectDecRef(error);
}

// The pool published under kGlobalName, or null.
const PoolApi* published_pool() {
  const TVMFFIByteArray name = byte_array(kGlobalName);
  TVMFFIObjectHandle function = nullptr;
  if (TVMFFIFunctionGetGlobal(&name, &function) != 0) {
    drop_raised_error();
    return nullptr;
  }
  if (function == nullptr) return nullptr;
  TVMFFIAny result{};
  result.type_index = kTVMFFINone;
  const int failed = TVMFFIFunctionCall(function, nullptr, 0, &result);
  TVMFFIObjectDecRef(function);
  if (failed != 0) {
    drop_raised_error();
    return nullptr;
  }
  if (result.type_index != kTVMFFIOpaquePtr) return nullptr;
  const PoolApi* api = static_cast<const PoolApi*>(result.v_ptr);
  return api->abi == kPoolAbi ? api : nullptr;
}

// Registers ``call`` under ``name`` unless something is registered there already.
bool set_global(const char* name, TVMFFISafeCallType call) {
  const TVMFFIByteArray bytes = byte_array(name);
  TVMFFIObjectHandle function = nullptr;
  if (TVMFFIFunctionCreate(nullptr, call, nullptr, &function) != 0) {
    drop_raised_error();
    return false;
  }
  const bool done = TVMFFIFunctionSetGlobal(&bytes, function, 0) == 0;
  TVMFFIObjectDecRef(function);  // the table holds its own reference
  if (!done) drop_raised_error();
  return done;
}

// The published pool, else this library's, published now (another library may publish between our
// look and our publishing: then its pool is taken).
const PoolApi* choose_pool() {
  if (&TVMFFIFunctionGetGlobal == nullptr || &TVMFFIFunctionSetGlobal == nullptr) return &own_pool;
  if (const PoolApi* api = published_pool()) return api;
  if (set_global(kGlobalName, publish_call)) {
    set_global(kThreadsName, threads_call);
    return &own_pool;
  }
  const PoolApi* api = published_pool();
  return api ? api : &own_pool;
}

inline const PoolApi* process_pool() {
  const PoolApi* api = chosen_pool.load(std::memory_order_acquire);
  if (api == nullptr) {
    api = choose_pool();
    chosen_pool.store(api, std::memory_order_release);
  }
  return api;
}

int launch_on_process_pool(ParallelLambda lambda, void* cdata, int num_task) {
  return process_pool()->launch(lambda, cdata, num_task);
}

int barrier_on_process_pool(int task_id, ParallelGroupEnv* penv) {
  return process_pool()->barrier(task_id, penv);
}

// Chosen (and published) when the library is loaded, so onexn.thread_pool.threads is there to call
// before the first inference.
__attribute__((constructor)) void choose_at_load() { process_pool(); }

}  // namespace

extern "C" {
__attribute__((visibility("hidden"))) void* __TVMBackendParallelLaunch =
    reinterpret_cast<void*>(&launch_on_process_pool);
__attribute__((visibility("hidden"))) void* __TVMBackendParallelBarrier =
    reinterpret_cast<void*>(&barrier_on_process_pool);
// So a test (or a user) can see which pool a loaded library runs on: the process pool's thread count
// (0 before this library's first parallel loop, or the pool's first), and whether it is this library's.
__attribute__((visibility("default"))) int onexn_thread_pool_threads() {
  const PoolApi* api = chosen_pool.load(std::memory_order_acquire);
  return api ? api->threads() : 0;
}
__attribute__((visibility("default"))) int onexn_thread_pool_is_own() {
  return chosen_pool.load(std::memory_order_acquire) == &own_pool;
}
}

#endif
