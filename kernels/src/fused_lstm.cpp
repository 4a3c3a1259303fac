// The fused LSTM recurrence, threaded across hidden-unit blocks (see
// fused_lstm.h, step_pool.h).

#include "fused_lstm.h"
#include "gates.h"
#include "step_pool.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

namespace edgelstm {

namespace {

// Threads for a step of B rows and H units in nb blocks: one per
// step_min_macs() multiply-adds of the step's B * 4H * H (so the barrier each
// step costs stays small next to a thread's share), at most one per block,
// at most recurrent_threads().
int team_size(int B, int H, int nb) {
  const long long macs = (long long)B * 4 * H * H;
  const long long by_work = macs / std::max(1LL, (long long)step_min_macs());
  long long n = std::min<long long>(recurrent_threads(), by_work);
  n = std::min<long long>(n, nb);
  return n < 1 ? 1 : int(n);
}

} // namespace

int run_fused_lstm(const FusedLstmSeq& s) {
  const GateFns& fns = gate_fns();
  const int T = s.T, B = s.B, H = s.H;
  const size_t G = size_t(4) * H;
  const size_t state = size_t(B) * H;
  // Element offsets of row (t, b) in xp and y for either layout.
  auto xrow = [&](int t, int b) {
    return s.xp_time_major ? (size_t(t) * B + b) * G : (size_t(b) * T + t) * G;
  };
  auto yrow = [&](int t, int b) {
    return s.batch_first ? (size_t(b) * T + t) * H : (size_t(t) * B + b) * H;
  };
  auto valid = [&](int t, int b) { return !s.len || t < s.len[b]; };

  // The state ping-pongs between h and hbuf (a step reads all of h).
  std::vector<float> hbuf(state);
  // Each thread has its own row pointers and scratch, allocated here so
  // that no helper allocates (nothing in the team may throw).
  const int pw = fns.pack_width();
  const int nb = (H + pw - 1) / pw;
  const int want = team_size(B, H, nb);
  const size_t scratch_n = size_t(B) * 4 * pw;
  std::vector<const float*> xr_all(size_t(want) * B);
  std::vector<float*> yr_all(size_t(want) * B);
  const bool save = s.act != nullptr;
  std::vector<float*> save_all(save ? size_t(want) * 3 * B : 0);
  std::vector<float> scratch_all(size_t(want) * scratch_n);
  float* const h2 = hbuf.data();
  const int used = run_team(want, [&](int tid, int n, StepBarrier& barrier) {
    const int bk0 = int(long(nb) * tid / n);
    const int bk1 = int(long(nb) * (tid + 1) / n);
    const int j0 = std::min(bk0 * pw, H), j1 = std::min(bk1 * pw, H);
    const float** xr = xr_all.data() + size_t(tid) * B;
    float** yr = yr_all.data() + size_t(tid) * B;
    float* scratch = scratch_all.data() + size_t(tid) * scratch_n;
    float** sv = save ? save_all.data() + size_t(tid) * 3 * B : nullptr;
    const LstmSaveRows rows{sv, sv ? sv + B : nullptr, sv ? sv + 2 * B : nullptr};
    const size_t nj = sizeof(float) * (j1 - j0);
    float* hcur = s.h;
    float* hnext = h2;
    for (int k = 0; k < T; ++k) {
      const int t = s.reverse ? T - 1 - k : k;
      for (int b = 0; b < B; ++b) {
        yr[b] = s.y + yrow(t, b);
        if (valid(t, b)) {
          xr[b] = s.xp + xrow(t, b);
        } else {
          xr[b] = nullptr;
          std::memset(yr[b] + j0, 0, nj);
        }
        if (save) {
          // This thread's units of the row: the state read now, or finite
          // zeros past the length (the backward's weight-gradient matmuls
          // read every row).
          const size_t r = yrow(t, b);
          sv[b] = s.act + 4 * r;
          sv[B + b] = s.cp + r;
          sv[2 * B + b] = s.tc + r;
          if (xr[b]) {
            std::memcpy(s.hprev + r + j0, hcur + size_t(b) * H + j0, nj);
          } else {
            std::memset(s.hprev + r + j0, 0, nj);
            for (int q = 0; q < 4; ++q) {
              std::memset(sv[b] + size_t(q) * H + j0, 0, nj);
            }
            std::memset(sv[B + b] + j0, 0, nj);
            std::memset(sv[2 * B + b] + j0, 0, nj);
          }
        }
      }
      if (bk0 < bk1 && save) {
        fns.lstm_fused_step_save(
            s.packed, hcur, B, H, xr, hnext, s.c, yr, scratch, bk0, bk1, rows);
      } else if (bk0 < bk1) {
        fns.lstm_fused_step(
            s.packed, hcur, B, H, xr, hnext, s.c, yr, scratch, bk0, bk1);
      }
      // Step k + 1 reads every thread's units of hnext and overwrites
      // hcur, which slower threads may still be reading.
      if (k + 1 < T) {
        barrier.wait();
      }
      std::swap(hcur, hnext);
    }
  });
  note_step_threads(used);
  // run_team returned: every thread is done. After an odd number of steps
  // the state is in hbuf.
  if (T % 2 == 1) {
    std::memcpy(s.h, h2, state * sizeof(float));
  }
  return used;
}

} // namespace edgelstm
