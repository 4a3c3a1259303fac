// The backward's recompute of a forward pass (see recurrent_recompute.h).
// LSTM gate math is the forward kernel's own (lstm_row_save); GRU and RNN
// use std::exp / tanh in place of the vectorised approximations (~1e-7
// relative apart).

#include "recurrent_recompute.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "gates.h"
#include "layer_core.h"

namespace edgelstm::detail {

namespace {

inline float sigm(float x) {
  return 1.0f / (1.0f + std::exp(-x));
}

} // namespace

void recompute(
    const SeqConfig& cfg,
    const Rows& row,
    int H,
    const float* xp,
    const float* wh,
    const float* h0,
    const float* c0,
    const float* bhn,
    float* hprev,
    float* act,
    float* aux,
    float* aux2) {
  const int T = row.T, B = row.B;
  const int G = gate_count(cfg.cell) * H;
  const bool lstm = cfg.cell == Cell::LSTM;
  const bool gru = cfg.cell == Cell::GRU;
  const bool lbr = cfg.linear_before_reset;
  const size_t state = size_t(B) * H;
  auto valid = [&](int t, int b) { return row.valid(t, b); };
  const GateFns& fns = gate_fns();
  std::vector<float> h(state, 0.0f), c(lstm ? state : 0, 0.0f);
  std::vector<float> g(size_t(B) * G), rh(gru && !lbr ? state : 0, 0.0f);
  if (h0) {
    std::memcpy(h.data(), h0, sizeof(float) * state);
  }
  if (c0 && lstm) {
    std::memcpy(c.data(), c0, sizeof(float) * state);
  }
  // h @ Wh^T on Wh packed once per call (gemm_packed), as the backward's
  // gs @ Wh; GRU (ONNX default) runs two matmuls per step instead.
  // 64-byte aligned: misaligned packings split every vector load (layer_core.h).
  thread_local PackedFloats whp_fwd;
  if (!(gru && !lbr)) {
    fit_buffer(whp_fwd, size_t(fns.packed_floats(1, G, H)));
    fns.pack_gates(wh, 1, G, H, whp_fwd.data());
  }

  for (int s = 0; s < T; ++s) {
    const int t = row.time_of(s);
    if (gru && !lbr) {
      matmul_nt(h.data(), wh, g.data(), B, 2 * H, H, G);
      for (int b = 0; b < B; ++b) {
        const size_t r = row(t, b);
        const float* xr = xp + r * G;
        const float* gb = g.data() + size_t(b) * G;
        float* hb = h.data() + size_t(b) * H;
        float* a = act + r * G;
        float* rhb = rh.data() + size_t(b) * H;
        for (int j = 0; j < H; ++j) {
          const float rg = sigm(xr[j] + gb[j]);
          a[j] = rg;
          a[H + j] = sigm(xr[H + j] + gb[H + j]);
          rhb[j] = rg * hb[j];
        }
      }
      matmul_nt(rh.data(), wh + size_t(2) * H * H, g.data() + 2 * H, B, H, H, G);
    } else {
      fns.gemm_packed(h.data(), B, H, H, whp_fwd.data(), G, g.data(), G);
    }
    for (int b = 0; b < B; ++b) {
      const size_t r = row(t, b);
      if (!valid(t, b)) {
        // Finite zeros for the weight-gradient matmuls (buffers are reused).
        std::memset(hprev + r * H, 0, sizeof(float) * H);
        std::memset(act + r * G, 0, sizeof(float) * G);
        if (lstm || gru) {
          std::memset(aux + r * H, 0, sizeof(float) * H);
        }
        if (lstm) {
          std::memset(aux2 + r * H, 0, sizeof(float) * H);
        }
        continue;
      }
      const float* xr = xp + r * G;
      const float* gb = g.data() + size_t(b) * G;
      float* hb = h.data() + size_t(b) * H;
      float* a = act + r * G;
      std::memcpy(hprev + r * H, hb, sizeof(float) * H);
      if (lstm) {
        // The forward kernel's own gate math (lstm_row), saving activations.
        fns.lstm_row_save(
            gb, xr, hb, c.data() + size_t(b) * H, a, aux2 + r * H,
            aux + r * H, H);
      } else if (gru && lbr) {
        for (int j = 0; j < H; ++j) {
          const float rg = sigm(xr[j] + gb[j]);
          const float z = sigm(xr[H + j] + gb[H + j]);
          const float hp = gb[2 * H + j] + bhn[j];
          const float n = std::tanh(xr[2 * H + j] + rg * hp);
          a[j] = rg;
          a[H + j] = z;
          a[2 * H + j] = n;
          aux[r * H + j] = hp;
          hb[j] = (1.0f - z) * n + z * hb[j];
        }
      } else if (gru) {
        const float* rhb = rh.data() + size_t(b) * H;
        for (int j = 0; j < H; ++j) {
          const float z = a[H + j];
          const float n = std::tanh(xr[2 * H + j] + (gb[2 * H + j] + bhn[j]));
          a[2 * H + j] = n;
          aux[r * H + j] = rhb[j];
          hb[j] = (1.0f - z) * n + z * hb[j];
        }
      } else {
        for (int j = 0; j < H; ++j) {
          const float v = xr[j] + gb[j];
          const float hn = cfg.relu ? (v <= 0.0f ? 0.0f : v) : std::tanh(v);
          a[j] = hn;
          hb[j] = hn;
        }
      }
    }
    if (gru && !lbr) {
      // Rows past their length computed r, z above; the step never happened.
      for (int b = 0; b < B; ++b) {
        if (!valid(t, b)) {
          std::memset(act + row(t, b) * G, 0, sizeof(float) * G);
        }
      }
    }
  }

}

} // namespace edgelstm::detail
