"""Glue ops for the MLX ONNX runner: the shape, arithmetic and QDQ ops exporters emit.

Values are numpy arrays while they are static (initializers, constants,
shapes) and MLX arrays once they depend on a graph input, so shape
arithmetic stays in numpy and tensor math runs in MLX. Each op is registered
with the attributes it implements exactly; the runner rejects any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgelstm.errors import UnsupportedError

# ONNX element type -> (numpy dtype, mlx dtype)
DTYPES: dict[int, tuple[Any, Any]] = {
    TensorProto.FLOAT: (np.float32, mx.float32),
    TensorProto.FLOAT16: (np.float16, mx.float16),
    TensorProto.DOUBLE: (np.float64, mx.float64),
    TensorProto.INT8: (np.int8, mx.int8),
    TensorProto.UINT8: (np.uint8, mx.uint8),
    TensorProto.INT16: (np.int16, mx.int16),
    TensorProto.INT32: (np.int32, mx.int32),
    TensorProto.INT64: (np.int64, mx.int64),
    TensorProto.BOOL: (np.bool_, mx.bool_),
}


@dataclass
class NodeCtx:
    """One node as the op functions see it: parsed attributes and the opset.

    ``static[i]`` tells whether input ``i`` is fixed for the runner's life
    (an initializer or folded constant), so ops may cache work in ``cache``.
    """

    node: Any
    opset: int
    attrs: dict[str, Any] = field(default_factory=dict)
    static: tuple[bool, ...] = ()
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        name = self.node.name or (self.node.output[0] if self.node.output else "?")
        return f"{self.node.op_type} node '{name}'"

    def unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.label}: {what} is not supported")

    def get(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)


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


def to_mx(v) -> mx.array:
    if isinstance(v, mx.array):
        return v
    v = np.asarray(v)
    # MLX refuses negative strides (numpy reverse slices); copy() keeps 0-d shapes
    return mx.array(v if v.flags.c_contiguous else v.copy())


def to_np(v) -> np.ndarray:
    return np.asarray(v) if is_np(v) else np.array(v)


def xp_of(*vals):
    """numpy when every value is static, else mlx (with the values converted)."""
    if all(v is None or is_np(v) for v in vals):
        return np, list(vals)
    return mx, [None if v is None else to_mx(v) for v in vals]


def ints(v) -> list[int]:
    """A static integer tensor (shape, axes, ...) as Python ints."""
    return [int(i) for i in to_np(v).reshape(-1)]


def _norm_axes(axes, ndim):
    return sorted(a + ndim if a < 0 else a for a in axes)


# --- plain elementwise and matrix ops -------------------------------------


def _binary(np_fn, mx_fn):
    def fn(ctx, ins):
        xp, (a, b) = xp_of(*ins)
        return [(np_fn if xp is np else mx_fn)(a, b)]

    return fn


for _name, _npf, _mxf in [
    ("Add", np.add, mx.add),
    ("Sub", np.subtract, mx.subtract),
    ("Mul", np.multiply, mx.multiply),
    ("Equal", np.equal, mx.equal),
    ("Less", np.less, mx.less),
    ("Greater", np.greater, mx.greater),
    ("MatMul", np.matmul, mx.matmul),
]:
    register(_name)(_binary(_npf, _mxf))


@register("Div")
def _div(ctx, ins):
    xp, (a, b) = xp_of(*ins)
    if xp is np and np.issubdtype(a.dtype, np.integer):
        return [(np.trunc(a / b)).astype(a.dtype)]  # integer Div truncates
    out = xp.divide(a, b)
    if xp is mx and mx.issubdtype(a.dtype, mx.integer):
        out = out.astype(a.dtype)  # float -> int casts truncate toward zero
    return [out]


@register("Pow")
def _pow(ctx, ins):
    xp, (a, b) = xp_of(*ins)
    return [xp.power(a, b.astype(a.dtype))]


@register("Neg")
def _neg(ctx, ins):
    xp, (a,) = xp_of(*ins)
    return [xp.negative(a)]


@register("Sqrt")
def _sqrt(ctx, ins):
    return [mx.sqrt(to_mx(ins[0]))]


@register("Relu")
def _relu(ctx, ins):
    x = to_mx(ins[0])
    return [mx.maximum(x, mx.array(0, x.dtype))]


@register("Sigmoid")
def _sigmoid(ctx, ins):
    return [mx.sigmoid(to_mx(ins[0]))]


@register("Tanh")
def _tanh(ctx, ins):
    return [mx.tanh(to_mx(ins[0]))]


def _softmax_like(fn):
    def op(ctx, ins):
        x = to_mx(ins[0])
        if ctx.opset >= 13:
            return [fn(x, axis=ctx.get("axis", -1))]
        # opset < 13: coerce to 2-D at `axis` (default 1), then back
        axis = ctx.get("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return [fn(flat, axis=-1).reshape(x.shape)]

    return op


register("Softmax", ("axis",))(_softmax_like(lambda x, axis: mx.softmax(x, axis=axis)))
register("LogSoftmax", ("axis",))(
    _softmax_like(lambda x, axis: x - mx.logsumexp(x, axis=axis, keepdims=True))
)


@register("Gemm", ("alpha", "beta", "transA", "transB"))
def _gemm(ctx, ins):
    xp, (a, b, c) = xp_of(*(list(ins) + [None] * (3 - len(ins))))
    if ctx.get("transA", 0):
        a = a.T
    if ctx.get("transB", 0):
        b = b.T
    y = xp.matmul(a, b)
    alpha, beta = ctx.get("alpha", 1.0), ctx.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y]


@register("Where")
def _where(ctx, ins):
    xp, (c, a, b) = xp_of(*ins)
    return [xp.where(c, a, b)]


@register("ReduceMean", ("axes", "keepdims", "noop_with_empty_axes"))
def _reduce_mean(ctx, ins):
    x = ins[0]
    if ctx.opset >= 18:
        axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else []
    else:
        axes = list(ctx.get("axes", []))
    if not axes:
        if ctx.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(x.ndim))
    xp, (x,) = xp_of(x)
    keep = bool(ctx.get("keepdims", 1))
    return [xp.mean(x, axis=tuple(_norm_axes(axes, x.ndim)), keepdims=keep)]


# --- shape and data movement ----------------------------------------------


@register("Identity")
def _identity(ctx, ins):
    return [ins[0]]


@register("Dropout", ("seed",))
def _dropout(ctx, ins):
    # inference: identity; training_mode (input 2) true would need randomness
    if len(ins) > 2 and ins[2] is not None and bool(to_np(ins[2])):
        raise ctx.unsupported("training_mode=True")
    x = ins[0]
    xp = np if is_np(x) else mx
    return [x, xp.ones(x.shape, dtype=np.bool_ if xp is np else mx.bool_)]


@register("Shape", ("start", "end"))
def _shape(ctx, ins):
    shape = list(ins[0].shape)
    start, end = ctx.get("start", 0), ctx.get("end", None)
    return [np.array(shape[slice(start, end)], dtype=np.int64)]


@register("Transpose", ("perm",))
def _transpose(ctx, ins):
    xp, (x,) = xp_of(*ins)
    perm = ctx.get("perm") or list(range(x.ndim))[::-1]
    return [xp.transpose(x, list(perm))]


@register("Reshape", ("allowzero",))
def _reshape(ctx, ins):
    x, shape = ins[0], ints(ins[1])
    if not ctx.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    xp, (x,) = xp_of(x)
    return [xp.reshape(x, shape)]


@register("Flatten", ("axis",))
def _flatten(ctx, ins):
    x = ins[0]
    axis = ctx.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    xp, (x,) = xp_of(x)
    return [xp.reshape(x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))]


@register("Squeeze", ("axes",))
def _squeeze(ctx, ins):
    x = ins[0]
    if ctx.opset >= 13:
        axes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    else:
        axes = ctx.get("axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    xp, (x,) = xp_of(x)
    return [xp.squeeze(x, axis=tuple(_norm_axes(axes, x.ndim)))]


@register("Unsqueeze", ("axes",))
def _unsqueeze(ctx, ins):
    x = ins[0]
    axes = ints(ins[1]) if ctx.opset >= 13 else list(ctx.get("axes"))
    out_ndim = x.ndim + len(axes)
    xp, (x,) = xp_of(x)
    for a in _norm_axes(axes, out_ndim):
        x = xp.expand_dims(x, a)
    return [x]


@register("Concat", ("axis",))
def _concat(ctx, ins):
    xp, vals = xp_of(*ins)
    return [xp.concatenate(vals, axis=ctx.get("axis"))]


@register("Split", ("axis", "split", "num_outputs"))
def _split(ctx, ins):
    x = ins[0]
    axis = ctx.get("axis", 0)
    axis = axis + x.ndim if axis < 0 else axis
    n_out = len(ctx.node.output)
    if ctx.opset >= 13:
        sizes = ints(ins[1]) if len(ins) > 1 and ins[1] is not None else None
    else:
        sizes = ctx.get("split")
    if sizes is None:
        n = ctx.get("num_outputs", n_out)
        step = -(-x.shape[axis] // n)  # ceil: the last chunk may be smaller (opset 18)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(n)]
    bounds = np.cumsum(sizes)[:-1].tolist()
    xp, (x,) = xp_of(x)
    return list(xp.split(x, bounds, axis=axis))


@register("Slice", ("starts", "ends", "axes"))
def _slice(ctx, ins):
    x = ins[0]
    if ctx.opset >= 10:
        starts, ends = ints(ins[1]), ints(ins[2])
        axes = ints(ins[3]) if len(ins) > 3 and ins[3] is not None else None
        steps = ints(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    else:
        starts, ends = list(ctx.get("starts")), list(ctx.get("ends"))
        axes, steps = ctx.get("axes"), None
    axes = list(range(len(starts))) if axes is None else _norm_axes_keep(axes, x.ndim)
    steps = steps or [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps, strict=False):
        d = x.shape[a]
        # Python slicing clamps like ONNX; pre-clamp so huge sentinels fit MLX's int32
        idx[a] = slice(min(max(s, -d - 1), d), min(max(e, -d - 1), d), st)
    return [x[tuple(idx)]]


def _norm_axes_keep(axes, ndim):
    return [a + ndim if a < 0 else a for a in axes]


@register("Gather", ("axis",))
def _gather(ctx, ins):
    x, idx = ins
    axis = ctx.get("axis", 0)
    axis = axis + x.ndim if axis < 0 else axis
    if is_np(x) and is_np(idx):
        return [np.take(x, idx.astype(np.int64), axis=axis)]
    idx = to_mx(idx)
    idx = mx.where(idx < 0, idx + x.shape[axis], idx)
    return [mx.take(to_mx(x), idx, axis=axis)]


@register("Expand")
def _expand(ctx, ins):
    x, shape = ins[0], ints(ins[1])
    out = np.broadcast_shapes(tuple(x.shape), tuple(shape))
    xp, (x,) = xp_of(x)
    return [xp.broadcast_to(x, out)]


@register("Constant", ("value", "value_float", "value_floats", "value_int", "value_ints"))
def _constant(ctx, ins):
    a = ctx.attrs
    if "value" in a:
        return [numpy_helper.to_array(a["value"])]
    if "value_float" in a:
        return [np.array(a["value_float"], np.float32)]
    if "value_floats" in a:
        return [np.array(a["value_floats"], np.float32)]
    if "value_int" in a:
        return [np.array(a["value_int"], np.int64)]
    if "value_ints" in a:
        return [np.array(a["value_ints"], np.int64)]
    raise ctx.unsupported("a Constant without a value attribute")


@register("ConstantOfShape", ("value",))
def _constant_of_shape(ctx, ins):
    v = ctx.get("value")
    v = np.zeros(1, np.float32) if v is None else numpy_helper.to_array(v).reshape(-1)
    return [np.full(ints(ins[0]), v[0], dtype=v.dtype)]


@register("Cast", ("to", "saturate"))
def _cast(ctx, ins):
    to = ctx.get("to")
    if to not in DTYPES:
        raise ctx.unsupported(f"attribute 'to' = {helper.tensor_dtype_to_string(to)}")
    x = ins[0]
    return [x.astype(DTYPES[to][0]) if is_np(x) else x.astype(DTYPES[to][1])]
