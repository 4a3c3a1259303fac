"""Which BLAS this process uses, and the opt-in replacement of MLX's own.

The fused kernels (``edgelstm.fast._kernels``) link a BLAS of their own at build
time: ``scipy-openblas32`` on Linux (a wheel with ``scipy_``-prefixed symbols, so
it never clashes with the BLAS MLX links) and Accelerate on macOS. Nothing here
is needed for them to be fast.

MLX's Linux CPU wheel links netlib's reference BLAS for its own matmuls (a
32x256x1024 matmul ~8.7 ms vs ~0.17 ms with OpenBLAS). Replacing it means
loading a BLAS with ``RTLD_GLOBAL`` before ``import mlx.core``, which changes
every BLAS call in the process. A library should not do that to its host
process unasked, but the ``edgelstm`` command owns its process:

- ``EDGELSTM_BLAS`` unset: the ``edgelstm`` command (its console script or
  ``python -m edgelstm``) loads the wheel's BLAS as ``wheel`` below, where the
  kernels' shim is installed (training a model with a conv branch: ~9x faster);
  ``import edgelstm`` in any other program leaves MLX's BLAS alone.
- ``EDGELSTM_BLAS=default`` or ``reference``: leave MLX's BLAS alone.
- ``EDGELSTM_BLAS=openblas``: load the system OpenBLAS if one is found in the
  folders of ``EDGELSTM_BLAS_DIRS`` (``os.pathsep``-separated; default: the
  usual multiarch folders) or by the dynamic linker's cache. Only fixed file
  names are tried: no folder is ever listed or walked.
- ``EDGELSTM_BLAS=/path/to/libopenblas.so.0``: load that file.
- ``EDGELSTM_BLAS=wheel``: no system package at all: load the shim built with the
  kernels (``libedgelstm_blas_shim.so``, ``kernels/src/blas_shim.cpp``), whose
  ``cblas_sgemm``/``dgemm``/``cgemm`` forward to the ``scipy-openblas32`` wheel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys

_DEFAULT_DIRS = (
    f"/usr/lib/{platform.machine()}-linux-gnu/openblas-pthread",
    f"/usr/lib/{platform.machine()}-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
)
_FILE_NAMES = ("libopenblas.so.0", "libopenblas.so")

#: What MLX's own matmuls run on in this process (set by :func:`load`).
MLX_BLAS = "not checked yet"

_BUNDLED = "MLX's bundled reference BLAS (set EDGELSTM_BLAS=wheel to replace it)"


def on_reference_blas() -> bool:
    """Whether MLX's own matmuls in this process run on the Linux wheel's reference BLAS."""
    return MLX_BLAS.startswith(_BUNDLED)


def _search_dirs() -> list[str]:
    value = os.environ.get("EDGELSTM_BLAS_DIRS")
    if value is None:
        return list(_DEFAULT_DIRS)
    return [d for d in value.split(os.pathsep) if d]


def find_openblas() -> str | None:
    """Return a system OpenBLAS to load, trying fixed file names only (never a walk)."""
    for folder in _search_dirs():
        for name in _FILE_NAMES:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    if "EDGELSTM_BLAS_DIRS" in os.environ:
        return None  # the caller pinned the search; do not fall back to the linker cache
    return ctypes.util.find_library("openblas")


def load() -> str:
    """Apply ``EDGELSTM_BLAS`` before MLX is imported; return what MLX's matmuls use.

    Returns:
        A one-line description, also stored in :data:`MLX_BLAS`.
    """
    global MLX_BLAS
    MLX_BLAS = _load()
    return MLX_BLAS


def _load() -> str:
    if sys.platform == "darwin":
        return "Accelerate (MLX native)"
    bundled = _BUNDLED
    if not sys.platform.startswith("linux"):
        return "MLX's own BLAS"
    choice = os.environ.get("EDGELSTM_BLAS")
    by = "EDGELSTM_BLAS=wheel" if choice is not None else "the edgelstm command's default"
    choice = ("wheel" if is_cli_process() else "default") if choice is None else choice.strip()
    if choice in ("", "default", "reference"):
        return bundled
    if "mlx.core" in sys.modules:
        return f"{bundled}; EDGELSTM_BLAS ignored: mlx.core was imported before edgelstm"
    if choice == "wheel":
        return _load_shim(bundled, by)
    path = find_openblas() if choice == "openblas" else choice
    if not path:
        return f"{bundled}; EDGELSTM_BLAS=openblas found no system OpenBLAS"
    try:
        ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    except OSError as exc:
        return f"{bundled}; could not load {path}: {exc}"
    return f"OpenBLAS ({path}, loaded process-wide by EDGELSTM_BLAS)"


def is_cli_process(argv: list[str] | None = None, orig_argv: list[str] | None = None) -> bool:
    """Whether this process is the ``edgelstm`` command, read from its command line.

    The console script runs as ``.../bin/edgelstm ARGS`` (``sys.argv[0]``);
    ``python -m edgelstm`` imports this package while ``sys.argv[0]`` is still
    ``"-m"``, so the interpreter's own command line (``sys.orig_argv``) is read.
    """
    argv = sys.argv if argv is None else argv
    orig_argv = getattr(sys, "orig_argv", []) if orig_argv is None else orig_argv
    if argv and os.path.basename(argv[0]) in ("edgelstm", "edgelstm.exe"):
        return True
    args = iter(orig_argv[1:])
    for arg in args:
        if arg == "-m":
            return next(args, None) == "edgelstm"
        if arg.startswith("-m"):
            return arg == "-medgelstm"
        if arg in ("-X", "-W"):
            next(args, None)  # the option's value
        elif arg.startswith("-c") or not arg.startswith("-"):
            return False  # ``-c`` code or a script: not the command
    return False


def _load_shim(bundled: str, by: str) -> str:
    """Load the kernels' BLAS shim process-wide (``EDGELSTM_BLAS=wheel``).

    The wheel's library is loaded first by its full path (found from the installed
    ``scipy_openblas32`` package, never by a search), so the shim's dependency
    resolves whether edgelstm is installed or built in place.
    """
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    shim = os.path.join(here, "libedgelstm_blas_shim.so")
    spec = importlib.util.find_spec("scipy_openblas32")
    if not os.path.isfile(shim) or spec is None or not spec.submodule_search_locations:
        return f"{bundled}; {by}: the kernels' BLAS shim is not installed"
    wheel = os.path.join(spec.submodule_search_locations[0], "lib", "libscipy_openblas.so")
    try:
        ctypes.CDLL(wheel, mode=os.RTLD_GLOBAL)
        ctypes.CDLL(shim, mode=os.RTLD_GLOBAL)
    except OSError as exc:
        return f"{bundled}; {by}: could not load the shim: {exc}"
    return f"OpenBLAS from the scipy-openblas32 wheel (loaded process-wide by {by})"
