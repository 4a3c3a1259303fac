"""Core of the MLX ONNX runner's op registry: dtypes, node context, conversions.

Values are numpy arrays while they are static (initializers, constants,
shapes) and MLX arrays once they depend on a graph input, so shape
arithmetic stays in numpy and tensor math runs in MLX. Each op is registered
with the attributes it implements exactly; the runner rejects any other.
The op families live in ``ops_*.py``, ``rnn_ops.py`` and ``qdq_ops.py``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import mlx.core as mx
import numpy as np
from onnx import TensorProto, helper

from edgelstm.errors import UnsupportedError

_BF16 = np.dtype(ml_dtypes.bfloat16)

# ONNX element type -> (numpy dtype, mlx dtype): every standard numeric type MLX holds
DTYPES: dict[int, tuple[Any, Any]] = {
    TensorProto.FLOAT: (np.float32, mx.float32),
    TensorProto.FLOAT16: (np.float16, mx.float16),
    TensorProto.BFLOAT16: (_BF16, mx.bfloat16),
    TensorProto.DOUBLE: (np.float64, mx.float64),
    TensorProto.INT8: (np.int8, mx.int8),
    TensorProto.UINT8: (np.uint8, mx.uint8),
    TensorProto.INT16: (np.int16, mx.int16),
    TensorProto.UINT16: (np.uint16, mx.uint16),
    TensorProto.INT32: (np.int32, mx.int32),
    TensorProto.UINT32: (np.uint32, mx.uint32),
    TensorProto.INT64: (np.int64, mx.int64),
    TensorProto.UINT64: (np.uint64, mx.uint64),
    TensorProto.BOOL: (np.bool_, mx.bool_),
}
_NP_TO_MX = {np.dtype(n): m for n, m in DTYPES.values()}
_MX_TO_NP = {m: np.dtype(n) for n, m in DTYPES.values()}
_MX_TO_ONNX = {m: t for t, (_, m) in DTYPES.items()}


def type_name(elem_type: int) -> str:
    """``FLOAT8E4M3FN`` for an ONNX element type number (``UNDEFINED`` for 0)."""
    try:
        return helper.tensor_dtype_to_string(elem_type).removeprefix("TensorProto.")
    except Exception:  # unknown numbers from newer/garbled files
        return f"element type {elem_type}"


def check_type(elem_type: int, where: str) -> None:
    """Refuse an element type MLX cannot hold (float8/4, int4/2, string, complex)."""
    if elem_type and elem_type not in DTYPES:
        raise UnsupportedError(f"{where}: tensor type {type_name(elem_type)} is not supported")


@dataclass
class NodeCtx:
    """One node as the op functions see it: parsed attributes and the opset.

    ``static[i]`` tells whether input ``i`` is fixed for the runner's life
    (an initializer or folded constant), so ops may cache work in ``cache``.
    ``graphs`` holds prepared subgraph attributes (If/Loop/Scan) and ``scope``
    the enclosing environment while the node runs (outer-scope names).
    """

    node: Any
    opset: int
    attrs: dict[str, Any] = field(default_factory=dict)
    static: tuple[bool, ...] = ()
    cache: dict[str, Any] = field(default_factory=dict)
    graphs: dict[str, Any] = field(default_factory=dict)
    scope: Any = None

    @property
    def label(self) -> str:
        name = self.node.name or (self.node.output[0] if self.node.output else "?")
        return f"{self.node.op_type} node '{name}'"

    def unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.label}: {what} is not supported")

    def get(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def sget(self, name: str, default: str = "") -> str:
        """A string attribute as ``str`` (protobuf hands back bytes)."""
        v = self.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v


OpFn = Callable[[NodeCtx, list], list]
#: (domain, op_type) -> (function, attribute names it implements)
REGISTRY: dict[tuple[str, str], tuple[OpFn, frozenset[str]]] = {}


def register(op_type: str, attrs: tuple[str, ...] = (), domain: str = ""):
    """Decorator: register ``fn(ctx, inputs) -> outputs`` for ``op_type``."""

    def deco(fn: OpFn) -> OpFn:
        REGISTRY[(domain, op_type)] = (fn, frozenset(attrs))
        return fn

    return deco


def is_np(v) -> bool:
    return isinstance(v, (np.ndarray, np.generic))


# MLX twins of read-only numpy constants (initializers, folded values: see freeze),
# so a weight is copied into MLX once per runner, not once per call or per trace
_TWINS: dict[int, tuple[Any, mx.array]] = {}
_TWIN_MIN = 256  # elements; smaller constants are cheaper to copy than to look up


def freeze(v):
    """Mark a static numpy value read-only, so :func:`to_mx` may reuse its MLX twin."""
    if isinstance(v, np.ndarray):
        v.setflags(write=False)
    return v


def to_mx(v) -> mx.array:
    """An MLX array with the same dtype (numpy float64 stays float64, not float32)."""
    if isinstance(v, mx.array):
        return v
    frozen = isinstance(v, np.ndarray) and v.size >= _TWIN_MIN and not v.flags.writeable
    if frozen:
        hit = _TWINS.get(id(v))
        if hit is not None and hit[0]() is v:
            return hit[1]
    a = np.asarray(v)
    dt = _NP_TO_MX.get(a.dtype)
    if dt is None:
        raise UnsupportedError(f"tensor type {a.dtype} is not supported")
    # MLX refuses negative strides (numpy reverse slices); copy() keeps 0-d shapes
    out = mx.array(a if a.flags.c_contiguous else a.copy(), dtype=dt)
    if frozen:
        key = id(v)
        mx.eval(out)  # a plain constant, never part of a trace

        def drop(_ref, key=key):
            _TWINS.pop(key, None)

        _TWINS[key] = (weakref.ref(v, drop), out)
    return out


def to_np(v) -> np.ndarray:
    if is_np(v):
        return np.asarray(v)
    if v.dtype == mx.bfloat16:  # no buffer protocol for bfloat16: go through float32
        return np.array(v.astype(mx.float32)).astype(_BF16)
    return np.array(v)


def np_dtype(dt) -> np.dtype:
    """numpy dtype of a numpy or MLX dtype."""
    return _MX_TO_NP[dt] if isinstance(dt, mx.Dtype) else np.dtype(dt)


def mx_dtype(dt) -> Any:
    """MLX dtype of a numpy or MLX dtype."""
    return dt if isinstance(dt, mx.Dtype) else _NP_TO_MX[np.dtype(dt)]


def is_float(dt) -> bool:
    return np.issubdtype(np_dtype(dt), np.floating) or np_dtype(dt) == _BF16


def is_int(dt) -> bool:
    return np.issubdtype(np_dtype(dt), np.integer)


def xp_of(*vals):
    """numpy when every value is static, else mlx (with the values converted)."""
    if all(v is None or is_np(v) for v in vals):
        return np, list(vals)
    return mx, [None if v is None else to_mx(v) for v in vals]


def ints(v) -> list[int]:
    """A static integer tensor (shape, axes, ...) as Python ints."""
    return [int(i) for i in to_np(v).reshape(-1)]


def opt(ins: list, i: int):
    """Input ``i`` or None when it is absent or empty-named."""
    return ins[i] if len(ins) > i else None


def norm_axis(axis: int, ndim: int) -> int:
    return axis + ndim if axis < 0 else axis


def norm_axes(axes, ndim) -> list[int]:
    return sorted(norm_axis(a, ndim) for a in axes)
