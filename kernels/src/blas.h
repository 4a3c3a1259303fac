// The BLAS the kernels call, chosen at build time (kernels/CMakeLists.txt):
//
//   EDGELSTM_BLAS_SCIPY_OPENBLAS  Linux wheels: scipy-openblas32's
//                                 libscipy_openblas.so, every symbol prefixed
//                                 scipy_ so it cannot clash with another BLAS.
//   EDGELSTM_BLAS_ACCELERATE      macOS: Apple's Accelerate (plain cblas_*).
//   neither                       plain cblas_* resolved at load time, i.e.
//                                 whatever libmlx pulled in (MLX's netlib
//                                 reference BLAS on Linux): the old behaviour,
//                                 kept only for comparisons.
//
// Declared here rather than via <cblas.h>: the prefixed header is not on
// every box and int is ABI-identical to the CBLAS enums.

#pragma once

#include <string>

#if defined(EDGELSTM_BLAS_SCIPY_OPENBLAS)
#define EDGELSTM_CBLAS(name) scipy_cblas_##name
#else
#define EDGELSTM_CBLAS(name) cblas_##name
#endif

extern "C" {
void EDGELSTM_CBLAS(sgemm)(
    int order, int transa, int transb, int m, int n, int k, float alpha,
    const float* a, int lda, const float* b, int ldb, float beta, float* c,
    int ldc);
void EDGELSTM_CBLAS(sgemv)(
    int order, int trans, int m, int n, float alpha, const float* a, int lda,
    const float* x, int incx, float beta, float* y, int incy);
}

namespace edgelstm {

inline constexpr int kRowMajor = 101;
inline constexpr int kNoTrans = 111;
inline constexpr int kTrans = 112;

// "<library>: <config>; threads=N" for the BLAS linked above.
std::string blas_info();

// Set the BLAS thread count (OpenBLAS only; Accelerate and the reference BLAS
// have no such call) and the fused recurrent step's (set_recurrent_threads).
// Returns whether the BLAS applied it.
bool set_blas_threads(int n);

// The BLAS's thread count, or 0 where it has none to report.
int blas_threads();

} // namespace edgelstm
