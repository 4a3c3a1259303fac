// Backward pass (BPTT) of the fused recurrent primitives.
//
// RecurrentSeq::vjp returns the outputs of one RecurrentSeqGrad primitive.
// An LSTM forward built for training (SeqConfig::save: the model trains and
// autodiff traces the call) saved the gate activations and the states each
// step read as extra outputs; the gradient reads them. Otherwise (GRU, RNN,
// an LSTM called without train) it recomputes the forward pass, saving the
// same things. Either way it then runs the recurrence backwards, one small
// matmul per step for the state gradient; the weight, input and bias
// gradients are one large matmul each at the end (the weights' on the
// kernels' own gemm_tn_chain, threaded, sgemm under EDGELSTM_GRAD_LEGACY=1:
// see gemm_tn and legacy_backward). Inference pays nothing for
// trainability: only a training forward saves. RecurrentStack::vjp composes
// one RecurrentSeqGrad per layer, reading each layer's input from the
// stack's extra outputs (the lower layers' y) and its saved activations.
//
// LSTM gate math is the forward kernel's own (the fused step's gate loop,
// lstm_row_save and lstm_row_grad in gates.inc / gates_packed.inc, same
// arithmetic): on the same projected input, saved and recomputed activations
// are the same bits, and so are the gradients. The recompute projects the
// input with sgemm where the forward runs gemm_packed; from ~8 input
// features the two may round differently in the last bit, so recomputed
// gradients can differ from the saved ones (those of the forward that gave
// the loss) by float32 rounding. GRU and RNN use std::exp / tanh in place of
// the vectorised approximations (~1e-7 relative apart).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <vector>

#include "blas.h"
#include "gates.h"
#include "layer_core.h"
#include "recurrent_recompute.h"
#include "recurrent_seq.h"
#include "step_pool.h"

namespace edgelstm {

using namespace detail;

namespace {

// Backward runs that read a training forward's saved activations, and that
// recomputed the forward (grad_counts).
std::atomic<long long> g_saved_runs{0}, g_recomputed_runs{0};

// c (M, N) = op(a) @ b, all row-major with leading dimensions: op(a) is a
// (M, K) when !trans_a, a^T for a (K, M) when trans_a; b is (K, N).
void gemm(
    bool trans_a, const float* a, int lda, const float* b, int ldb, float* c,
    int ldc, int M, int N, int K) {
  if (M == 0 || N == 0) {
    return;
  }
  if (K == 0) {
    for (int m = 0; m < M; ++m) {
      std::memset(c + size_t(m) * ldc, 0, sizeof(float) * N);
    }
    return;
  }
  EDGELSTM_CBLAS(sgemm)(
      kRowMajor, trans_a ? kTrans : kNoTrans, kNoTrans, M, N, K, 1.0f, a, lda,
      b, ldb, 0.0f, c, ldc);
}

void gemm_nn(
    const float* a, int lda, const float* b, int ldb, float* c, int ldc,
    int M, int N, int K) {
  gemm(false, a, lda, b, ldb, c, ldc, M, N, K);
}

// c (M, N) = a^T @ b for a (K, M) and b (K, N), row-major: the weight
// gradients (K = T*B rows). By default gemm_tn_chain (each element one chain
// over k: the same bits for any blocking and thread count, on the kernels'
// own AVX-512 / AVX2 loops), with the operand of more columns on its vector
// side (c^T = b^T a has the same bits); legacy: sgemm, as the backward
// computed them before (see legacy_backward).
// Weight-gradient matmuls take a step-pool thread per this many
// step_min_macs() of work (one team wake-up per matmul).
constexpr long long kWeightGradWork = 4;

void gemm_tn(
    const float* a, int lda, const float* b, int ldb, float* c, int ldc,
    int M, int N, int K, bool legacy) {
  if (legacy) {
    gemm(true, a, lda, b, ldb, c, ldc, M, N, K);
    return;
  }
  const GateFns& fns = gate_fns();
  const int vw = fns.pack_width();
  const bool direct = (N % vw == 0 || N >= M) && ldc == N;
  thread_local std::vector<float> ct;
  if (!direct) { // c^T (N, M) into scratch, then transposed into c
    std::swap(a, b);
    std::swap(lda, ldb);
    std::swap(M, N);
    fit_buffer(ct, size_t(M) * N);
  }
  float* out = direct ? c : ct.data();
  // The step pool's threads take contiguous rows of c (an element's chain
  // runs on one thread: the same bits for any count), one per
  // kWeightGradWork step_min_macs() of work.
  const long long macs = (long long)M * N * K;
  const int want = int(std::max<long long>(1, std::min<long long>(
      {recurrent_threads(), macs / (kWeightGradWork * step_min_macs()),
       (long long)M / 8})));
  run_team(want, [&](int tid, int n, StepBarrier&) {
    const int m0 = int(long(M) * tid / n), m1 = int(long(M) * (tid + 1) / n);
    fns.gemm_tn_chain(a + m0, lda, b, ldb, out + size_t(m0) * N, m1 - m0, N, K);
  });
  if (!direct) {
    for (int m = 0; m < N; ++m) { // c is (N, M) here
      for (int n = 0; n < M; ++n) {
        c[size_t(m) * ldc + n] = ct[size_t(n) * N + m];
      }
    }
  }
}

// out (n) = column sums of a (rows, n) with row stride lda.
void colsum(const float* a, size_t rows, int lda, int n, float* out) {
  std::memset(out, 0, sizeof(float) * n);
  for (size_t r = 0; r < rows; ++r) {
    const float* ar = a + r * lda;
    for (int j = 0; j < n; ++j) {
      out[j] += ar[j];
    }
  }
}

void run_grad(
    const SeqConfig& cfg,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  const auto& x_a = in[0];
  const int T = cfg.batch_first ? x_a.shape(1) : x_a.shape(0);
  const int B = cfg.batch_first ? x_a.shape(0) : x_a.shape(1);
  const int I = x_a.shape(2);
  const int H = in[1].shape(1);
  const int G = gate_count(cfg.cell) * H;
  const size_t rows = size_t(T) * B;
  const bool lstm = cfg.cell == Cell::LSTM;
  const bool gru = cfg.cell == Cell::GRU;
  const bool lbr = cfg.linear_before_reset;

  std::vector<float> x_buf, wh_buf, h0_buf, c0_buf, bhn_buf, wx_buf, b_buf;
  std::vector<float> dy_buf, dhn_buf, dcn_buf;
  std::vector<int32_t> len_buf;
  const float* x = row_major(x_a, x_buf);
  const float* wh = row_major(in[1], wh_buf);
  size_t k = 2;
  const float* h0 = cfg.has_h0 ? row_major(in[k++], h0_buf) : nullptr;
  const float* c0 = cfg.has_c0 ? row_major(in[k++], c0_buf) : nullptr;
  const float* bhn = cfg.has_bhn ? row_major(in[k++], bhn_buf) : nullptr;
  const int32_t* len = cfg.has_lengths ? row_major(in[k++], len_buf) : nullptr;
  const float* wx = cfg.project ? row_major(in[k++], wx_buf) : nullptr;
  const float* bias = cfg.has_bias ? row_major(in[k++], b_buf) : nullptr;
  const float* dy = row_major(in[k++], dy_buf);
  const float* dhn = row_major(in[k++], dhn_buf);
  const float* dcn = lstm ? row_major(in[k++], dcn_buf) : nullptr;
  // A training forward's saved act, cp, tc, hprev (LSTM): no recompute.
  const bool saved = cfg.save;
  std::vector<float> sv_buf[4];
  const float* sv[4] = {};
  for (int i = 0; saved && i < 4; ++i) {
    sv[i] = row_major(in[k++], sv_buf[i]);
  }
  std::vector<float> zero_bhn;
  if (gru && !bhn) {
    zero_bhn.assign(H, 0.0f);
    bhn = zero_bhn.data();
  }

  // Projected input, rows in x's order (only the recompute reads it).
  std::vector<float> proj;
  const float* xp = x;
  if (wx && !saved) {
    proj.resize(rows * G);
    for (size_t r = 0; bias && r < rows; ++r) {
      std::memcpy(proj.data() + r * G, bias, sizeof(float) * G);
    }
    matmul_nt(x, wx, proj.data(), int(rows), G, I, G, bias ? 1.0f : 0.0f);
    xp = proj.data();
  }

  const Rows row{cfg.batch_first, cfg.reverse, T, B, len};
  auto valid = [&](int t, int b) { return row.valid(t, b); };
  auto time_of = [&](int s) { return row.time_of(s); };

  // What recompute saves (see there), or a training forward saved (LSTM,
  // the same four in the same row order). Per-thread buffers, reused across
  // calls (fresh ones cost a page fault per 4 KiB every training step).
  const size_t state = size_t(B) * H;
  thread_local std::vector<float> hprev_buf, act_buf, aux_buf, aux2_buf;
  fit_buffer(hprev_buf, saved ? 0 : rows * H);
  fit_buffer(act_buf, saved ? 0 : rows * G);
  fit_buffer(aux_buf, !saved && (lstm || gru) ? rows * H : 0);
  fit_buffer(aux2_buf, !saved && lstm ? rows * H : 0);
  const float* hprev = saved ? sv[3] : hprev_buf.data();
  const float* act = saved ? sv[0] : act_buf.data();
  const float* aux = saved ? sv[2] : aux_buf.data();
  const float* aux2 = saved ? sv[1] : aux2_buf.data();
  const GateFns& fns = gate_fns();
  (saved ? g_saved_runs : g_recomputed_runs).fetch_add(1, std::memory_order_relaxed);
  if (!saved) {
    recompute(cfg, row, H, xp, wh, h0, c0, bhn, hprev_buf.data(),
              act_buf.data(), aux_buf.data(), aux2_buf.data());
  }

  // The backward's per-step matmul gs @ Wh, i.e. gs @ (Wh^T)^T, on Wh^T
  // packed once per call (gemm_packed): pack_gates(Wh^T, 1, H, G) lays out,
  // per block of pack_width() units j, row k of Wh^T's columns, i.e. Wh's
  // rows k sliced to the block, zero-padded: copied straight from Wh.
  const bool full_step = !(gru && !lbr); // one (B, G) matmul per step
  thread_local PackedFloats whp_bwd;
  if (full_step) {
    const int pw = fns.pack_width();
    const int nb = (H + pw - 1) / pw;
    fit_buffer(whp_bwd, size_t(fns.packed_floats(1, H, G)));
    for (int bk = 0; bk < nb; ++bk) {
      const int j0 = bk * pw, n = std::min(pw, H - j0);
      float* p = whp_bwd.data() + size_t(bk) * G * pw;
      for (int k = 0; k < G; ++k) {
        std::memcpy(p + size_t(k) * pw, wh + size_t(k) * H + j0, sizeof(float) * n);
        std::fill(p + size_t(k) * pw + n, p + size_t(k + 1) * pw, 0.0f);
      }
    }
  }
  // Backward. dh / dc: gradient w.r.t. the state after the step being undone.
  std::vector<float> dh(dhn, dhn + state);
  std::vector<float> dc(lstm ? state : 0);
  if (lstm) {
    std::memcpy(dc.data(), dcn, sizeof(float) * state);
  }
  // dxp: gradient w.r.t. the projected input (= the gates' pre-activations
  // from the input side), rows in x's order. dghn (GRU-lbr): w.r.t. Rn h.
  thread_local std::vector<float> dxp_buf, dghn_buf;
  fit_buffer(dxp_buf, rows * G);
  fit_buffer(dghn_buf, gru && lbr ? rows * H : 0);
  float* dxp = dxp_buf.data();
  float* dghn = dghn_buf.data();
  std::vector<float> gs(size_t(B) * G), tmp(state);
  for (int s = T - 1; s >= 0; --s) {
    const int t = time_of(s);
    // LSTM writes the gate gradients straight into dxp's rows (they are the
    // same numbers) and the matmul below reads them there, rows lda apart;
    // rows past a length are zeroed there. Other cells use gs.
    if (!lstm) {
      std::fill(gs.begin(), gs.end(), 0.0f);
    }
    for (int b = 0; b < B; ++b) {
      const size_t r = row(t, b);
      if (!valid(t, b)) {
        std::memset(dxp + r * G, 0, sizeof(float) * G);
        if (gru && lbr) {
          std::memset(dghn + r * H, 0, sizeof(float) * H);
        }
        continue;
      }
      const float* a = act + r * G;
      const float* dyr = dy + r * H;
      const float* hp = hprev + r * H;
      float* dhb = dh.data() + size_t(b) * H;
      float* gsb = gs.data() + size_t(b) * G;
      float* dxr = dxp + r * G;
      if (lstm) {
        fns.lstm_row_grad(
            a, aux2 + r * H, aux + r * H, dhb, dyr, dc.data() + size_t(b) * H,
            dxr, H);
      } else if (gru) {
        for (int j = 0; j < H; ++j) {
          const float dhj = dhb[j] + dyr[j];
          const float rg = a[j], z = a[H + j], n = a[2 * H + j];
          const float dan = dhj * (1.0f - z) * (1.0f - n * n);
          const float daz = dhj * (hp[j] - n) * z * (1.0f - z);
          dxr[H + j] = daz;
          dxr[2 * H + j] = dan;
          gsb[H + j] = daz;
          dhb[j] = dhj * z; // the direct path; matmul terms added below
          if (lbr) {
            const float dar = dan * aux[r * H + j] * rg * (1.0f - rg);
            dxr[j] = dar;
            gsb[j] = dar;
            gsb[2 * H + j] = dan * rg;
            dghn[r * H + j] = dan * rg;
          } else {
            gsb[2 * H + j] = dan;
          }
        }
      } else {
        for (int j = 0; j < H; ++j) {
          const float dhj = dhb[j] + dyr[j];
          const float hn = a[j];
          gsb[j] = cfg.relu ? (hn > 0.0f ? dhj : 0.0f) : dhj * (1.0f - hn * hn);
        }
        std::memcpy(dxr, gsb, sizeof(float) * G);
      }
    }
    if (gru && !lbr) {
      // d(r * h) = dan @ Rn; then the r gate and the r * h path into h.
      gemm_nn(gs.data() + 2 * H, G, wh + size_t(2) * H * H, H, tmp.data(), H, B, H, H);
      for (int b = 0; b < B; ++b) {
        if (!valid(t, b)) {
          continue;
        }
        const size_t r = row(t, b);
        const float* a = act + r * G;
        const float* hp = hprev + r * H;
        float* gsb = gs.data() + size_t(b) * G;
        float* dhb = dh.data() + size_t(b) * H;
        const float* drh = tmp.data() + size_t(b) * H;
        for (int j = 0; j < H; ++j) {
          const float rg = a[j];
          const float dar = drh[j] * hp[j] * rg * (1.0f - rg);
          gsb[j] = dar;
          dxp[r * G + j] = dar;
          dhb[j] += drh[j] * rg;
        }
      }
    }
    // Matmul path into the previous state: gs (B, G') @ Wh[:G'].
    if (full_step) {
      if (lstm) {
        const int lda = (cfg.batch_first ? T : 1) * G; // row(t, b + 1) - row(t, b)
        fns.gemm_packed(
            dxp + row(t, 0) * G, B, G, lda, whp_bwd.data(), H, tmp.data(), H);
      } else {
        fns.gemm_packed(gs.data(), B, G, G, whp_bwd.data(), H, tmp.data(), H);
      }
    } else {
      gemm_nn(gs.data(), G, wh, H, tmp.data(), H, B, H, 2 * H);
    }
    for (int b = 0; b < B; ++b) {
      if (!valid(t, b)) {
        continue;
      }
      float* dhb = dh.data() + size_t(b) * H;
      const float* tb = tmp.data() + size_t(b) * H;
      if (gru) {
        for (int j = 0; j < H; ++j) {
          dhb[j] += tb[j];
        }
      } else {
        std::memcpy(dhb, tb, sizeof(float) * H);
      }
    }
  }

  // Outputs, in input order: dx, dWh, [dh0], [dc0], [dbhn], [dWx, [dbias]].
  const bool legacy = cfg.legacy;
  size_t o = 0;
  float* dx = out[o++].data<float>();
  float* dwh = out[o++].data<float>();
  if (gru) {
    gemm_tn(dxp, G, hprev, H, dwh, H, 2 * H, H, int(rows), legacy);
    if (lbr) {
      gemm_tn(dghn, H, hprev, H, dwh + size_t(2) * H * H, H, H, H, int(rows),
              legacy);
    } else {
      gemm_tn(dxp + 2 * H, G, aux, H, dwh + size_t(2) * H * H, H, H, H,
              int(rows), legacy);
    }
  } else {
    gemm_tn(dxp, G, hprev, H, dwh, H, G, H, int(rows), legacy);
  }
  if (cfg.has_h0) {
    std::memcpy(out[o++].data<float>(), dh.data(), sizeof(float) * state);
  }
  if (cfg.has_c0) {
    std::memcpy(out[o++].data<float>(), dc.data(), sizeof(float) * state);
  }
  if (cfg.has_bhn) {
    float* db = out[o++].data<float>();
    if (lbr) {
      colsum(dghn, rows, H, H, db);
    } else {
      colsum(dxp + 2 * H, rows, G, H, db);
    }
  }
  if (wx) {
    if (!cfg.skip_dx) {
      gemm_nn(dxp, G, wx, I, dx, I, int(rows), I, G);
    }
    gemm_tn(dxp, G, x, I, out[o++].data<float>(), I, G, I, int(rows), legacy);
    if (cfg.has_bias) {
      colsum(dxp, rows, G, G, out[o++].data<float>());
    }
  } else {
    if (!cfg.skip_dx) {
      std::memcpy(dx, dxp, sizeof(float) * rows * G);
    }
  }
}

mx::Stream cpu_stream() {
  return mx::to_stream(mx::StreamOrDevice{}, mx::Device::cpu);
}

} // namespace

std::pair<long long, long long> grad_counts() {
  return {g_saved_runs.load(), g_recomputed_runs.load()};
}

namespace detail {

int seq_lengths_index(const SeqConfig& cfg) {
  return cfg.has_lengths ? 2 + cfg.has_h0 + cfg.has_c0 + cfg.has_bhn : -1;
}

int seq_float_inputs(const SeqConfig& cfg) {
  return 2 + cfg.has_h0 + cfg.has_c0 + cfg.has_bhn + cfg.has_lengths +
      cfg.project + cfg.has_bias;
}

std::vector<mx::array> seq_grads(
    SeqConfig cfg,
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<mx::array>& saved,
    bool need_dx) {
  if (cfg.wh_int8 || cfg.wx_int8) {
    refuse(
        "int8 weights have no gradient; train the float model and quantize "
        "it afterwards");
  }
  const int nf = seq_float_inputs(cfg);
  const int li = seq_lengths_index(cfg);
  auto stream = cpu_stream();
  std::vector<mx::array> inputs(primals.begin(), primals.begin() + nf);
  // Those of y, h_n[, c_n]; a training forward's saved outputs get none.
  const size_t n_cot = cfg.cell == Cell::LSTM ? 3 : 2;
  for (size_t i = 0; i < n_cot; ++i) {
    inputs.push_back(mx::astype(cotangents[i], mx::float32, stream));
  }
  cfg.save = !saved.empty();
  inputs.insert(inputs.end(), saved.begin(), saved.end());
  cfg.skip_dx = !need_dx;
  cfg.legacy = legacy_backward();
  auto p = std::make_shared<RecurrentSeqGrad>(stream, cfg);
  auto shapes = p->output_shapes(inputs);
  std::vector<mx::Dtype> dtypes(shapes.size(), mx::float32);
  return mx::array::make_arrays(std::move(shapes), dtypes, p, inputs);
}

} // namespace detail

RecurrentSeqGrad::RecurrentSeqGrad(mx::Stream stream, SeqConfig cfg)
    : FusedPrimitive(
          stream, cfg, &run_grad, "kernel's gradient",
          "edgelstm.recurrent") {}

std::vector<mx::Shape> RecurrentSeqGrad::output_shapes(
    const std::vector<mx::array>& inputs) {
  std::vector<mx::Shape> shapes;
  const int li = seq_lengths_index(cfg_);
  for (int i = 0; i < seq_float_inputs(cfg_); ++i) {
    if (i != li) {
      shapes.push_back(inputs[i].shape());
    }
  }
  if (cfg_.skip_dx) {
    shapes[0] = {0};
  }
  return shapes;
}

std::vector<mx::array> RecurrentSeq::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>& outputs) {
  // A training forward's saved activations follow y, h_n, c_n.
  std::vector<mx::array> saved;
  if (cfg_.save && outputs.size() == 7) {
    saved.assign(outputs.begin() + 3, outputs.end());
  }
  // The input's gradient only when asked for (a model's input data is not):
  // its matmul costs as much as the input weights' one.
  const bool need_dx = std::find(argnums.begin(), argnums.end(), 0) != argnums.end();
  auto grads = seq_grads(cfg_, primals, cotangents, saved, need_dx);
  const int li = seq_lengths_index(cfg_);
  std::vector<mx::array> res;
  for (int a : argnums) {
    if (a == li) {
      res.push_back(mx::zeros_like(primals[a], stream()));
    } else {
      res.push_back(grads[li >= 0 && a > li ? a - 1 : a]);
    }
  }
  return res;
}

std::vector<mx::array> RecurrentStack::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>& outputs) {
  for (uint8_t f : cfg_.layers) {
    if (f & (kWxInt8 | kWhInt8)) {
      refuse(
          "int8 weights have no gradient; train the float model and "
          "quantize it afterwards");
    }
  }
  auto s = stream();
  const bool lstm = cfg_.cell == Cell::LSTM;
  const mx::array& x = primals[0];
  const int B = cfg_.batch_first ? x.shape(0) : x.shape(1);
  size_t k = 1;
  const int h0_i = cfg_.has_h0 ? int(k++) : -1;
  const int c0_i = cfg_.has_c0 ? int(k++) : -1;
  const int len_i = cfg_.has_lengths ? int(k++) : -1;
  const int L = int(cfg_.layers.size());
  const int H = primals[k + 1].shape(1);
  auto layer_state = [&](const mx::array& a, int l) {
    return mx::reshape(mx::slice(a, {l, 0, 0}, {l + 1, B, H}, s), {B, H}, s);
  };

  // Each layer's RecurrentSeq inputs; layer l > 0 reads layer l - 1's y,
  // which the forward left in its extra outputs (recomputed only where a
  // caller passes no outputs).
  const size_t n_main = lstm ? 3 : 2;
  const bool have_ys = outputs.size() >= n_main + size_t(L) - 1;
  std::vector<SeqConfig> cfgs(L);
  std::vector<std::vector<mx::array>> ins(L);
  std::vector<size_t> first(L);
  mx::array xl = x;
  for (int l = 0; l < L; ++l) {
    const uint8_t f = cfg_.layers[l];
    first[l] = k;
    SeqConfig c{cfg_.cell};
    c.batch_first = cfg_.batch_first;
    c.linear_before_reset = cfg_.linear_before_reset;
    c.relu = cfg_.relu;
    c.has_h0 = cfg_.has_h0;
    c.has_c0 = cfg_.has_c0;
    c.has_bhn = f & kBhn;
    c.has_lengths = cfg_.has_lengths;
    c.project = true;
    c.has_bias = f & kBias;
    const mx::array& wx = primals[k];
    const mx::array& wh = primals[k + 1];
    std::vector<mx::array> in = {xl, wh};
    if (c.has_h0) {
      in.push_back(layer_state(primals[h0_i], l));
    }
    if (c.has_c0) {
      in.push_back(layer_state(primals[c0_i], l));
    }
    if (c.has_bhn) {
      in.push_back(primals[k + 2 + c.has_bias]);
    }
    if (c.has_lengths) {
      in.push_back(primals[len_i]);
    }
    in.push_back(wx);
    if (c.has_bias) {
      in.push_back(primals[k + 2]);
    }
    k += 2 + c.has_bias + c.has_bhn;
    if (l + 1 < L) {
      xl = have_ys ? outputs[n_main + l] : make_outputs<RecurrentSeq>(c, in)[0];
    }
    cfgs[l] = c;
    ins[l] = std::move(in);
  }

  std::vector<std::optional<mx::array>> full(primals.size());
  std::vector<mx::array> dh0s, dc0s;
  mx::array dy = cotangents[0];
  for (int l = L - 1; l >= 0; --l) {
    const SeqConfig& c = cfgs[l];
    std::vector<mx::array> cots = {dy, layer_state(cotangents[1], l)};
    if (lstm) {
      cots.push_back(layer_state(cotangents[2], l));
    }
    std::vector<mx::array> saved;
    const size_t o_save = n_main + size_t(L) - 1 + 4 * size_t(l);
    if (cfg_.save && outputs.size() >= o_save + 4) {
      saved.assign(outputs.begin() + o_save, outputs.begin() + o_save + 4);
    }
    // Layer 0's input gradient only when asked for; the others feed the layer below.
    const bool need_dx = l > 0 ||
        std::find(argnums.begin(), argnums.end(), 0) != argnums.end();
    auto g = seq_grads(c, ins[l], cots, saved, need_dx);
    size_t o = 0;
    dy = g[o++];
    const size_t w = first[l];
    full[w + 1] = g[o++];
    if (c.has_h0) {
      dh0s.insert(dh0s.begin(), g[o++]);
    }
    if (c.has_c0) {
      dc0s.insert(dc0s.begin(), g[o++]);
    }
    if (c.has_bhn) {
      full[w + 2 + c.has_bias] = g[o++];
    }
    full[w] = g[o++];
    if (c.has_bias) {
      full[w + 2] = g[o++];
    }
  }
  full[0] = dy;
  if (h0_i >= 0) {
    full[h0_i] = mx::stack(dh0s, 0, s);
  }
  if (c0_i >= 0) {
    full[c0_i] = mx::stack(dc0s, 0, s);
  }
  if (len_i >= 0) {
    full[len_i] = mx::zeros_like(primals[len_i], s);
  }
  std::vector<mx::array> res;
  for (int a : argnums) {
    res.push_back(*full[a]);
  }
  return res;
}

} // namespace edgelstm
