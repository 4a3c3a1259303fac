// ThreadSanitizer check of the threaded fused LSTM recurrence (run_fused_lstm
// on the step pool), with no MLX or Python in the process: every thread
// count must reproduce one thread's bits, and TSan must report no race.
// tests/test_kernel_threads.py builds and runs it:
//
//   g++ -std=c++20 -O1 -g -fsanitize=thread -Ikernels/src \
//       kernels/tests/tsan_fused_lstm.cpp kernels/src/fused_lstm.cpp \
//       kernels/src/step_pool.cpp kernels/src/blas.cpp \
//       kernels/src/gates_base.cpp -o tsan_fused_lstm && ./tsan_fused_lstm 200
//
// (baseline gate loops: no EDGELSTM_HAVE_AVX2, no BLAS library linked.)

#include "fused_lstm.h"
#include "gates.h"
#include "step_pool.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

using namespace edgelstm;

namespace {

struct Out {
  std::vector<float> y, h, c;
  bool operator==(const Out& o) const {
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      return a.size() == b.size() &&
          std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
    };
    return same(y, o.y) && same(h, o.h) && same(c, o.c);
  }
};

} // namespace

int main(int argc, char** argv) {
  const int iters = argc > 1 ? std::atoi(argv[1]) : 100;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  auto uniform = [&](int lo, int hi) {
    return std::uniform_int_distribution<int>(lo, hi)(rng);
  };
  set_step_min_macs(1); // thread every shape
  set_step_backoff(false); // a busy machine must not turn the team off
  const GateFns& fns = gate_fns();
  int bad = 0, threaded = 0;
  for (int it = 0; it < iters; ++it) {
    const int B = uniform(1, 12), H = uniform(9, 70), T = uniform(1, 9);
    std::vector<float> wh(size_t(4) * H * H), xp(size_t(T) * B * 4 * H);
    std::vector<float> h0(size_t(B) * H), c0(size_t(B) * H);
    for (auto* v : {&wh, &xp, &h0, &c0}) {
      for (float& f : *v) {
        f = normal(rng);
      }
    }
    std::vector<float> packed(fns.packed_floats(4, H, H));
    fns.pack_gates(wh.data(), 4, H, H, packed.data());
    std::vector<int32_t> len(B);
    for (int32_t& l : len) {
      l = uniform(0, T);
    }
    const bool reverse = uniform(0, 1), batch_first = uniform(0, 1);
    auto run = [&](int threads) {
      set_recurrent_threads(threads);
      Out o{std::vector<float>(size_t(T) * B * H, -1.0f), h0, c0};
      FusedLstmSeq s;
      s.packed = packed.data();
      s.xp = xp.data();
      s.xp_time_major = !batch_first;
      s.y = o.y.data();
      s.batch_first = batch_first;
      s.h = o.h.data();
      s.c = o.c.data();
      s.len = len.data();
      s.reverse = reverse;
      s.T = T;
      s.B = B;
      s.H = H;
      threaded += run_fused_lstm(s) > 1;
      return o;
    };
    const Out want = run(1);
    for (int n : {2, 3, 2}) {
      if (!(run(n) == want)) {
        ++bad;
        std::printf("mismatch: B=%d H=%d T=%d threads=%d\n", B, H, T, n);
      }
    }
  }
  std::printf("%d cases, %d threaded runs, %d mismatches\n", iters, threaded, bad);
  return bad == 0 && threaded > 0 ? 0 : 1;
}
