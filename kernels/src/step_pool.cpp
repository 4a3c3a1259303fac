// The recurrent step's thread pool and barrier (see step_pool.h).

#include "step_pool.h"
#include "blas.h"

#include <pthread.h>

#include <chrono>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

namespace edgelstm {

namespace {

// More would only add barrier traffic: a step has at most H / 8 blocks.
constexpr int kMaxThreads = 64;

// How a waiter waits: kPause of busy spinning (a barrier of the threaded
// shapes is normally crossed within a few microseconds), then spinning with
// a yield of the core every 64 pauses until kSpin (a peer that is queued on
// this core, as on a machine with more runnable threads than cores, gets to
// run: pure spinning would keep it off), then sleeping. Measured on a loaded 2-core VM: pure spinning (50 us
// to 1 ms) let two threads take 6-100 ms where one took 0.4 ms (B=1, H=128,
// T=100); with the yield phase 1.1-1.6 ms, and the back-off below covers
// the rest.
constexpr auto kPause = std::chrono::microseconds(10);
constexpr auto kSpin = std::chrono::microseconds(100);

using Body = std::function<void(int, int, StepBarrier&)>;

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
  asm volatile("yield");
#endif
}

// Waits until done(): spins for kPause, then spins yielding the core every
// 64 pauses until kSpin, then sleeps on cv (woken by notify).
template <class Done>
void spin_then_block(const Done& done, std::mutex& m, std::condition_variable& cv) {
  const auto start = std::chrono::steady_clock::now();
  for (int i = 1;; ++i) {
    if (done()) {
      return;
    }
    if ((i & 63) == 0) {
      const auto waited = std::chrono::steady_clock::now() - start;
      if (waited > kSpin) {
        break;
      }
      if (waited > kPause) {
        std::this_thread::yield();
        continue;
      }
    }
    cpu_relax();
  }
  std::unique_lock<std::mutex> lk(m);
  cv.wait(lk, done);
}

// After the state a waiter checks has changed: taking the mutex orders the
// change before a sleeper's check, so no wake-up is lost.
void notify(std::mutex& m, std::condition_variable& cv) {
  { std::lock_guard<std::mutex> lk(m); }
  cv.notify_all();
}

// Contention back-off. A thread that is descheduled (more runnable threads
// than cores: a shared machine) stalls every step for up to a time slice, so
// a team then runs far slower than one thread. A call whose threads spent
// more than 1 / kContendedShare of their time waiting at the step barrier
// is contended; once contended calls have run back to back for kPersist,
// the following calls run on one thread for a while, doubling from
// kBackoffMin to kBackoffMax while calls stay contended; one calm call
// resets it. kPersist lets a helper's core warm up: on the idle 2-core VM
// the first ~60 ms of a process's threaded calls wait half their time (the
// idle core's clock ramping up), then 3-5%. Results do not depend on the
// thread count, only speed does.
constexpr int kContendedShare = 4;
constexpr auto kPersist = std::chrono::milliseconds(200);
constexpr auto kBackoffMin = std::chrono::milliseconds(20);
constexpr auto kBackoffMax = std::chrono::milliseconds(2000);
std::atomic<bool> g_backoff{true};

class Pool {
 public:
  int run(int want, const Body& body) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    const auto now = std::chrono::steady_clock::now();
    const bool backoff = g_backoff.load(std::memory_order_relaxed);
    if (want <= 1 || !busy.owns_lock() || (backoff && now < calm_after_)) {
      StepBarrier solo;
      body(0, 1, solo);
      return 1;
    }
    want = want < kMaxThreads ? want : kMaxThreads;
    while (int(helpers_.size()) < want - 1) {
      try {
        helpers_.emplace_back(
            &Pool::helper, this, int(helpers_.size()) + 1,
            job_.load(std::memory_order_relaxed));
      } catch (const std::system_error&) {
        break; // no more threads to be had: run with those there are
      }
    }
    const int have = int(helpers_.size()) + 1;
    const int n = want < have ? want : have;
    body_ = &body;
    n_ = n;
    barrier_.reset(n);
    // Every helper acknowledges every job (those past n at once), so none
    // can still be reading body_ / n_ when the next job writes them.
    pending_.store(int(helpers_.size()), std::memory_order_relaxed);
    const uint32_t gen0 = barrier_.generation();
    job_.fetch_add(1, std::memory_order_release);
    notify(job_m_, job_cv_);
    body(0, n, barrier_);
    spin_then_block(
        [&] { return pending_.load(std::memory_order_acquire) == 0; }, done_m_,
        done_cv_);
    const auto took = std::chrono::steady_clock::now() - now;
    if (barrier_.generation() == gen0) {
      // No barrier crossed (the projection's split): nothing measured.
    } else if (barrier_.waited() * kContendedShare > took * n) {
      contended_for_ += took;
      if (contended_for_ >= kPersist) {
        calm_after_ = std::chrono::steady_clock::now() + backoff_;
        backoff_ = backoff_ * 2 < kBackoffMax ? backoff_ * 2 : kBackoffMax;
      }
    } else {
      contended_for_ = {};
      backoff_ = kBackoffMin;
    }
    return n;
  }

 private:
  void helper(int id, uint64_t seen) {
    for (;;) {
      spin_then_block(
          [&] { return job_.load(std::memory_order_acquire) != seen; }, job_m_,
          job_cv_);
      seen = job_.load(std::memory_order_acquire);
      if (id < n_) {
        (*body_)(id, n_, barrier_);
      }
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        notify(done_m_, done_cv_);
      }
    }
  }

  std::mutex busy_; // held by the call that owns the team
  // Contention back-off (under busy_): single-threaded until calm_after_.
  std::chrono::steady_clock::time_point calm_after_{};
  std::chrono::milliseconds backoff_{kBackoffMin};
  std::chrono::steady_clock::duration contended_for_{}; // back to back
  std::vector<std::thread> helpers_; // helper i has id i + 1
  std::atomic<uint64_t> job_{0};
  const Body* body_ = nullptr;
  int n_ = 1;
  StepBarrier barrier_;
  std::atomic<int> pending_{0};
  std::mutex job_m_, done_m_;
  std::condition_variable job_cv_, done_cv_;
};

// Never destroyed: helpers sleep in it until the process exits. A forked
// child has none of the parent's threads, so it starts a pool of its own
// (defensive: MLX 0.32 itself hangs evaluating in a forked child, so no
// test reaches this).
std::atomic<Pool*> g_pool{nullptr};

void forget_pool_in_child() {
  g_pool.store(nullptr, std::memory_order_relaxed); // the parent's is leaked
}

Pool& pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) {
    return *p;
  }
  static std::once_flag atfork;
  std::call_once(atfork, [] {
    pthread_atfork(nullptr, nullptr, &forget_pool_in_child);
  });
  Pool* fresh = new Pool(); // no helpers yet: cheap to drop if another won
  if (g_pool.compare_exchange_strong(p, fresh, std::memory_order_acq_rel)) {
    return *fresh;
  }
  delete fresh;
  return *p;
}

std::atomic<int> g_threads{0}; // set_recurrent_threads; 0: the default

// benchmarks/bench_threads.py on the idle 2-core Xeon VM (AVX-512), 2 threads
// against 1, T=100: B=4 H=256 and B=16 H=128 (1M multiply-adds a step)
// 1.5-1.6x, B=1 H=512 3.5x (half the weight per core's L2), B=8 H=128
// (512K) 1.4x but B=32 H=64 (512K, 4 blocks) 0.85x, B=1 H=256 0.45x and
// B=1 H=128 0.2x: a thread per 512K is the lowest bound with no loss seen.
constexpr long kStepMinMacs = 1L << 19;
std::atomic<long> g_min_macs{kStepMinMacs};
std::atomic<int> g_last_team{0};

int env_threads() {
  static const int n = [] {
    const char* v = std::getenv("EDGELSTM_NUM_THREADS");
    if (!v || !*v) {
      return 0;
    }
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    return (*end == '\0' && n >= 1) ? int(n < kMaxThreads ? n : kMaxThreads)
                                    : 0; // not a count: ignored
  }();
  return n;
}

int cores() {
  const unsigned n = std::thread::hardware_concurrency();
  return n ? int(n < kMaxThreads ? n : kMaxThreads) : 1;
}

} // namespace

void StepBarrier::reset(int n) {
  n_ = n;
  count_.store(n, std::memory_order_relaxed);
  waited_ns_.store(0, std::memory_order_relaxed);
}

uint32_t StepBarrier::generation() const {
  return gen_.load(std::memory_order_acquire);
}

std::chrono::nanoseconds StepBarrier::waited() const {
  return std::chrono::nanoseconds(waited_ns_.load(std::memory_order_relaxed));
}

void StepBarrier::wait() {
  if (n_ <= 1) {
    return;
  }
  // Read before arriving: the generation cannot move until this thread has.
  const uint32_t g = gen_.load(std::memory_order_acquire);
  if (count_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    count_.store(n_, std::memory_order_relaxed);
    gen_.store(g + 1, std::memory_order_release);
    notify(m_, cv_);
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  spin_then_block(
      [&] { return gen_.load(std::memory_order_acquire) != g; }, m_, cv_);
  waited_ns_.fetch_add(
      std::chrono::duration_cast<std::chrono::nanoseconds>(
          std::chrono::steady_clock::now() - start)
          .count(),
      std::memory_order_relaxed);
}

void set_step_backoff(bool on) {
  g_backoff.store(on, std::memory_order_relaxed);
}

bool step_backoff() {
  return g_backoff.load(std::memory_order_relaxed);
}

int run_team(int want, const Body& body) {
  if (want <= 1) {
    StepBarrier solo;
    body(0, 1, solo);
    return 1;
  }
  return pool().run(want, body);
}

int recurrent_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  if (n > 0) {
    return n;
  }
  if ((n = env_threads()) > 0) {
    return n;
  }
  if ((n = blas_threads()) > 0) {
    return n < kMaxThreads ? n : kMaxThreads;
  }
  return cores();
}

void set_recurrent_threads(int n) {
  if (n < 0) {
    throw std::invalid_argument("set_recurrent_threads: n must be >= 0");
  }
  g_threads.store(n < kMaxThreads ? n : kMaxThreads, std::memory_order_relaxed);
}

int last_step_threads() {
  return g_last_team.load(std::memory_order_relaxed);
}

void note_step_threads(int n) {
  g_last_team.store(n, std::memory_order_relaxed);
}

long step_min_macs() {
  return g_min_macs.load(std::memory_order_relaxed);
}

void set_step_min_macs(long n) {
  if (n < 1) {
    throw std::invalid_argument("set_step_min_macs: n must be >= 1");
  }
  g_min_macs.store(n, std::memory_order_relaxed);
}

const char* recurrent_threads_source() {
  if (g_threads.load(std::memory_order_relaxed) > 0) {
    return "set";
  }
  if (env_threads() > 0) {
    return "EDGELSTM_NUM_THREADS";
  }
  return blas_threads() > 0 ? "blas" : "cores";
}

} // namespace edgelstm
