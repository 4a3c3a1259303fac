// libedgelstm_blas_shim.so: plain cblas_sgemm / cblas_dgemm / cblas_cgemm that
// forward to scipy-openblas32's prefixed functions.
//
// MLX's Linux wheel resolves these three names to the netlib reference BLAS it
// bundles (~50x slower than OpenBLAS on a 3200x256x1024 matmul here). Loaded
// with RTLD_GLOBAL before mlx.core is imported (EDGELSTM_BLAS=wheel, see
// edgelstm/fast/blas.py), these definitions come first, so MLX's own matmuls
// (mlx.nn, the pure-MLX path, heads, the ONNX executor's MatMul/Gemm/Conv) run
// on the OpenBLAS wheel the kernels already link: no system package needed.
// Those are the only BLAS symbols libmlx.so imports (nm -D); its LAPACK calls
// stay on the bundled library. int is ABI-identical to the CBLAS enums.

extern "C" {

void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float*, int,
                       const float*, int, float, float*, int);
void scipy_cblas_dgemm(int, int, int, int, int, int, double, const double*, int,
                       const double*, int, double, double*, int);
void scipy_cblas_cgemm(int, int, int, int, int, int, const void*, const void*, int,
                       const void*, int, const void*, void*, int);

__attribute__((visibility("default"))) void cblas_sgemm(
    int order, int ta, int tb, int m, int n, int k, float alpha, const float* a,
    int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  scipy_cblas_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

__attribute__((visibility("default"))) void cblas_dgemm(
    int order, int ta, int tb, int m, int n, int k, double alpha, const double* a,
    int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  scipy_cblas_dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

__attribute__((visibility("default"))) void cblas_cgemm(
    int order, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
    int lda, const void* b, int ldb, const void* beta, void* c, int ldc) {
  scipy_cblas_cgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

} // extern "C"
