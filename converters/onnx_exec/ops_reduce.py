"""Reductions, arg-reductions, softmax family, cumulative ops and matrix products.

Reductions follow ONNX's two conventions: ``axes`` as an attribute (older
opsets) or as an input (ReduceSum from 13, the others from 18), with
``keepdims`` and ``noop_with_empty_axes``. Outputs keep the input dtype.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from edgelstm.converters.onnx_exec.ops import (
    ints,
    is_float,
    is_int,
    norm_axes,
    norm_axis,
    np_dtype,
    opt,
    register,
    to_mx,
    xp_of,
)


def _up(x):
    """Half types accumulate in float32 (as reference implementations do)."""
    return x.astype(mx.float32) if x.dtype in (mx.float16, mx.bfloat16) else x


def _reduce_axes(ctx, ins, input_from: int):
    x = ins[0]
    if ctx.opset >= input_from:
        axes = ints(ins[1]) if opt(ins, 1) is not None else []
    else:
        axes = list(ctx.get("axes", []))
    if not axes:
        if ctx.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(x.ndim))
    return tuple(norm_axes(axes, x.ndim))


def _empty_fill(x, axes, keep, value):
    shape = [1 if i in axes else d for i, d in enumerate(x.shape)] if keep else [
        d for i, d in enumerate(x.shape) if i not in axes
    ]
    return mx.full(shape, value, dtype=x.dtype)


def _reduction(body, input_from=18, empty=None):
    def fn(ctx, ins):
        axes = _reduce_axes(ctx, ins, 13 if input_from == 13 else input_from)
        x = to_mx(ins[0])
        if axes is None:
            return [x]
        keep = bool(ctx.get("keepdims", 1))
        if x.size == 0:
            # ONNX defines the identity element; MLX refuses (or hangs) on empty input
            return [_empty_fill(x, axes, keep, empty(x.dtype))]
        return [body(_up(x), axes, keep).astype(x.dtype)]

    return fn


def _max_identity(dt):
    if dt == mx.bool_:
        return False
    return -np.inf if is_float(dt) else np.iinfo(np_dtype(dt)).min


def _min_identity(dt):
    if dt == mx.bool_:
        return True
    return np.inf if is_float(dt) else np.iinfo(np_dtype(dt)).max


def _const(v):
    return lambda dt: v


_ZERO, _NEG_INF = _const(0), _const(-np.inf)
# name -> (body, opset from which axes is an input, value of a reduction over nothing);
# MLX can hang reducing zero-size arrays, so empty reductions never reach it
_REDUCTIONS = {
    "ReduceSum": (lambda x, a, k: mx.sum(x, axis=a, keepdims=k), 13, _ZERO),
    "ReduceMean": (lambda x, a, k: mx.mean(x, axis=a, keepdims=k), 18, _const(np.nan)),
    "ReduceMax": (lambda x, a, k: mx.max(x, axis=a, keepdims=k), 18, _max_identity),
    "ReduceMin": (lambda x, a, k: mx.min(x, axis=a, keepdims=k), 18, _min_identity),
    "ReduceProd": (lambda x, a, k: mx.prod(x, axis=a, keepdims=k), 18, _const(1)),
    "ReduceL1": (lambda x, a, k: mx.sum(mx.abs(x), axis=a, keepdims=k), 18, _ZERO),
    "ReduceL2": (lambda x, a, k: mx.sqrt(mx.sum(x * x, axis=a, keepdims=k)), 18, _ZERO),
    "ReduceSumSquare": (lambda x, a, k: mx.sum(x * x, axis=a, keepdims=k), 18, _ZERO),
    "ReduceLogSum": (lambda x, a, k: mx.log(mx.sum(x, axis=a, keepdims=k)), 18, _NEG_INF),
    "ReduceLogSumExp": (lambda x, a, k: mx.logsumexp(x, axis=a, keepdims=k), 18, _NEG_INF),
}
for _name, (_body, _from, _empty) in _REDUCTIONS.items():
    register(_name, ("axes", "keepdims", "noop_with_empty_axes"))(_reduction(_body, _from, _empty))


def _arg(fn_name):
    def fn(ctx, ins):
        x = to_mx(ins[0])
        axis = norm_axis(ctx.get("axis", 0), x.ndim)
        keep = bool(ctx.get("keepdims", 1))
        f = getattr(mx, fn_name)
        if ctx.get("select_last_index", 0):
            n = x.shape[axis]
            flipped = x[(slice(None),) * axis + (slice(None, None, -1),)]
            idx = (n - 1) - f(flipped, axis=axis, keepdims=keep).astype(mx.int64)
        else:
            idx = f(x, axis=axis, keepdims=keep)
        return [idx.astype(mx.int64)]

    return fn


register("ArgMax", ("axis", "keepdims", "select_last_index"))(_arg("argmax"))
register("ArgMin", ("axis", "keepdims", "select_last_index"))(_arg("argmin"))

# --- softmax family -------------------------------------------------------------------


def _hardmax(x, axis):
    idx = mx.argmax(x, axis=axis, keepdims=True)
    pos = mx.arange(x.shape[axis]).reshape([-1 if i == axis else 1 for i in range(x.ndim)])
    return (pos == idx).astype(x.dtype)


def _softmax_like(fn):
    def op(ctx, ins):
        x = to_mx(ins[0])
        if ctx.opset >= 13:
            return [fn(_up(x), norm_axis(ctx.get("axis", -1), x.ndim)).astype(x.dtype)]
        # opset < 13: coerce to 2-D at `axis` (default 1), then back
        axis = norm_axis(ctx.get("axis", 1), x.ndim)
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return [fn(_up(flat), 1).reshape(x.shape).astype(x.dtype)]

    return op


register("Softmax", ("axis",))(_softmax_like(lambda x, axis: mx.softmax(x, axis=axis)))
register("LogSoftmax", ("axis",))(
    _softmax_like(lambda x, axis: x - mx.logsumexp(x, axis=axis, keepdims=True))
)
register("Hardmax", ("axis",))(_softmax_like(_hardmax))

# --- cumulative --------------------------------------------------------------------------


def _cumulative(mx_fn):
    def fn(ctx, ins):
        x = to_mx(ins[0])
        axis = norm_axis(ints(ins[1])[0], x.ndim)
        return [
            mx_fn(
                x, axis=axis, reverse=bool(ctx.get("reverse", 0)),
                inclusive=not ctx.get("exclusive", 0),
            ).astype(x.dtype)
        ]

    return fn


register("CumSum", ("exclusive", "reverse"))(_cumulative(mx.cumsum))
register("CumProd", ("exclusive", "reverse"))(_cumulative(mx.cumprod))

# --- matrix products --------------------------------------------------------------------


def _matmul(a, b):
    """MatMul for any numeric type (MLX multiplies floats only; int64 goes through float64)."""
    if is_int(a.dtype):
        return mx.matmul(a.astype(mx.float64), b.astype(mx.float64)).astype(a.dtype)
    return mx.matmul(a, b)


@register("MatMul")
def _matmul_op(ctx, ins):
    xp, (a, b) = xp_of(*ins)
    return [np.matmul(a, b) if xp is np else _matmul(a, b)]


@register("MatMulInteger")
def _matmul_integer(ctx, ins):
    a, b = to_mx(ins[0]).astype(mx.int32), to_mx(ins[1]).astype(mx.int32)
    if opt(ins, 2) is not None:
        a = a - to_mx(ins[2]).astype(mx.int32)
    if opt(ins, 3) is not None:
        b = b - to_mx(ins[3]).astype(mx.int32)
    return [_matmul(a, b)]


@register("Gemm", ("alpha", "beta", "transA", "transB"))
def _gemm(ctx, ins):
    xp, (a, b, c) = xp_of(ins[0], ins[1], opt(ins, 2))
    if ctx.get("transA", 0):
        a = a.T
    if ctx.get("transB", 0):
        b = b.T
    y = np.matmul(a, b) if xp is np else _matmul(a, b)
    alpha, beta = ctx.get("alpha", 1.0), ctx.get("beta", 1.0)
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        y = y + (c * beta if beta != 1.0 else c)
    return [y.astype(a.dtype)]


@register("Einsum", ("equation",))
def _einsum(ctx, ins):
    eq = ctx.sget("equation").replace(" ", "")
    vals = [to_mx(v) for v in ins]
    dt = vals[0].dtype
    if is_int(dt):
        vals = [v.astype(mx.float64) for v in vals]
    return [mx.einsum(eq, *vals).astype(dt)]


