// The LSTM recurrence on int8 recurrent weights for small batches: the
// sequence loop around lstm_fused_step_q8 (gates_packed_q8.inc) and its
// per-ISA table.

#include "lstm_q8.h"
#include "step_pool.h"
#include "gates.h"

#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

namespace edgelstm {

const Q8Fns& q8_fns() {
  static const Q8Fns fns = [] {
#define EDGELSTM_Q8_TABLE(ns)                                           \
  Q8Fns {                                                               \
    ns::packed_q8_bytes, ns::packed_q8_scales, ns::pack_gates_q8,       \
        ns::lstm_fused_step_q8                                          \
  }
#ifdef EDGELSTM_HAVE_AVX2
    // Same build as gate_fns(): the packing width must match the step's.
    const char* isa = gate_fns().isa;
    if (std::strcmp(isa, "avx512") == 0) {
      Q8Fns f = EDGELSTM_Q8_TABLE(gates_avx512);
      if (__builtin_cpu_supports("avx512vnni")) {
        f.q8_vnni_kpad = gates_avx512::q8_vnni_kpad;
        f.packed_q8_vnni_bytes = gates_avx512::packed_q8_vnni_bytes;
        f.pack_gates_q8_vnni = gates_avx512::pack_gates_q8_vnni;
        f.lstm_fused_step_q8_vnni = gates_avx512::lstm_fused_step_q8_vnni;
      }
      return f;
    }
    if (std::strcmp(isa, "avx2") == 0) {
      return EDGELSTM_Q8_TABLE(gates_avx2);
    }
#endif
    return EDGELSTM_Q8_TABLE(gates_base);
#undef EDGELSTM_Q8_TABLE
  }();
  return fns;
}

namespace detail {

namespace {

// When an int8 Wh runs the int8 step rather than the fp32 fused step on its
// once-expanded packing, and which int8 step. Measured with a B x H sweep
// and benchmarks/bench_quant.py --workload step (Sapphire Rapids, AVX-512 +
// VNNI, 2 MiB L2; T=100, one thread, minimum or median of interleaved
// passes, +-15% from run to run on the shared box; see the README's int8
// section). Against the fp32 packing:
// - 1 row: VNNI 1.3-1.8x at H=128-256 (in L2), ~4x at H=512-1024; it beats
//   the widening step by 1.05-1.45x;
// - 2 rows: widening (2-row tiles) 1.5-1.7x at H=128-256, 3.5x+ beyond;
//   VNNI (4 limb products per row) 0.7-1.7x of it, no consistent winner
//   (ahead at H=256-512, behind at 128 and 1024): widening;
// - 3 rows: widening 0.93-0.98x while the fp32 packing sits in L2 (the fp32
//   step's own 3-row tile, plus the widening), 1.5x at H=384: from H=384;
// - 4 rows (one 4-row tile): 1.23-1.31x at H=128, 2.4-3x at H=512;
// - 5-7 rows (a 3-row tile among them): 0.95-1.19x at H=128 from run to
//   run, 1.6-2.2x at H=512: from H=384, as 3 rows;
// - 8-16 rows: 0.97-1.05x at H=128-256, 1.3-1.7x at H=384-1024: from
//   H=384 (fp32 packing 2.25+ MiB, past L2);
// - more rows: not measured; fp32 (its blocked GEMM).
// The AVX2 build (EDGELSTM_ISA=avx2 on the same CPU; 8 lanes, 3-row tiles
// at most in 16 registers) widens at twice the uops per weight: 1.12x at
// H=128 B=1 but 0.87-0.95x at B=2-7, 1.2-3x at H=512 for B=1-7. So builds
// narrower than AVX-512 (and the baseline, not measured) take the int8 step
// at one row or from H=384.
// Depends on B and H only, never on T: a streamed chunk rounds as the full
// pass does.
constexpr int kQ8VnniRows = 1;
constexpr int kQ8MaxRows = 16;
constexpr int kQ8WideHidden = 384;

bool q8_pays(int B, int H) {
  const bool wide = gate_fns().pack_width() >= 16; // AVX-512 tiles
  if (B <= 1 || (wide && (B == 2 || B == 4))) {
    return true;
  }
  return B <= kQ8MaxRows && H >= kQ8WideHidden;
}

// EDGELSTM_Q8_STEP=0 turns the int8 step off (int8 Wh expanded to the fp32
// packing, the previous path), =1 takes it at every batch (benchmarks and
// tests compare them).
int q8_override() {
  const char* v = std::getenv("EDGELSTM_Q8_STEP"); // ~100 ns a call
  if (v && std::strcmp(v, "0") == 0) {
    return 0;
  }
  if (v && std::strcmp(v, "1") == 0) {
    return 1;
  }
  return -1;
}

} // namespace

bool run_lstm_q8(
    const SeqConfig& cfg,
    int T,
    int B,
    const LayerIO& io,
    const float* xp,
    bool xp_time_major) {
  if (cfg.cell != Cell::LSTM || !io.wh_scales) {
    return false;
  }
  const int force = q8_override();
  const int H = io.wh->shape(1);
  if (force == 0 || (force < 0 && !q8_pays(B, H))) {
    return false;
  }
  note_step_threads(1); // the int8 step is single-threaded
  const int G = 4 * H;
  const Q8Fns& fns = q8_fns();
  // EDGELSTM_Q8_VNNI=0 / =1: the widening / the VNNI step at any batch on
  // a VNNI CPU (benchmarks, tests).
  const char* vnni_env = std::getenv("EDGELSTM_Q8_VNNI");
  const int vnni_force =
      vnni_env && std::strcmp(vnni_env, "0") == 0 ? 0
      : vnni_env && std::strcmp(vnni_env, "1") == 0 ? 1 : -1;
  const bool vnni = fns.lstm_fused_step_q8_vnni &&
      (vnni_force == 1 || (vnni_force < 0 && B <= kQ8VnniRows));
  auto packing = [&](bool v) {
    return packed_weight_q8(
        *io.wh, *io.wh_scales, v, io.wh_owner, io.wh_scales_owner);
  };
  const auto packed = packing(vnni);
  // The widening packing where the VNNI step declines a step (non-finite h).
  std::shared_ptr<const PackedQ8> widen = vnni ? nullptr : packed;
  const size_t state = size_t(B) * H;
  float* y = io.y;
  float* h = io.h;
  float* c = io.c;
  // Row offsets as in run_layer.
  auto xrow = [&](int t, int b) {
    return xp_time_major ? (size_t(t) * B + b) * G : (size_t(b) * T + t) * G;
  };
  auto yrow = [&](int t, int b) {
    return cfg.batch_first ? (size_t(b) * T + t) * H : (size_t(t) * B + b) * H;
  };
  // The state ping-pongs between h and hbuf (a step reads all of h).
  std::vector<float> hbuf(state);
  float* hcur = h;
  float* hnext = hbuf.data();
  std::vector<const float*> xr(B);
  std::vector<float*> yr(B);
  std::vector<unsigned char> limbs(vnni ? size_t(B) * 4 * fns.q8_vnni_kpad(H) : 0);
  std::vector<double> hs(vnni ? B : 0);
  for (int s = 0; s < T; ++s) {
    const int t = cfg.reverse ? T - 1 - s : s;
    for (int b = 0; b < B; ++b) {
      yr[b] = y + yrow(t, b);
      if (!io.len || t < io.len[b]) {
        xr[b] = xp + xrow(t, b);
      } else {
        xr[b] = nullptr;
        std::memset(yr[b], 0, sizeof(float) * H);
      }
    }
    // The VNNI step declines (changing nothing) on a non-finite h.
    if (!vnni ||
        !fns.lstm_fused_step_q8_vnni(
            packed->qv.data(), packed->rs.data(), packed->s.data(), hcur, B, H,
            xr.data(), hnext, c, yr.data(), limbs.data(), hs.data())) {
      if (!widen) {
        widen = packing(false);
      }
      fns.lstm_fused_step_q8(
          widen->q.data(), widen->s.data(), hcur, B, H, xr.data(), hnext, c,
          yr.data());
    }
    std::swap(hcur, hnext);
  }
  if (hcur != h) {
    std::memcpy(h, hcur, state * sizeof(float));
  }
  return true;
}

} // namespace detail

} // namespace edgelstm
