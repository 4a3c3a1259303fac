"""Saving a stream's state: front-end buffers as arrays + scalars, and safetensors I/O.

Front ends (:mod:`edgelstm.frontend.features`, :mod:`edgelstm.frontend.resample`) keep their
streaming state in plain attributes: numpy arrays and scalars, possibly in a
nested object. :func:`export_state` walks those attributes into ``arrays``
and JSON-encoded ``meta`` strings; :func:`import_state` writes them back
into a freshly built front end. The safetensors writer is a small numpy one,
because MLX's cannot store float64 buffers.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError
from edgelstm.io.fileio import atomic_output

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
           "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
_SKIP = ("config",)
_MAX_DEPTH = 3


def export_state(obj, prefix: str, arrays: dict, meta: dict, depth: int = 0) -> None:
    """Add ``obj``'s array attributes to ``arrays`` and scalar ones to ``meta`` (JSON)."""
    if obj is None or depth > _MAX_DEPTH:
        return
    for name, value in vars(obj).items():
        if name in _SKIP:
            continue
        key = prefix + name
        if isinstance(value, np.ndarray):
            arrays[key] = value.copy()
            meta[key] = "array"
        elif isinstance(value, np.generic):
            meta[key] = json.dumps(value.item())
        elif value is None or isinstance(value, (bool, int, float, str)):
            meta[key] = json.dumps(value)
        elif hasattr(value, "__dict__") and not callable(value):
            meta[key] = "object"
            export_state(value, key + ".", arrays, meta, depth + 1)
        elif hasattr(value, "shape") and hasattr(value, "dtype"):  # an mx.array
            arrays[key] = np.array(value)
            meta[key] = "mlx"


def import_state(obj, prefix: str, arrays: dict, meta: dict) -> None:
    """Inverse of :func:`export_state` into a freshly built ``obj`` of the same kind."""
    if obj is None:
        return
    for key in sorted(k for k in meta if k.startswith(prefix)):
        rest = key[len(prefix):]
        if "." in rest:
            continue  # handled by the nested object's own call
        kind = meta[key]
        if kind == "object":
            import_state(getattr(obj, rest), key + ".", arrays, meta)
        elif kind == "array":
            setattr(obj, rest, np.asarray(arrays[key]).copy())
        elif kind == "mlx":
            import mlx.core as mx

            setattr(obj, rest, mx.array(np.asarray(arrays[key])))
        else:
            setattr(obj, rest, json.loads(kind))


def write_safetensors(path: str | os.PathLike, arrays: dict[str, np.ndarray],
                      metadata: dict[str, str]) -> Path:
    """Write numpy arrays (any safetensors dtype, float64 included) and string metadata."""
    header: dict = {"__metadata__": {k: str(v) for k, v in metadata.items()}}
    blobs, offset = [], 0
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        if a.dtype not in _CODES:
            raise DataError(f"cannot store {name!r} of dtype {a.dtype} in safetensors")
        data = a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with atomic_output(path, force=True) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)))
        fh.write(head)
        for data in blobs:
            fh.write(data)
    return Path(path)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file into numpy arrays and its metadata."""
    try:
        raw = Path(path).read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
    except (OSError, struct.error, ValueError) as exc:
        raise DataError(f"cannot read stream state {path}: {exc}") from None
    meta = header.pop("__metadata__", {}) or {}
    body = memoryview(raw)[8 + n:]
    arrays = {}
    for name, info in header.items():
        lo, hi = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]]).newbyteorder("<")
        arrays[name] = np.frombuffer(body[lo:hi], dtype=dtype).reshape(info["shape"]).copy()
    return arrays, meta
