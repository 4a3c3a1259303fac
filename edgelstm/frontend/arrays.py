"""Reading ``.npy``/``.npz`` without trusting their headers, and the NaN/Inf policy.

``np.load`` allocates whatever shape a header claims before it reads a byte,
so a 200-byte ``.npy`` claiming ``(1e5, 1e5, 6)`` asks for 224 GiB. Here the
header is read first and checked against the bytes really present (and
:data:`~edgelstm.limits.MAX_ELEMENTS`).

Non-finite policy: edgelstm **refuses** NaN and Inf in model inputs and
training data, on every backend, with a :class:`NonFiniteError` that names the
first bad position. (MLX would propagate NaN and ONNX Runtime may hide it, so
refusing is the only answer both backends give alike.)
"""

from __future__ import annotations

import os
import tokenize
import zipfile
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError, LimitError, NonFiniteError
from edgelstm.limits import MAX_ELEMENTS, MAX_NPZ_RATIO, check_elements


def _npy_header(fp, name: str) -> tuple[tuple[int, ...], np.dtype]:
    """Read the header of an open ``.npy`` stream: ``(shape, dtype)``."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, _, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError, OverflowError, KeyError,
            tokenize.TokenError) as exc:  # numpy parses the header dict with ast/tokenize
        raise DataError(f"cannot read {name}: not a .npy array ({_first_line(exc)})") from None
    if dtype.hasobject:
        raise DataError(f"cannot read {name}: it holds Python objects (pickles are not loaded)")
    return tuple(int(d) for d in shape), dtype


def _check_claim(shape, dtype, available: int, name: str) -> None:
    n = check_elements(shape, f"{name}: array", MAX_ELEMENTS)
    if n * dtype.itemsize > available:
        raise DataError(f"cannot read {name}: its header claims shape {shape} "
                        f"({n * dtype.itemsize:,} bytes) but only {available:,} bytes follow")


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """``np.load`` of a ``.npy`` file after checking its header against its size.

    Raises:
        DataError: empty, truncated, pickled or malformed file; LimitError: too large.
    """
    path = Path(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise DataError(f"cannot read {path}: empty file (0 bytes)")
        shape, dtype = _npy_header(fh, str(path))
        _check_claim(shape, dtype, size - fh.tell(), str(path))
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {_first_line(exc)}") from None


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz``, each member's header checked before it is read.

    Raises:
        DataError: not a zip of ``.npy`` members, or a member whose header
            claims more than it holds; LimitError: too large.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"cannot read {path}: empty file (0 bytes)")
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                label = f"{path}[{key}]"
                if info.file_size > MAX_NPZ_RATIO * max(info.compress_size, 1):
                    raise LimitError(f"{label}: expands {info.file_size:,} bytes from "
                                     f"{info.compress_size:,}; refused as a zip bomb")
                with zf.open(info) as fh:
                    shape, dtype = _npy_header(fh, label)
                    _check_claim(shape, dtype, info.file_size - fh.tell(), label)
                with zf.open(info) as fh:  # read_array reads the header again
                    try:
                        out[key] = np.lib.format.read_array(fh, allow_pickle=False)
                    except (ValueError, EOFError) as exc:
                        raise DataError(f"cannot read {label}: {_first_line(exc)}") from None
            return out
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise DataError(f"cannot read {path}: not an .npz ({_first_line(exc)})") from None
    except (OSError, ValueError) as exc:  # zlib errors, bad CRC
        if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise DataError(f"cannot read {path}: corrupt .npz ({_first_line(exc)})") from None


def check_finite(name: str, x) -> None:
    """Refuse NaN/Inf in a float array, naming the first position.

    Raises:
        NonFiniteError: e.g. ``input 'x' has NaN at index (0, 3, 1)``.
    """
    a = np.asarray(x)
    if a.dtype.kind not in "fc" or a.size == 0:
        return
    bad = ~np.isfinite(a)
    if bad.any():
        pos = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), a.shape))
        what = "NaN" if np.isnan(a[pos]) else "Inf"
        raise NonFiniteError(f"{name} has {what} at index {pos} ({int(bad.sum())} non-finite "
                             "values); edgelstm refuses non-finite input")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file with ``x`` and ``y`` arrays, by name (no pickles).

    Raises:
        DataError: the file cannot be read, or has no ``x`` or ``y``.
    """
    arrays = load_npz(path)  # member headers checked against their sizes first
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path} has no {key!r} array (found {', '.join(sorted(arrays))})")
    return arrays
