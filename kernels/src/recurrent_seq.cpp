// CPU implementation of the whole-sequence recurrent primitives.

#include "recurrent_seq.h"
#include "blas.h"
#include "gates.h"
#include "fused_lstm.h"
#include "layer_core.h"
#include "lstm_q8.h"
#include "step_pool.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"

namespace edgelstm {

namespace detail {

// Up to this many rows, fp32 matmuls run the kernel's own single-threaded
// gemm_nt_small: OpenBLAS sgemm is 2-4x slower at M = 2..7 (EPYC, H = 64-256,
// recurrent step) and about even from M = 8.
constexpr int kSmallRows = 7;

// The input projection runs gemm_packed on a cached packing of Wx whenever
// the packing can be cached (Wx's buffer has an owner), for every shape: a
// row then rounds the same whatever T and B are (a streamed chunk equals
// the full pass; sgemm splits K differently with the row count for I >
// ~384), and the rows split across the step pool's threads bit-identically.
// One sgemm (OpenBLAS threads) used to take batches over 16 beyond 512
// rows; OpenBLAS's workers then spin for ~0.1 s after the call, on the
// cores the recurrence's threads need.

// Rows per unit of projection work (a unit's output, 64 x 4H floats, is
// still in cache when its bias is added).
constexpr size_t kProjChunkRows = 64;

// A projection takes a thread per this many step_min_macs() of work: one
// team wake-up per call, not per step, but the wake-up itself costs tens of
// microseconds.
constexpr long long kProjWorkFactor = 4;

// Up to this many rows the LSTM runs lstm_fused_step (see use_fused_lstm).
constexpr int kFusedMaxRows = 1 << 30;

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
    float beta) {
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
    EDGELSTM_CBLAS(sgemv)(
        kRowMajor, kNoTrans, N, K, 1.0f, w, K, a, 1, beta, out, 1);
  } else {
    EDGELSTM_CBLAS(sgemm)(
        kRowMajor, kNoTrans, kTrans, M, N, K, 1.0f, a, K, w, K, beta, out,
        ldc);
  }
}

namespace {
template <typename Vec>
void fit(Vec& buf, size_t n) {
  if (buf.capacity() > kKeepFloats && buf.capacity() > 4 * n) {
    Vec().swap(buf);
  }
  if (buf.size() < n) {
    buf.resize(n);
  }
}
} // namespace

void fit_buffer(std::vector<float>& buf, size_t n) {
  fit(buf, n);
}

void fit_buffer(PackedFloats& buf, size_t n) {
  fit(buf, n);
}

} // namespace detail

namespace {

using detail::fit_buffer;
using detail::matmul_nt;
using detail::row_major;

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
// per row: a quarter of the float weight's bytes); past it they are expanded
// to float and go to sgemm. The recurrent weight's expansion is cached
// (expanded_weight), so there int8 costs exactly what float costs. Measured
// on AVX-512 (Zen 5), GRU/RNN H=128-512: one int8 row per step is 1.05-1.7x
// faster than float, but 2-4 rows of int8 matvecs lose to one sgemm (0.6-0.9x
// of float), so only a single row stays int8.
constexpr size_t kInt8MaxRows = 1;

// A GRU/RNN's single row runs the packed float step on the cached expansion
// while the float Wh is at most this many bytes, and keeps the int8 matvec
// past it (one thread, Zen 5, T=100: GRU H=128 int8 matvec 0.30 ms against
// 0.25 packed float, RNN H=128 0.082 against 0.054; GRU H=512, 3 MiB of float
// against a 1 MiB L2, int8 1.29x; RNN H=512, 1 MiB: int8 matvec 0.90-0.94x of
// float, packed expansion 0.95x). LSTMs keep their own int8 step (lstm_q8.cpp).
constexpr size_t kInt8StepMaxFloatBytes = size_t(1) << 20;


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
  fit_buffer(expanded, N * K);
  gate_fns().expand_q8(
      reinterpret_cast<const signed char*>(q), sc, expanded.data(), int(N),
      int(K));
  return Weight{expanded.data()};
}

// Whether the packed recurrent steps (the fused LSTM step, the GRU/RNN
// packed step) are on: EDGELSTM_FUSED=0 turns them off (benchmarks compare).
bool packed_steps_on() {
  const char* v = std::getenv("EDGELSTM_FUSED"); // ~100 ns a call
  return !(v && std::strcmp(v, "0") == 0);
}

// Whether the LSTM runs lstm_fused_step (packed Wh, gates fused per block)
// rather than a (B, 4H) matmul per step then lstm_row.
bool use_fused_lstm(int B) {
  return packed_steps_on() && B >= 1 && B <= detail::kFusedMaxRows;
}

// A packed GRU/RNN step takes a thread per step_min_macs() / kPackedStepShare
// multiply-adds (see run_layer).
constexpr long kPackedStepShare = 2;

// Whether a GRU/RNN step's h @ Wh^T runs gemm_packed on Wh packed once
// (cached, as the LSTM's) rather than an sgemm call per step. A step's sgemm
// repacks Wh's panels every call: at H=512 B=8 (one thread, Zen 5) it ran
// at ~25 GMAC/s against ~80 for the packed LSTM step. EDGELSTM_FUSED=0
// keeps sgemm (comparisons). The GRU's two-matmul form needs its n block to
// start on a panel (2H a multiple of pack_width()).
bool use_packed_step(const SeqConfig& cfg, int H) {
  if (cfg.cell == Cell::LSTM || !packed_steps_on()) {
    return false;
  }
  return !(cfg.cell == Cell::GRU && !cfg.linear_before_reset &&
           (2 * H) % gate_fns().pack_width() != 0);
}

} // namespace

namespace detail {

void run_layer(const SeqConfig& cfg, int T, int B, const LayerIO& io) {
  const int gates = gate_count(cfg.cell);
  const int H = io.wh->shape(1);
  const int G = gates * H;
  const GateFns& fns = gate_fns();

  std::vector<float> wh_buf, bhn_buf, wx_buf, b_buf, whs_buf, wxs_buf;
  std::vector<int8_t> whq_buf, wxq_buf;
  const float* xp = io.x;
  // Expansions reuse per-thread buffers: a fresh 100+ KB allocation per call
  // costs page faults on the order of the matmul itself.
  thread_local std::vector<float> wh_expanded, wx_expanded;
  const bool fused = cfg.cell == Cell::LSTM && use_fused_lstm(B);
  // The fused path reads Wh only through its packing (cached: int8 weights
  // are expanded to float only when packed).
  Weight wh;
  std::shared_ptr<const detail::PackedFloats> wh_cached; // keeps wh.f alive
  // Wh as row-major float (int8 expanded): what a cached packing or expansion
  // is made from, called only on a cache miss.
  auto wh_values = [&] {
    return load_weight(
               *io.wh, io.wh_scales, true, wh_buf, whq_buf, whs_buf, wh_expanded)
        .f;
  };
  const bool expand_wh = size_t(B) > kInt8MaxRows;
  // GRU/RNN step on a packed Wh: float weights, and int8 ones expanded to
  // float once (cached) from two rows on, or at one row while the float
  // weight is small enough to stay in cache; a single row on a larger int8
  // weight keeps its int8 matvec, which reads a quarter of the bytes.
  std::shared_ptr<const detail::PackedFloats> wh_packed;
  const bool small_wh = size_t(G) * H * sizeof(float) <= kInt8StepMaxFloatBytes;
  if (!fused && use_packed_step(cfg, H) &&
      (!io.wh_scales || expand_wh || small_wh)) {
    wh_packed = packed_weight(
        *io.wh, io.wh_scales, wh_values, 1, io.wh_owner, io.wh_scales_owner);
  } else if (!fused && io.wh_scales && expand_wh && io.wh_owner && io.wh_scales_owner) {
    wh_cached = detail::expanded_weight(
        *io.wh, *io.wh_scales, wh_values, io.wh_owner, io.wh_scales_owner);
    wh = Weight{wh_cached->data()};
  } else if (!fused) {
    wh = load_weight(*io.wh, io.wh_scales, expand_wh, wh_buf, whq_buf, whs_buf,
                     wh_expanded);
  }
  const float* bhn = io.bhn ? row_major(*io.bhn, bhn_buf) : nullptr;
  const int32_t* len = io.len;

  // Input projection for all steps at once, into a per-thread buffer (a
  // fresh one costs a page fault per 4 KiB every call). The packed path
  // stores it time-major (a step reads B consecutive rows); the sgemm path
  // keeps x's order (lstm_step_blocked prefetches each step's rows).
  bool xp_time_major = !cfg.batch_first;
  if (io.wx) {
    const size_t rows = size_t(T) * B;
    const bool packed_proj = io.wx_owner != nullptr;
    const Weight wx = packed_proj
        ? Weight{}
        : load_weight(
              *io.wx, io.wx_scales, rows > kInt8MaxRows, wx_buf, wxq_buf,
              wxs_buf, wx_expanded);
    const float* bias = io.bias ? row_major(*io.bias, b_buf) : nullptr;
    thread_local std::vector<float> proj_buf;
    fit_buffer(proj_buf, rows * G);
    float* proj = proj_buf.data();
    for (size_t r = 0; bias && !packed_proj && r < rows; ++r) {
      std::memcpy(proj + r * G, bias, sizeof(float) * G);
    }
    const float beta = bias ? 1.0f : 0.0f;
    if (packed_proj) {
      // sgemm would copy Wx into its panels every call; the packing is
      // cached instead. (x Wx^T) + bias rounds as sgemm's beta = 1 does.
      const auto wxp = packed_weight(
          *io.wx, io.wx_scales,
          [&] {
            return load_weight(
                       *io.wx, io.wx_scales, true, wx_buf, wxq_buf, wxs_buf,
                       wx_expanded)
                .f;
          },
          1, io.wx_owner, io.wx_scales_owner);
      const float* wp = wxp->data();
      const int I = io.I;
      // Batch-first x is projected one sequence at a time into time-major
      // rows (a step reads B consecutive rows); else in chunks of rows.
      const bool transpose = cfg.batch_first && B > 1;
      xp_time_major = xp_time_major || transpose;
      const size_t units =
          transpose ? size_t(B) : (rows + kProjChunkRows - 1) / kProjChunkRows;
      auto project = [&](size_t u) {
        const size_t r0 = transpose ? 0 : u * kProjChunkRows;
        const size_t n = transpose ? size_t(T) : std::min(kProjChunkRows, rows - r0);
        const size_t ld = transpose ? size_t(B) * G : size_t(G);
        float* out = proj + (transpose ? u * G : r0 * G);
        const float* in = xp + (transpose ? u * T : r0) * size_t(I);
        gate_fns().gemm_packed(in, int(n), I, I, wp, G, out, int(ld));
        for (size_t r = 0; bias && r < n; ++r) {
          float* pr = out + r * ld;
          for (int k = 0; k < G; ++k) {
            pr[k] += bias[k];
          }
        }
      };
      const long long macs = (long long)rows * G * I;
      const long long per = kProjWorkFactor * step_min_macs();
      const int want = int(std::max<long long>(
          1, std::min<long long>({recurrent_threads(), macs / per,
                                  (long long)units})));
      // Each thread projects whole rows: the same bits for any count.
      run_team(want, [&](int tid, int n, StepBarrier&) {
        for (size_t u = units * tid / n; u < units * (tid + 1) / n; ++u) {
          project(u);
        }
      });
    } else {
      // One call: per-row-block calls each pay OpenBLAS's thread hand-off.
      matmul_w(xp, wx, proj, int(rows), G, io.I, G, beta);
    }
    xp = proj;
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
    return xp_time_major ? (size_t(t) * B + b) * G : (size_t(b) * T + t) * G;
  };
  auto yrow = [&](int t, int b) {
    return cfg.batch_first ? (size_t(b) * T + t) * H : (size_t(t) * B + b) * H;
  };
  auto valid = [&](int t, int b) { return !len || t < len[b]; };

  // Small batches on an int8 Wh stream int8 panels instead (lstm_q8.cpp).
  if (fused && run_lstm_q8(cfg, T, B, io, xp, xp_time_major)) {
    return;
  }
  if (fused) {
    const auto packed = packed_weight(
        *io.wh, io.wh_scales, wh_values, 4, io.wh_owner, io.wh_scales_owner);
    FusedLstmSeq seq;
    seq.packed = packed->data();
    seq.xp = xp;
    seq.xp_time_major = xp_time_major;
    seq.y = y;
    seq.batch_first = cfg.batch_first;
    seq.h = h;
    seq.c = c;
    seq.len = len;
    seq.reverse = cfg.reverse;
    seq.T = T;
    seq.B = B;
    seq.H = H;
    seq.act = io.save_act;
    seq.cp = io.save_cp;
    seq.tc = io.save_tc;
    seq.hprev = io.save_hprev;
    run_fused_lstm(seq);
    return;
  }

  // out (B, N) with row stride G = a (B, H) @ Wh[row0 : row0 + N]^T, thread
  // `tid` of `n` taking its share of the panels. Packed: row0 starts a panel
  // (0, or 2H where use_packed_step allows it); each element is one chain over
  // k, so its bits depend neither on the batch nor on the split.
  auto step_matmul = [&](int tid, int n, const float* a, int row0, int N, float* out) {
    if (wh_packed) {
      const int pw = fns.pack_width();
      const int nb = (N + pw - 1) / pw;
      const int p0 = int(long(nb) * tid / n), p1 = int(long(nb) * (tid + 1) / n);
      const int c0 = p0 * pw, c1 = std::min(p1 * pw, N);
      if (c1 > c0) {
        const size_t panel = size_t(row0 / pw + p0) * H * pw;
        fns.gemm_packed(a, B, H, H, wh_packed->data() + panel, c1 - c0, out + c0, G);
      }
    } else {
      matmul_w(a, wh.from_row(size_t(row0), H), out, B, N, H, G);
    }
  };

  // The steps, on `n` threads (packed GRU/RNN only; else n is 1): each matmul
  // is split by panels, then thread 0 runs the rows' gate math (B*H work
  // against the matmul's B*G*H) between two barriers.
  auto run_steps = [&](int tid, int n, StepBarrier* barrier) {
    auto sync = [&] {
      if (barrier) {
        barrier->wait();
      }
    };
    const bool lead = tid == 0;
    // Thread 0: row(b, y row) for each row valid at step t, zeros for the rest.
    auto valid_rows = [&](int t, auto&& row) {
      for (int b = 0; lead && b < B; ++b) {
        float* yb = y + yrow(t, b);
        if (!valid(t, b)) {
          std::memset(yb, 0, sizeof(float) * H);
          continue;
        }
        row(b, yb);
      }
    };
    for (int s = 0; s < T; ++s) {
      const int t = cfg.reverse ? T - 1 - s : s;
      switch (cfg.cell) {
        case Cell::LSTM:
          matmul_w(h, wh, g.data(), B, G, H, G);
          for (int b = 0; b < B; ++b) {
            float* yb = y + yrow(t, b);
            const size_t r = yrow(t, b);
            if (!valid(t, b)) {
              std::memset(yb, 0, sizeof(float) * H);
              if (io.save_act) { // finite zeros, as run_fused_lstm
                std::memset(io.save_act + 4 * r, 0, sizeof(float) * G);
                std::memset(io.save_cp + r, 0, sizeof(float) * H);
                std::memset(io.save_tc + r, 0, sizeof(float) * H);
                std::memset(io.save_hprev + r, 0, sizeof(float) * H);
              }
              continue;
            }
            float* hb = h + size_t(b) * H;
            if (io.save_act) {
              std::memcpy(io.save_hprev + r, hb, sizeof(float) * H);
              fns.lstm_row_save(
                  g.data() + size_t(b) * G, xp + xrow(t, b), hb,
                  c + size_t(b) * H, io.save_act + 4 * r, io.save_cp + r,
                  io.save_tc + r, H);
              std::memcpy(yb, hb, sizeof(float) * H);
            } else {
              fns.lstm_row(
                  g.data() + size_t(b) * G, xp + xrow(t, b), hb,
                  c + size_t(b) * H, yb, H);
            }
          }
          break;
        case Cell::GRU:
          if (cfg.linear_before_reset) {
            step_matmul(tid, n, h, 0, G, g.data());
            sync();
            valid_rows(t, [&](int b, float* yb) {
              fns.gru_lbr_row(
                  g.data() + size_t(b) * G, xp + xrow(t, b), bhn,
                  h + size_t(b) * H, yb, H);
            });
            sync();
          } else {
            step_matmul(tid, n, h, 0, 2 * H, g.data());
            sync();
            for (int b = 0; lead && b < B; ++b) {
              fns.gru_rz_row(
                  g.data() + size_t(b) * G, xp + xrow(t, b), h + size_t(b) * H,
                  z_buf.data() + size_t(b) * H, rh_buf.data() + size_t(b) * H,
                  H);
            }
            sync();
            step_matmul(tid, n, rh_buf.data(), 2 * H, H, g.data() + 2 * H);
            sync();
            valid_rows(t, [&](int b, float* yb) {
              fns.gru_n_row(
                  g.data() + size_t(b) * G + 2 * H, xp + xrow(t, b) + 2 * H, bhn,
                  z_buf.data() + size_t(b) * H, h + size_t(b) * H, yb, H);
            });
            sync();
          }
          break;
        case Cell::RNN:
          step_matmul(tid, n, h, 0, G, g.data());
          sync();
          valid_rows(t, [&](int b, float* yb) {
            fns.rnn_row(
                g.data() + size_t(b) * G, xp + xrow(t, b), h + size_t(b) * H, yb,
                H, cfg.relu);
          });
          sync();
          break;
      }
    }
  };

  // A thread per kPackedStepShare-th of step_min_macs() of the step's B*G*H:
  // the split step has two barriers (GRU's ONNX form four) and lighter work
  // per thread than the LSTM's, whose blocks carry the gate math too.
  int want = 1;
  if (wh_packed) {
    const long long macs = (long long)B * G * H;
    const long long per = std::max(1L, step_min_macs() / kPackedStepShare);
    want = int(std::max<long long>(
        1, std::min<long long>(recurrent_threads(), macs / per)));
  }
  if (want > 1) {
    note_step_threads(run_team(want, [&](int tid, int n, StepBarrier& barrier) {
      run_steps(tid, n, &barrier);
    }));
  } else {
    run_steps(0, 1, nullptr);
    if (wh_packed) {
      note_step_threads(1);
    }
  }
}

void fail(const std::string& msg) {
  throw std::invalid_argument("[edgelstm_kernels] " + msg);
}

void refuse(const std::string& msg) {
  throw std::runtime_error("[edgelstm_kernels] " + msg);
}

std::string shape_str(const mx::Shape& shape) {
  std::ostringstream os;
  os << "(";
  for (size_t d = 0; d < shape.size(); ++d) {
    os << (d ? ", " : "") << shape[d];
  }
  os << (shape.size() == 1 ? ",)" : ")");
  return os.str();
}

std::string shape_str(const mx::array& a) {
  return shape_str(a.shape());
}

void check_input(
    const mx::array& a,
    const std::string& name,
    const mx::Shape& shape,
    mx::Dtype dtype) {
  EDGELSTM_CHECK(
      a.shape() == shape,
      name + " must be " + shape_str(shape) + ", got " + shape_str(a));
  EDGELSTM_CHECK(
      a.dtype() == dtype,
      name + " must be " + (dtype == mx::int32 ? "int32" : "float32"));
}

bool add_input(
    std::vector<mx::array>& inputs,
    const std::optional<mx::array>& a,
    const std::string& name,
    const mx::Shape& shape,
    mx::Dtype dtype) {
  if (a) {
    check_input(*a, name, shape, dtype);
    inputs.push_back(*a);
  }
  return a.has_value();
}

std::vector<mx::Shape> fused_output_shapes(
    Cell cell,
    bool batch_first,
    const mx::array& x,
    int H,
    std::optional<int> layers) {
  const int T = batch_first ? x.shape(1) : x.shape(0);
  const int B = batch_first ? x.shape(0) : x.shape(1);
  mx::Shape state = layers ? mx::Shape{*layers, B, H} : mx::Shape{B, H};
  std::vector<mx::Shape> shapes = {
      batch_first ? mx::Shape{B, T, H} : mx::Shape{T, B, H}, state};
  if (cell == Cell::LSTM) {
    shapes.push_back(state);
  }
  return shapes;
}

namespace {
using Owners = std::vector<std::shared_ptr<mx::allocator::Data>>;
thread_local const Owners* tl_owners = nullptr;

// task(in, out) with task_owner(i) answering from `owners`; the previous
// owners (none, outside a task) come back however the task ends.
void run_owning(
    const Owners& owners,
    const CpuTask& task,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& out) {
  struct Restore {
    const Owners* saved = tl_owners;
    ~Restore() {
      tl_owners = saved;
    }
  } restore;
  tl_owners = &owners;
  task(in, out);
}
} // namespace

void dispatch_cpu(
    mx::Stream stream,
    const std::vector<mx::array>& inputs,
    std::vector<mx::array>& outputs,
    CpuTask task) {
  for (auto& o : outputs) {
    o.set_data(mx::allocator::malloc(o.nbytes()));
  }
  auto& encoder = mx::cpu::get_command_encoder(stream);
  std::vector<mx::array> in;
  std::vector<mx::array> out;
  Owners owners;
  for (const auto& a : inputs) {
    encoder.set_input_array(a);
    in.push_back(mx::array::unsafe_weak_copy(a));
    owners.push_back(a.data_shared_ptr());
  }
  for (auto& o : outputs) {
    encoder.set_output_array(o);
    out.push_back(mx::array::unsafe_weak_copy(o));
  }
  encoder.dispatch([task = std::move(task), in = std::move(in),
                    out = std::move(out), owners = std::move(owners)]() mutable {
    run_owning(owners, task, in, out);
  });
}

std::vector<mx::Shape> save_output_shapes(const mx::Shape& y_shape) {
  mx::Shape act = y_shape;
  act.back() *= 4;
  return {act, y_shape, y_shape, y_shape};
}

bool legacy_backward() {
  const char* v = std::getenv("EDGELSTM_GRAD_LEGACY"); // ~100 ns a call
  return v && std::strcmp(v, "1") == 0;
}

bool wants_save(
    Cell cell,
    bool train,
    bool int8,
    const std::vector<mx::array>& inputs) {
  if (!train || cell != Cell::LSTM || int8) {
    return false;
  }
  if (legacy_backward()) {
    return false;
  }
  for (const auto& a : inputs) {
    if (a.is_tracer()) {
      return true;
    }
  }
  return false;
}

bool can_run_now(const std::vector<mx::array>& inputs) {
  for (const auto& a : inputs) {
    if (a.is_tracer() || !a.is_available()) {
      return false;
    }
  }
  return true;
}

std::vector<mx::array> run_on_caller(
    const std::vector<mx::array>& inputs,
    const std::vector<mx::Shape>& shapes,
    const CpuTask& task) {
  std::vector<mx::array> out;
  out.reserve(shapes.size());
  for (const auto& shape : shapes) {
    size_t n = sizeof(float);
    for (auto d : shape) {
      n *= size_t(d);
    }
    out.emplace_back(mx::allocator::malloc(n), shape, mx::float32);
  }
  Owners owners;
  owners.reserve(inputs.size());
  for (const auto& a : inputs) {
    owners.push_back(a.data_shared_ptr());
  }
  run_owning(owners, task, inputs, out);
  return out;
}

std::shared_ptr<mx::allocator::Data> task_owner(size_t i) {
  if (!tl_owners || i >= tl_owners->size()) {
    return nullptr;
  }
  return (*tl_owners)[i];
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
    check_input(*bias, what + "bias", {gates * H}, mx::float32);
  }
  EDGELSTM_CHECK(Wx || !Wx_scales, what + "Wx_scales is only used together with Wx");
  if (Wh_scales) {
    check_input(*Wh_scales, what + "Wh_scales", {gates * H}, mx::float32);
  }
  if (Wx_scales) {
    check_input(*Wx_scales, what + "Wx_scales", {gates * H}, mx::float32);
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
  io.wh_owner = task_owner(1);
  // Scales come last in the inputs: Wh's, then Wx's.
  size_t n_in = in.size();
  io.wx_scales = cfg.wx_int8 ? &in[--n_in] : nullptr;
  if (cfg.wx_int8) {
    io.wx_scales_owner = task_owner(n_in);
  }
  io.wh_scales = cfg.wh_int8 ? &in[--n_in] : nullptr;
  if (cfg.wh_int8) {
    io.wh_scales_owner = task_owner(n_in);
  }
  size_t k = 2;
  io.h0 = cfg.has_h0 ? row_major(in[k++], h0_buf) : nullptr;
  io.c0 = cfg.has_c0 ? row_major(in[k++], c0_buf) : nullptr;
  io.bhn = cfg.has_bhn ? &in[k++] : nullptr;
  io.len = cfg.has_lengths ? row_major(in[k++], len_buf) : nullptr;
  if (cfg.project) {
    io.wx_owner = task_owner(k);
    io.wx = &in[k++];
    io.bias = cfg.has_bias ? &in[k++] : nullptr;
  }
  io.y = out[0].data<float>();
  // The state lives in the h_n / c_n outputs for the whole run.
  io.h = out[1].data<float>();
  io.c = cfg.cell == Cell::LSTM ? out[2].data<float>() : nullptr;
  if (cfg.save) {
    io.save_act = out[3].data<float>();
    io.save_cp = out[4].data<float>();
    io.save_tc = out[5].data<float>();
    io.save_hprev = out[6].data<float>();
  }
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
    const std::optional<mx::array>& Wx_scales,
    bool eager,
    bool train) {
  const int gates = gate_count(cfg.cell);
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
  const int B = cfg.batch_first ? xp.shape(0) : xp.shape(1);

  std::vector<mx::array> inputs = {xp, Wh};
  cfg.has_h0 = add_input(inputs, h0, "h0", {B, H}, mx::float32);
  cfg.has_c0 = add_input(inputs, c0, "c0", {B, H}, mx::float32);
  cfg.has_bhn = add_input(inputs, bhn, "bhn", {H}, mx::float32);
  cfg.has_lengths = add_input(inputs, lengths, "lengths", {B}, mx::int32);
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

  cfg.save = wants_save(cfg.cell, train, cfg.wh_int8 || cfg.wx_int8, inputs);
  auto outs = make_outputs<RecurrentSeq>(cfg, inputs, eager);
  // Saved outputs: the vjp's only.
  outs.erase(outs.begin() + (cfg.cell == Cell::LSTM ? 3 : 2), outs.end());
  return outs;
}

} // namespace

RecurrentSeq::RecurrentSeq(mx::Stream stream, SeqConfig cfg)
    : FusedPrimitive(
          stream, cfg, &run_sequence, "kernel", "edgelstm.recurrent") {}

std::vector<mx::Shape> RecurrentSeq::output_shapes(
    const std::vector<mx::array>& inputs) {
  auto shapes = fused_output_shapes(
      cfg_.cell, cfg_.batch_first, inputs[0], inputs[1].shape(1));
  if (cfg_.save) {
    for (auto& s : save_output_shapes(shapes[0])) {
      shapes.push_back(std::move(s));
    }
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
    const std::optional<mx::array>& Wx_scales,
    bool eager,
    bool train) {
  return build(
      {.cell = Cell::LSTM, .reverse = reverse, .batch_first = batch_first},
      xp, Wh, h0, c0, std::nullopt, lengths, Wx, bias, Wh_scales, Wx_scales,
      eager, train);
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
    const std::optional<mx::array>& Wx_scales,
    bool eager,
    bool train) {
  return build(
      {.cell = Cell::GRU,
       .reverse = reverse,
       .batch_first = batch_first,
       .linear_before_reset = linear_before_reset},
      xp, Wh, h0, std::nullopt, bhn, lengths, Wx, bias, Wh_scales, Wx_scales,
      eager, train);
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
    const std::optional<mx::array>& Wx_scales,
    bool eager,
    bool train) {
  return build(
      {.cell = Cell::RNN,
       .reverse = reverse,
       .batch_first = batch_first,
       .relu = relu},
      xp, Wh, h0, std::nullopt, std::nullopt, lengths, Wx, bias, Wh_scales,
      Wx_scales,
      eager, train);
}

} // namespace edgelstm
