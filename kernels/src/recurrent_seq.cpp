// CPU implementation of the whole-sequence recurrent primitives.

#include "recurrent_seq.h"
#include "gates.h"
#include "layer_core.h"

#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

// Declared here rather than via <cblas.h> (not installed on every box); the
// symbols resolve to whichever BLAS is loaded first (OpenBLAS when edgelstm
// loaded it, else MLX's bundled reference BLAS, a dependency of libmlx).
extern "C" {
void cblas_sgemm(
    int order, int transa, int transb, int m, int n, int k, float alpha,
    const float* a, int lda, const float* b, int ldb, float beta, float* c,
    int ldc);
void cblas_sgemv(
    int order, int trans, int m, int n, float alpha, const float* a, int lda,
    const float* x, int incx, float beta, float* y, int incy);
}

namespace edgelstm {

namespace {

using detail::row_major;

constexpr int kRowMajor = 101;
constexpr int kNoTrans = 111;
constexpr int kTrans = 112;

// Up to this many rows, fp32 matmuls run the kernel's own single-threaded
// gemm_nt_small: OpenBLAS sgemm is 2-4x slower at M = 2..7 (EPYC, H = 64-256,
// recurrent step) and about even from M = 8.
constexpr int kSmallRows = 7;

// out (M, N) with row stride ldc = a (M, K) @ w[:N]^T (+ beta * out), w
// row-major (N, K).
void matmul_nt(
    const float* a,
    const float* w,
    float* out,
    int M,
    int N,
    int K,
    int ldc,
    float beta = 0.0f) {
  if (M == 0 || N == 0) {
    return;
  }
  if (K == 0) {
    for (int m = 0; m < M; ++m) {
      float* row = out + size_t(m) * ldc;
      for (int n = 0; n < N; ++n) {
        row[n] *= beta;
      }
    }
    return;
  }
  if (M == 1 && beta == 0.0f) {
    gate_fns().gemv_nt(w, a, out, N, K);
  } else if (M <= kSmallRows && (beta == 0.0f || beta == 1.0f)) {
    gate_fns().gemm_nt_small(w, a, out, M, N, K, ldc, beta != 0.0f);
  } else if (M == 1) {
    cblas_sgemv(kRowMajor, kNoTrans, N, K, 1.0f, w, K, a, 1, beta, out, 1);
  } else {
    cblas_sgemm(
        kRowMajor, kNoTrans, kTrans, M, N, K, 1.0f, a, K, w, K, beta, out,
        ldc);
  }
}

// A row-major weight (N, K): float, or int8 rows q with scales s (W = q * s).
struct Weight {
  const float* f = nullptr;
  const int8_t* q = nullptr;
  const float* s = nullptr;

  // The weight from row n on (GRU's n-gate block).
  Weight from_row(size_t n, int K) const {
    return f ? Weight{f + n * K} : Weight{nullptr, q + n * K, s + n};
  }
};

// out (M, N) = a (M, K) @ w[:N]^T (+ out when beta is 1). int8 weights reach
// here only for small M (see load_weight): one int8 matvec per row.
void matmul_w(
    const float* a,
    const Weight& w,
    float* out,
    int M,
    int N,
    int K,
    int ldc,
    float beta = 0.0f) {
  if (w.f) {
    matmul_nt(a, w.f, out, M, N, K, ldc, beta);
    return;
  }
  for (int m = 0; m < M && N > 0; ++m) {
    gate_fns().gemv_nt_q8(
        reinterpret_cast<const signed char*>(w.q), w.s, a + size_t(m) * K,
        out + size_t(m) * ldc, N, K, beta != 0.0f);
  }
}

// Up to this many rows per matmul, int8 weights stay int8 (one int8 matvec
// per row); past it they are expanded once and go to sgemm. Measured on AVX2
// (EPYC): int8 rows win ~2x at B=2..4 (OpenBLAS sgemm is slow at tiny M) and
// lose from B=8 and for 20+ projection rows.
constexpr size_t kInt8MaxRows = 4;

// `a` (N, K) as a Weight. An int8 `a` (scales `s`) is expanded to float in
// `expanded` when `expand` (many rows per matmul: one sgemm beats int8 dots);
// q * s rounds exactly as the Python-side expansion does.
Weight load_weight(
    const mx::array& a,
    const mx::array* s,
    bool expand,
    std::vector<float>& fbuf,
    std::vector<int8_t>& qbuf,
    std::vector<float>& sbuf,
    std::vector<float>& expanded) {
  if (!s) {
    return Weight{row_major(a, fbuf)};
  }
  const int8_t* q = row_major(a, qbuf);
  const float* sc = row_major(*s, sbuf);
  if (!expand) {
    return Weight{nullptr, q, sc};
  }
  const size_t N = a.shape(0), K = a.shape(1);
  if (expanded.size() < N * K) {
    expanded.resize(N * K);
  }
  gate_fns().expand_q8(
      reinterpret_cast<const signed char*>(q), sc, expanded.data(), int(N),
      int(K));
  return Weight{expanded.data()};
}

} // namespace

namespace detail {

void run_layer(const SeqConfig& cfg, int T, int B, const LayerIO& io) {
  const int gates = cfg.cell == Cell::LSTM ? 4 : (cfg.cell == Cell::GRU ? 3 : 1);
  const int H = io.wh->shape(1);
  const int G = gates * H;
  const GateFns& fns = gate_fns();

  std::vector<float> wh_buf, bhn_buf, wx_buf, b_buf, whs_buf, wxs_buf;
  std::vector<int8_t> whq_buf, wxq_buf;
  const float* xp = io.x;
  // Expansions reuse per-thread buffers: a fresh 100+ KB allocation per call
  // costs page faults on the order of the matmul itself.
  thread_local std::vector<float> wh_expanded, wx_expanded;
  const Weight wh = load_weight(
      *io.wh, io.wh_scales, size_t(B) > kInt8MaxRows, wh_buf, whq_buf,
      whs_buf, wh_expanded);
  const float* bhn = io.bhn ? row_major(*io.bhn, bhn_buf) : nullptr;
  const int32_t* len = io.len;

  // Input projection for all steps at once; rows keep x's (t, b) order.
  std::unique_ptr<float[]> proj;
  if (io.wx) {
    const size_t rows = size_t(T) * B;
    const Weight wx = load_weight(
        *io.wx, io.wx_scales, rows > kInt8MaxRows, wx_buf, wxq_buf, wxs_buf,
        wx_expanded);
    const float* bias = io.bias ? row_major(*io.bias, b_buf) : nullptr;
    proj.reset(new float[rows * G]);
    for (size_t r = 0; bias && r < rows; ++r) {
      std::memcpy(proj.get() + r * G, bias, sizeof(float) * G);
    }
    matmul_w(xp, wx, proj.get(), int(rows), G, io.I, G, bias ? 1.0f : 0.0f);
    xp = proj.get();
  }

  float* y = io.y;
  float* h = io.h;
  float* c = cfg.cell == Cell::LSTM ? io.c : nullptr;
  size_t state = size_t(B) * H;
  if (io.h0) {
    std::memmove(h, io.h0, state * sizeof(float));
  } else {
    std::memset(h, 0, state * sizeof(float));
  }
  if (c) {
    if (io.c0) {
      std::memmove(c, io.c0, state * sizeof(float));
    } else {
      std::memset(c, 0, state * sizeof(float));
    }
  }
  std::vector<float> zero_bhn;
  if (cfg.cell == Cell::GRU && !bhn) {
    zero_bhn.assign(H, 0.0f);
    bhn = zero_bhn.data();
  }

  std::vector<float> g(size_t(B) * G);
  std::vector<float> z_buf, rh_buf;
  if (cfg.cell == Cell::GRU && !cfg.linear_before_reset) {
    z_buf.resize(state);
    rh_buf.resize(state);
  }

  // Element offsets of row (t, b) in xp and y for either layout.
  auto xrow = [&](int t, int b) {
    return cfg.batch_first ? (size_t(b) * T + t) * G : (size_t(t) * B + b) * G;
  };
  auto yrow = [&](int t, int b) {
    return cfg.batch_first ? (size_t(b) * T + t) * H : (size_t(t) * B + b) * H;
  };
  auto valid = [&](int t, int b) { return !len || t < len[b]; };

  for (int s = 0; s < T; ++s) {
    const int t = cfg.reverse ? T - 1 - s : s;
    switch (cfg.cell) {
      case Cell::LSTM:
        matmul_w(h, wh, g.data(), B, G, H, G);
        for (int b = 0; b < B; ++b) {
          float* yb = y + yrow(t, b);
          if (!valid(t, b)) {
            std::memset(yb, 0, sizeof(float) * H);
            continue;
          }
          fns.lstm_row(
              g.data() + size_t(b) * G, xp + xrow(t, b), h + size_t(b) * H,
              c + size_t(b) * H, yb, H);
        }
        break;
      case Cell::GRU:
        if (cfg.linear_before_reset) {
          matmul_w(h, wh, g.data(), B, G, H, G);
          for (int b = 0; b < B; ++b) {
            float* yb = y + yrow(t, b);
            if (!valid(t, b)) {
              std::memset(yb, 0, sizeof(float) * H);
              continue;
            }
            fns.gru_lbr_row(
                g.data() + size_t(b) * G, xp + xrow(t, b), bhn,
                h + size_t(b) * H, yb, H);
          }
        } else {
          matmul_w(h, wh, g.data(), B, 2 * H, H, G);
          for (int b = 0; b < B; ++b) {
            fns.gru_rz_row(
                g.data() + size_t(b) * G, xp + xrow(t, b), h + size_t(b) * H,
                z_buf.data() + size_t(b) * H, rh_buf.data() + size_t(b) * H,
                H);
          }
          matmul_w(
              rh_buf.data(), wh.from_row(size_t(2) * H, H), g.data() + 2 * H,
              B, H, H, G);
          for (int b = 0; b < B; ++b) {
            float* yb = y + yrow(t, b);
            if (!valid(t, b)) {
              std::memset(yb, 0, sizeof(float) * H);
              continue;
            }
            fns.gru_n_row(
                g.data() + size_t(b) * G + 2 * H, xp + xrow(t, b) + 2 * H, bhn,
                z_buf.data() + size_t(b) * H, h + size_t(b) * H, yb, H);
          }
        }
        break;
      case Cell::RNN:
        matmul_w(h, wh, g.data(), B, G, H, G);
        for (int b = 0; b < B; ++b) {
          float* yb = y + yrow(t, b);
          if (!valid(t, b)) {
            std::memset(yb, 0, sizeof(float) * H);
            continue;
          }
          fns.rnn_row(
              g.data() + size_t(b) * G, xp + xrow(t, b), h + size_t(b) * H, yb,
              H, cfg.relu);
        }
        break;
    }
  }
}

void fail(const std::string& msg) {
  throw std::invalid_argument("[edgelstm_kernels] " + msg);
}

std::string shape_str(const mx::array& a) {
  std::ostringstream os;
  os << "(";
  for (int d = 0; d < a.ndim(); ++d) {
    os << (d ? ", " : "") << a.shape(d);
  }
  os << (a.ndim() == 1 ? ",)" : ")");
  return os.str();
}


void check_weights(
    int gates,
    int H,
    int in_width,
    const mx::array& Wh,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales,
    const std::string& what) {
  // Messages are built only on failure (EDGELSTM_CHECK): calls stay cheap.
  auto G = [&] { return std::to_string(gates * H); };
  EDGELSTM_CHECK(Wx || !bias, what + "bias is only used together with Wx");
  EDGELSTM_CHECK(
      Wh.ndim() == 2 && Wh.shape(0) == gates * H && Wh.shape(1) == H,
      what + "Wh must be (" + std::to_string(gates) + "H, H) = (" + G() + ", " +
          std::to_string(H) + "), got " + shape_str(Wh));
  EDGELSTM_CHECK(
      Wh.dtype() == (Wh_scales ? mx::int8 : mx::float32),
      what +
          (Wh_scales ? "Wh must be int8 when Wh_scales is given"
                     : "Wh must be float32 (or int8 with Wh_scales)"));
  if (Wx) {
    EDGELSTM_CHECK(
        Wx->ndim() == 2 && Wx->shape(0) == gates * H &&
            Wx->shape(1) == in_width,
        what + "Wx must be (" + G() + ", " + std::to_string(in_width) +
            "), got " + shape_str(*Wx));
    EDGELSTM_CHECK(
        Wx->dtype() == (Wx_scales ? mx::int8 : mx::float32),
        what +
            (Wx_scales ? "Wx must be int8 when Wx_scales is given"
                       : "Wx must be float32 (or int8 with Wx_scales)"));
  }
  if (bias) {
    EDGELSTM_CHECK(
        bias->ndim() == 1 && bias->shape(0) == gates * H,
        what + "bias must be (" + G() + ",), got " + shape_str(*bias));
    EDGELSTM_CHECK(bias->dtype() == mx::float32, what + "bias must be float32");
  }
  EDGELSTM_CHECK(Wx || !Wx_scales, what + "Wx_scales is only used together with Wx");
  for (const auto* sc : {&Wh_scales, &Wx_scales}) {
    if (*sc) {
      const char* n = sc == &Wh_scales ? "Wh_scales" : "Wx_scales";
      EDGELSTM_CHECK(
          (*sc)->ndim() == 1 && (*sc)->shape(0) == gates * H,
          what + n + " must be (" + G() + ",), got " + shape_str(**sc));
      EDGELSTM_CHECK((*sc)->dtype() == mx::float32, what + n + " must be float32");
    }
  }
}

} // namespace detail

namespace {

using namespace detail;

void run_sequence(
    const SeqConfig& cfg,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  const auto& xp_a = in[0];
  const int T = cfg.batch_first ? xp_a.shape(1) : xp_a.shape(0);
  const int B = cfg.batch_first ? xp_a.shape(0) : xp_a.shape(1);
  std::vector<float> xp_buf, h0_buf, c0_buf;
  std::vector<int32_t> len_buf;
  LayerIO io;
  io.x = row_major(xp_a, xp_buf);
  io.I = xp_a.shape(2);
  io.wh = &in[1];
  // Scales come last in the inputs: Wh's, then Wx's.
  size_t n_in = in.size();
  io.wx_scales = cfg.wx_int8 ? &in[--n_in] : nullptr;
  io.wh_scales = cfg.wh_int8 ? &in[--n_in] : nullptr;
  size_t k = 2;
  io.h0 = cfg.has_h0 ? row_major(in[k++], h0_buf) : nullptr;
  io.c0 = cfg.has_c0 ? row_major(in[k++], c0_buf) : nullptr;
  io.bhn = cfg.has_bhn ? &in[k++] : nullptr;
  io.len = cfg.has_lengths ? row_major(in[k++], len_buf) : nullptr;
  if (cfg.project) {
    io.wx = &in[k++];
    io.bias = cfg.has_bias ? &in[k++] : nullptr;
  }
  io.y = out[0].data<float>();
  // The state lives in the h_n / c_n outputs for the whole run.
  io.h = out[1].data<float>();
  io.c = cfg.cell == Cell::LSTM ? out[2].data<float>() : nullptr;
  run_layer(cfg, T, B, io);
}

// Validates shapes/dtypes and builds the primitive's output arrays.
std::vector<mx::array> build(
    SeqConfig cfg,
    const mx::array& xp,
    const mx::array& Wh,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& c0,
    const std::optional<mx::array>& bhn,
    const std::optional<mx::array>& lengths,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales) {
  const int gates =
      cfg.cell == Cell::LSTM ? 4 : (cfg.cell == Cell::GRU ? 3 : 1);
  EDGELSTM_CHECK(xp.ndim() == 3, "xp must be 3-D, got " + shape_str(xp));
  EDGELSTM_CHECK(Wh.ndim() == 2, "Wh must be 2-D, got " + shape_str(Wh));
  const int H = Wh.shape(1);
  check_weights(gates, H, xp.shape(2), Wh, Wx, bias, Wh_scales, Wx_scales);
  if (!Wx) {
    EDGELSTM_CHECK(
        xp.shape(2) == gates * H,
        "xp last dimension must be " + std::to_string(gates * H) + ", got " +
            shape_str(xp));
  }
  EDGELSTM_CHECK(xp.dtype() == mx::float32, "xp must be float32");
  const int T = cfg.batch_first ? xp.shape(1) : xp.shape(0);
  const int B = cfg.batch_first ? xp.shape(0) : xp.shape(1);

  std::vector<mx::array> inputs = {xp, Wh};
  auto add_state = [&](const std::optional<mx::array>& s, const char* name) {
    if (!s) {
      return false;
    }
    EDGELSTM_CHECK(
        s->ndim() == 2 && s->shape(0) == B && s->shape(1) == H,
        std::string(name) + " must be (" + std::to_string(B) + ", " +
            std::to_string(H) + "), got " + shape_str(*s));
    EDGELSTM_CHECK(s->dtype() == mx::float32, std::string(name) + " must be float32");
    inputs.push_back(*s);
    return true;
  };
  cfg.has_h0 = add_state(h0, "h0");
  cfg.has_c0 = add_state(c0, "c0");
  if (bhn) {
    EDGELSTM_CHECK(
        bhn->ndim() == 1 && bhn->shape(0) == H,
        "bhn must be (" + std::to_string(H) + ",), got " + shape_str(*bhn));
    EDGELSTM_CHECK(bhn->dtype() == mx::float32, "bhn must be float32");
    inputs.push_back(*bhn);
    cfg.has_bhn = true;
  }
  if (lengths) {
    EDGELSTM_CHECK(
        lengths->ndim() == 1 && lengths->shape(0) == B,
        "lengths must be (" + std::to_string(B) + ",), got " +
            shape_str(*lengths));
    EDGELSTM_CHECK(lengths->dtype() == mx::int32, "lengths must be int32");
    inputs.push_back(*lengths);
    cfg.has_lengths = true;
  }
  if (Wx) {
    inputs.push_back(*Wx);
    cfg.project = true;
    if (bias) {
      inputs.push_back(*bias);
      cfg.has_bias = true;
    }
  }

  // Scales last, so the other inputs keep their positions.
  if (Wh_scales) {
    inputs.push_back(*Wh_scales);
    cfg.wh_int8 = true;
  }
  if (Wx_scales) {
    inputs.push_back(*Wx_scales);
    cfg.wx_int8 = true;
  }

  mx::Shape y_shape = cfg.batch_first ? mx::Shape{B, T, H} : mx::Shape{T, B, H};
  std::vector<mx::Shape> shapes = {y_shape, {B, H}};
  if (cfg.cell == Cell::LSTM) {
    shapes.push_back({B, H});
  }
  std::vector<mx::Dtype> dtypes(shapes.size(), mx::float32);
  auto stream = mx::to_stream(mx::StreamOrDevice{}, mx::Device::cpu);
  return mx::array::make_arrays(
      std::move(shapes),
      dtypes,
      std::make_shared<RecurrentSeq>(stream, cfg),
      inputs);
}

} // namespace

void RecurrentSeq::eval_cpu(
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs) {
  for (auto& o : outputs) {
    o.set_data(mx::allocator::malloc(o.nbytes()));
  }
  auto& encoder = mx::cpu::get_command_encoder(stream());
  std::vector<mx::array> in;
  std::vector<mx::array> out;
  for (const auto& a : inputs) {
    encoder.set_input_array(a);
    in.push_back(mx::array::unsafe_weak_copy(a));
  }
  for (auto& o : outputs) {
    encoder.set_output_array(o);
    out.push_back(mx::array::unsafe_weak_copy(o));
  }
  encoder.dispatch(
      [cfg = cfg_, in = std::move(in), out = std::move(out)]() mutable {
        run_sequence(cfg, in, out);
      });
}

void RecurrentSeq::eval_gpu(
    const std::vector<mx::array>&,
    std::vector<mx::array>&) {
  throw std::runtime_error(
      "[edgelstm_kernels] no GPU implementation; run on the CPU stream");
}

std::vector<mx::array> RecurrentSeq::vjp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&,
    const std::vector<mx::array>&) {
  throw std::runtime_error(
      "[edgelstm_kernels] the fused recurrent kernel has no gradient; "
      "call edgelstm.recurrent with fast=False when training");
}

std::vector<mx::array> RecurrentSeq::jvp(
    const std::vector<mx::array>&,
    const std::vector<mx::array>&,
    const std::vector<int>&) {
  throw std::runtime_error(
      "[edgelstm_kernels] the fused recurrent kernel has no jvp; "
      "call edgelstm.recurrent with fast=False");
}

bool RecurrentSeq::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const RecurrentSeq&>(other);
  return cfg_ == o.cfg_;
}

std::vector<mx::Shape> RecurrentSeq::output_shapes(
    const std::vector<mx::array>& inputs) {
  const auto& xp = inputs[0];
  int H = inputs[1].shape(1);
  int T = cfg_.batch_first ? xp.shape(1) : xp.shape(0);
  int B = cfg_.batch_first ? xp.shape(0) : xp.shape(1);
  std::vector<mx::Shape> shapes = {
      cfg_.batch_first ? mx::Shape{B, T, H} : mx::Shape{T, B, H}, {B, H}};
  if (cfg_.cell == Cell::LSTM) {
    shapes.push_back({B, H});
  }
  return shapes;
}

std::vector<mx::array> lstm_seq(
    const mx::array& xp,
    const mx::array& Wh,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& c0,
    const std::optional<mx::array>& lengths,
    bool reverse,
    bool batch_first,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales) {
  SeqConfig cfg{Cell::LSTM};
  cfg.reverse = reverse;
  cfg.batch_first = batch_first;
  return build(
      cfg, xp, Wh, h0, c0, std::nullopt, lengths, Wx, bias, Wh_scales,
      Wx_scales);
}

std::vector<mx::array> gru_seq(
    const mx::array& xp,
    const mx::array& Wh,
    const std::optional<mx::array>& bhn,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& lengths,
    bool reverse,
    bool linear_before_reset,
    bool batch_first,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales) {
  SeqConfig cfg{Cell::GRU};
  cfg.reverse = reverse;
  cfg.batch_first = batch_first;
  cfg.linear_before_reset = linear_before_reset;
  return build(
      cfg, xp, Wh, h0, std::nullopt, bhn, lengths, Wx, bias, Wh_scales,
      Wx_scales);
}

std::vector<mx::array> rnn_seq(
    const mx::array& xp,
    const mx::array& Wh,
    const std::optional<mx::array>& h0,
    const std::optional<mx::array>& lengths,
    bool reverse,
    bool relu,
    bool batch_first,
    const std::optional<mx::array>& Wx,
    const std::optional<mx::array>& bias,
    const std::optional<mx::array>& Wh_scales,
    const std::optional<mx::array>& Wx_scales) {
  SeqConfig cfg{Cell::RNN};
  cfg.reverse = reverse;
  cfg.batch_first = batch_first;
  cfg.relu = relu;
  return build(
      cfg,
      xp,
      Wh,
      h0,
      std::nullopt,
      std::nullopt,
      lengths,
      Wx,
      bias,
      Wh_scales,
      Wx_scales);
}

} // namespace edgelstm
