// Threads for the recurrent step: a small persistent pool and a per-step
// barrier (plain std::thread, no OpenMP: the same code builds with clang on
// macOS).
//
// A fused LSTM step splits its hidden units into blocks; each thread owns a
// contiguous range of blocks (all four gate columns of its units), so every
// element is computed by the same instructions whatever the thread count and
// results are bit-identical. The new h of step t is read by every thread at
// step t + 1, hence one barrier per step.

#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

namespace edgelstm {

// The recurrent step's thread count (>= 1). set_recurrent_threads(n) or
// set_blas_threads(n) fixes it; else EDGELSTM_NUM_THREADS (read once); else
// it follows the kernels' BLAS (OPENBLAS_NUM_THREADS, default: the cores) or,
// where the BLAS has no count (Accelerate), the number of cores.
int recurrent_threads();

// n >= 1 fixes the count; 0 returns to the default above.
void set_recurrent_threads(int n);

// Whether the default above comes from EDGELSTM_NUM_THREADS, the BLAS or the
// core count: "set", "EDGELSTM_NUM_THREADS", "blas" or "cores".
const char* recurrent_threads_source();

// Multiply-adds per thread per step below which a fused LSTM step does not
// take another thread (see fused_team_size in recurrent_seq.cpp). Settable
// for tests and benchmarks (n >= 1; 1 threads every step that has a block
// per thread).
long step_min_macs();
void set_step_min_macs(long n);

// Whether run_team backs off to one thread after contended calls (default
// on; tests that count threads turn it off).
void set_step_backoff(bool on);
bool step_backoff();

// Threads the latest threaded recurrent call (a fused LSTM, or a GRU/RNN on
// the packed step) ran its steps on (tests check that a shape was threaded).
int last_step_threads();
void note_step_threads(int n);

// A reusable barrier for `n` threads: spins briefly (a step of the threaded
// shapes takes tens of microseconds, a sleep/wake pair about as long), then
// blocks, so a descheduled peer on a busy machine costs no burnt core.
class StepBarrier {
 public:
  // Not while any thread is waiting.
  void reset(int n);
  void wait();
  // Crossings so far (wraps); time all threads spent waiting here since
  // reset().
  uint32_t generation() const;
  std::chrono::nanoseconds waited() const;

 private:
  int n_ = 1;
  std::atomic<int> count_{1};
  std::atomic<uint32_t> gen_{0};
  std::atomic<long long> waited_ns_{0};
  std::mutex m_;
  std::condition_variable cv_;
};

// body(tid, n, barrier) for tid in [0, n): the caller runs tid 0 and returns
// once every thread has left body. n is `want`, or 1 when want <= 1, when the
// pool is already in use by another call (nested or concurrent), or during a
// contention back-off (recent teams kept waiting on descheduled peers; see
// step_pool.cpp): body must be correct for any n. Returns the n used. body
// must not throw.
int run_team(
    int want,
    const std::function<void(int tid, int n, StepBarrier& barrier)>& body);

} // namespace edgelstm
