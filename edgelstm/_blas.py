"""Load an optimised BLAS before MLX so its reference BLAS is bypassed.

MLX's Linux CPU wheel links netlib's reference BLAS; a 32x256x1024 matmul
takes ~8.7 ms with it and ~0.17 ms with OpenBLAS. Loading OpenBLAS with
RTLD_GLOBAL before ``import mlx.core`` makes MLX's BLAS symbols resolve to it.

Set ``EDGELSTM_BLAS=reference`` to keep MLX's bundled BLAS, or to a path to
load a specific library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import sys

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)

#: Which BLAS MLX uses in this process: a library path, "reference" or "native".
BLAS = "native"


def _find_openblas() -> str | None:
    for path in _CANDIDATES:
        if os.path.exists(path):
            return path
    name = ctypes.util.find_library("openblas")
    if name:
        return name
    hits = glob.glob("/usr/lib*/**/libopenblas*.so*", recursive=True)
    return hits[0] if hits else None


def load() -> str:
    """Load OpenBLAS globally if this is Linux and MLX is not yet imported.

    Returns:
        A description of the BLAS in use, also stored in ``BLAS``.
    """
    global BLAS
    if not sys.platform.startswith("linux"):
        BLAS = "native (Accelerate)" if sys.platform == "darwin" else "native"
        return BLAS
    choice = os.environ.get("EDGELSTM_BLAS", "auto")
    if choice == "reference":
        BLAS = "reference (MLX bundled netlib BLAS)"
        return BLAS
    if "mlx.core" in sys.modules:
        BLAS = "unknown (mlx.core was imported before edgelstm)"
        return BLAS
    path = choice if choice != "auto" else _find_openblas()
    if not path:
        BLAS = "reference (MLX bundled netlib BLAS; install libopenblas0-pthread)"
        return BLAS
    try:
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    except OSError as exc:
        BLAS = f"reference (could not load {path}: {exc})"
        return BLAS
    BLAS = f"OpenBLAS ({path})"
    return BLAS
