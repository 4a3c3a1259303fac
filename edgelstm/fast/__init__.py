"""The one place that decides fused C++ kernel vs pure MLX, for fp32 and int8 cells.

``dispatch`` wraps the compiled ``_kernels`` extension; ``blas`` reports (and, only when
asked with ``EDGELSTM_BLAS``, replaces) the BLAS MLX uses.
"""
