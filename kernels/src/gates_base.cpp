// Baseline (SSE2 on x86-64) build of the gate loops, and the ISA choice.

#include "gates.h"

#include <cstdlib>
#include <cstring>

#define GATES_NS gates_base
#include "gates.inc"

namespace edgelstm {

#define EDGELSTM_GATE_TABLE(ns, name)                                     \
  GateFns {                                                               \
    ns::lstm_row, ns::lstm_row_save, ns::lstm_row_grad, ns::gru_lbr_row,  \
        ns::gru_rz_row, ns::gru_n_row,                                    \
        ns::rnn_row, ns::gemv_nt, ns::gemm_nt_small, ns::gemv_nt_q8,      \
        ns::expand_q8, ns::pack_width, ns::packed_floats, ns::pack_gates, \
        ns::lstm_fused_step, ns::lstm_fused_step_save, ns::gemm_packed,       \
        ns::gemm_tn_chain, name                                           \
  }

const GateFns& gate_fns() {
  static const GateFns fns = [] {
#ifdef EDGELSTM_HAVE_AVX2
    __builtin_cpu_init();
    // EDGELSTM_ISA=avx2 / baseline caps the choice (benchmarks, tests).
    const char* cap = std::getenv("EDGELSTM_ISA");
    const bool no512 = cap && (std::strcmp(cap, "avx2") == 0 || std::strcmp(cap, "baseline") == 0);
    const bool no256 = cap && std::strcmp(cap, "baseline") == 0;
    if (!no512 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma")) {
      return EDGELSTM_GATE_TABLE(gates_avx512, "avx512");
    }
    if (!no256 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return EDGELSTM_GATE_TABLE(gates_avx2, "avx2");
    }
#endif
    return EDGELSTM_GATE_TABLE(gates_base, "baseline");
  }();
  return fns;
}

} // namespace edgelstm
