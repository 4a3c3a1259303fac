// Baseline (SSE2 on x86-64) build of the gate loops, and the ISA choice.

#include "gates.h"

#define GATES_NS gates_base
#include "gates.inc"

namespace edgelstm {

#define EDGELSTM_GATE_TABLE(ns, name)                                     \
  GateFns {                                                               \
    ns::lstm_row, ns::gru_lbr_row, ns::gru_rz_row, ns::gru_n_row,         \
        ns::rnn_row, ns::gemv_nt, ns::gemm_nt_small, ns::gemv_nt_q8,      \
        ns::expand_q8, name                                               \
  }

const GateFns& gate_fns() {
  static const GateFns fns = [] {
#ifdef EDGELSTM_HAVE_AVX2
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return EDGELSTM_GATE_TABLE(gates_avx2, "avx2");
    }
#endif
    return EDGELSTM_GATE_TABLE(gates_base, "baseline");
  }();
  return fns;
}

} // namespace edgelstm
