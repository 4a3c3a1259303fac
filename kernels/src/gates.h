// Fused gate loops and recurrent kernels, picked once per process: an
// AVX-512 or AVX2+FMA build where the CPU has it (x86-64), else the baseline
// build (SSE2 on x86-64, NEON on arm64: the same source, gates.inc).

#pragma once

namespace edgelstm {

// Per-row destinations of what BPTT reads, for lstm_fused_step_save (null
// pointers where a row's step is past its length): act[b] the row's 4H
// activated gates i, f, g, o (gate stride H), cp[b] / tc[b] its H previous
// c and tanh(new c). Same layout as lstm_row_save's act / cp / tc.
struct LstmSaveRows {
  float* const* act;
  float* const* cp;
  float* const* tc;
};

#define EDGELSTM_GATE_DECLS                                                  \
  void lstm_row(const float* g, const float* x, float* h, float* c,          \
                float* y, int H);                                            \
  void lstm_row_save(const float* g, const float* x, float* h, float* c,     \
                     float* act, float* cp, float* tc, int H);               \
  void lstm_row_grad(const float* act, const float* cp, const float* tc,     \
                     const float* dh, const float* dy, float* dc, float* gs, \
                     int H);                                                 \
  void gru_lbr_row(const float* g, const float* x, const float* bhn,         \
                   float* h, float* y, int H);                               \
  void gru_rz_row(const float* g, const float* x, const float* h,            \
                  float* z_out, float* rh, int H);                           \
  void gru_n_row(const float* gn, const float* xn, const float* bhn,         \
                 const float* z, float* h, float* y, int H);                 \
  void rnn_row(const float* g, const float* x, float* h, float* y, int H,    \
               bool relu);                                                   \
  void gemv_nt(const float* w, const float* x, float* out, int N, int K);    \
  void gemm_nt_small(const float* w, const float* a, float* out, int M,      \
                     int N, int K, int ldc, bool accumulate);                \
  void gemv_nt_q8(const signed char* q, const float* s, const float* x,      \
                  float* out, int N, int K, bool accumulate);              \
  void expand_q8(const signed char* q, const float* s, float* w, int N,      \
                 int K);                                                     \
  int pack_width();                                                          \
  long packed_floats(int gates, int H, int K);                               \
  void pack_gates(const float* w, int gates, int H, int K, float* out);      \
  void lstm_fused_step(const float* packed, const float* h, int B, int H,    \
                       const float* const* x, float* hn, float* c,           \
                       float* const* y, float* scratch, int bk0, int bk1);   \
  void lstm_fused_step_save(const float* packed, const float* h, int B,      \
                            int H, const float* const* x, float* hn,         \
                            float* c, float* const* y, float* scratch,       \
                            int bk0, int bk1, const LstmSaveRows& save);     \
  void gemm_tn_chain(const float* x, int ldx, const float* d, int ldd,       \
                     float* c, int M, int N, int K);                         \
  void gemm_packed(const float* a, int M, int K, int lda,                    \
                   const float* packed, int N, float* out, int ldc);

namespace gates_base {
EDGELSTM_GATE_DECLS
}
#ifdef EDGELSTM_HAVE_AVX2
namespace gates_avx2 {
EDGELSTM_GATE_DECLS
}
namespace gates_avx512 {
EDGELSTM_GATE_DECLS
}
#endif

struct GateFns {
  decltype(&gates_base::lstm_row) lstm_row;
  decltype(&gates_base::lstm_row_save) lstm_row_save;
  decltype(&gates_base::lstm_row_grad) lstm_row_grad;
  decltype(&gates_base::gru_lbr_row) gru_lbr_row;
  decltype(&gates_base::gru_rz_row) gru_rz_row;
  decltype(&gates_base::gru_n_row) gru_n_row;
  decltype(&gates_base::rnn_row) rnn_row;
  decltype(&gates_base::gemv_nt) gemv_nt;
  decltype(&gates_base::gemm_nt_small) gemm_nt_small;
  decltype(&gates_base::gemv_nt_q8) gemv_nt_q8;
  decltype(&gates_base::expand_q8) expand_q8;
  decltype(&gates_base::pack_width) pack_width;
  decltype(&gates_base::packed_floats) packed_floats;
  decltype(&gates_base::pack_gates) pack_gates;
  decltype(&gates_base::lstm_fused_step) lstm_fused_step;
  decltype(&gates_base::lstm_fused_step_save) lstm_fused_step_save;
  decltype(&gates_base::gemm_packed) gemm_packed;
  decltype(&gates_base::gemm_tn_chain) gemm_tn_chain;
  const char* isa;
};

// The table for this CPU (chosen on first call).
const GateFns& gate_fns();

} // namespace edgelstm
