// BLAS identification and thread control for the bindings (see blas.h).

#include "blas.h"
#include "step_pool.h"

#include <stdexcept>
#include <string>

#if defined(EDGELSTM_BLAS_SCIPY_OPENBLAS)
extern "C" {
char* scipy_openblas_get_config(void);
int scipy_openblas_get_num_threads(void);
void scipy_openblas_set_num_threads(int num_threads);
}
#endif

#ifndef EDGELSTM_OPENBLAS_VERSION
#define EDGELSTM_OPENBLAS_VERSION "?"
#endif

namespace edgelstm {

std::string blas_info() {
#if defined(EDGELSTM_BLAS_SCIPY_OPENBLAS)
  // The config string names the core OpenBLAS picked at load (DYNAMIC_ARCH).
  return std::string("scipy-openblas32 ") + EDGELSTM_OPENBLAS_VERSION + ": " +
      scipy_openblas_get_config() +
      "; threads=" + std::to_string(scipy_openblas_get_num_threads());
#elif defined(EDGELSTM_BLAS_ACCELERATE)
  return "Accelerate (threads managed by the OS)";
#else
  return "cblas_* from the process (MLX's bundled BLAS unless one was preloaded)";
#endif
}

bool set_blas_threads(int n) {
  if (n < 1) {
    throw std::invalid_argument("set_blas_threads: n must be >= 1");
  }
  // The fused recurrent step follows the same count (step_pool.h).
  set_recurrent_threads(n);
#if defined(EDGELSTM_BLAS_SCIPY_OPENBLAS)
  scipy_openblas_set_num_threads(n);
  return true;
#else
  return false;
#endif
}

int blas_threads() {
#if defined(EDGELSTM_BLAS_SCIPY_OPENBLAS)
  return scipy_openblas_get_num_threads();
#else
  return 0;
#endif
}

} // namespace edgelstm
