"""Shape and data-movement ops: reshape family, slicing, padding, tiling, casts, constants.

Shape arithmetic on static values stays in numpy (the runner folds it at
load time); anything fed from a graph input runs in MLX.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from onnx import numpy_helper

from edgelstm.converters.onnx_exec.ops import (
    DTYPES,
    check_type,
    ints,
    is_np,
    mx_dtype,
    norm_axes,
    norm_axis,
    np_dtype,
    opt,
    register,
    to_mx,
    to_np,
    xp_of,
)
from edgelstm.errors import DataError


@register("Identity")
def _identity(ctx, ins):
    return [ins[0]]


@register("Dropout", ("seed", "ratio"))
def _dropout(ctx, ins):
    # inference: identity; training_mode (input 2) true would need randomness
    if opt(ins, 2) is not None and bool(to_np(ins[2])):
        raise ctx.unsupported("training_mode=True")
    x = ins[0]
    xp = np if is_np(x) else mx
    return [x, xp.ones(x.shape, dtype=np.bool_ if xp is np else mx.bool_)]


@register("Shape", ("start", "end"))
def _shape(ctx, ins):
    shape = list(ins[0].shape)
    start, end = ctx.get("start", 0), ctx.get("end", None)
    return [np.array(shape[slice(start, end)], dtype=np.int64)]


@register("Size")
def _size(ctx, ins):
    return [np.array(int(np.prod(ins[0].shape)), dtype=np.int64)]


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
    axis = norm_axis(ctx.get("axis", 1), x.ndim)
    xp, (x,) = xp_of(x)
    return [xp.reshape(x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))]


@register("Squeeze", ("axes",))
def _squeeze(ctx, ins):
    x = ins[0]
    axes = (ints(ins[1]) if opt(ins, 1) is not None else None) if ctx.opset >= 13 else ctx.get("axes")
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    xp, (x,) = xp_of(x)
    return [xp.squeeze(x, axis=tuple(norm_axes(axes, x.ndim)))]


@register("Unsqueeze", ("axes",))
def _unsqueeze(ctx, ins):
    x = ins[0]
    axes = ints(ins[1]) if ctx.opset >= 13 else list(ctx.get("axes"))
    out_ndim = x.ndim + len(axes)
    xp, (x,) = xp_of(x)
    for a in norm_axes(axes, out_ndim):
        x = xp.expand_dims(x, a)
    return [x]


@register("Concat", ("axis",))
def _concat(ctx, ins):
    xp, vals = xp_of(*ins)
    return [xp.concatenate(vals, axis=ctx.get("axis"))]


@register("Split", ("axis", "split", "num_outputs"))
def _split(ctx, ins):
    x = ins[0]
    axis = norm_axis(ctx.get("axis", 0), x.ndim)
    n_out = len(ctx.node.output)
    if ctx.opset >= 13:
        sizes = ints(ins[1]) if opt(ins, 1) is not None else None
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
        axes = ints(ins[3]) if opt(ins, 3) is not None else None
        steps = ints(ins[4]) if opt(ins, 4) is not None else None
    else:
        starts, ends = list(ctx.get("starts")), list(ctx.get("ends"))
        axes, steps = ctx.get("axes"), None
    axes = list(range(len(starts))) if axes is None else [norm_axis(a, x.ndim) for a in axes]
    steps = steps or [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for a, s, e, st in zip(axes, starts, ends, steps, strict=False):
        d = x.shape[a]
        # Python slicing clamps like ONNX; pre-clamp so huge sentinels fit MLX's int32
        idx[a] = slice(min(max(s, -d - 1), d), min(max(e, -d - 1), d), st)
    return [x[tuple(idx)]]


@register("Expand")
def _expand(ctx, ins):
    x, shape = ins[0], ints(ins[1])
    out = np.broadcast_shapes(tuple(x.shape), tuple(shape))
    xp, (x,) = xp_of(x)
    return [xp.broadcast_to(x, out)]


@register("Tile")
def _tile(ctx, ins):
    xp, (x,) = xp_of(ins[0])
    return [xp.tile(x, ints(ins[1]))]


@register("Range")
def _range(ctx, ins):
    start, limit, delta = (to_np(v).item() for v in ins)
    dt = to_np(ins[0]).dtype
    n = max(int(np.ceil((limit - start) / delta)), 0)
    # start + i*delta (not np.arange's accumulation), as the ONNX definition
    return [(start + np.arange(n) * delta).astype(dt)]


@register("EyeLike", ("dtype", "k"))
def _eye_like(ctx, ins):
    x = ins[0]
    t = ctx.get("dtype")
    dt = DTYPES[t][0] if t else np_dtype(x.dtype)
    return [np.eye(x.shape[0], x.shape[1], k=ctx.get("k", 0), dtype=dt)]


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


def _cast_to(x, np_dt):
    if is_np(x):
        return x.astype(np_dt)
    if np.dtype(np_dt) == np.bool_:
        return x != 0
    return x.astype(mx_dtype(np_dt))  # float -> int truncates toward zero, as C


@register("Cast", ("to", "saturate", "round_mode"))
def _cast(ctx, ins):
    to = ctx.get("to")
    check_type(to, f"{ctx.label}: attribute 'to'")
    return [_cast_to(ins[0], DTYPES[to][0])]


@register("CastLike", ("saturate", "round_mode"))
def _cast_like(ctx, ins):
    return [_cast_to(ins[0], np_dtype(ins[1].dtype))]


# --- padding --------------------------------------------------------------------------


def _pad_index(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """Source index of each output position along one axis for edge/reflect/wrap."""
    i = np.arange(-lo, n + hi)
    if mode == "edge":
        return np.clip(i, 0, n - 1)
    if mode == "wrap":
        return i % n
    period = 2 * (n - 1)  # reflect without repeating the edge
    i = np.abs(i) % period if period else np.zeros_like(i)
    return np.where(i > n - 1, period - i, i)


@register("Pad", ("mode", "pads", "value"))
def _pad(ctx, ins):
    x = to_mx(ins[0])
    mode = ctx.sget("mode", "constant")
    if ctx.opset >= 11:
        pads = ints(ins[1])
        value = opt(ins, 2)
        value = 0 if value is None or to_np(value).size == 0 else to_np(value).item()
        axes = ints(ins[3]) if opt(ins, 3) is not None else list(range(x.ndim))
    else:
        pads, value, axes = list(ctx.get("pads")), ctx.get("value", 0.0), list(range(x.ndim))
    axes = [norm_axis(a, x.ndim) for a in axes]
    k = len(axes)
    widths = {a: (pads[i], pads[i + k]) for i, a in enumerate(axes)}
    if mode not in ("constant", "edge", "reflect", "wrap"):
        raise ctx.unsupported(f"attribute 'mode' = {mode!r}")
    for a, (lo, hi) in widths.items():
        n = x.shape[a]
        if mode == "constant":
            # negative pads crop; positive ones pad with the value
            x = x[(slice(None),) * a + (slice(max(-lo, 0), n - max(-hi, 0)),)]
            w = [(0, 0)] * x.ndim
            w[a] = (max(lo, 0), max(hi, 0))
            x = mx.pad(x, w, constant_values=mx.array(value, x.dtype))
        elif lo or hi:
            # ONNX Runtime refuses these rather than extend the signal periodically
            # (numpy's choice); a silent difference would only surface downstream.
            kept = n + min(lo, 0) + min(hi, 0)  # negative pads crop first
            if kept <= 0 and max(lo, hi) > 0:
                raise DataError(f"{ctx.label}: mode {mode!r} cannot pad the empty axis {a}")
            if mode == "reflect" and max(lo, hi) > kept - 1:
                raise DataError(f"{ctx.label}: 'reflect' by {max(lo, hi)} on axis {a} of "
                                f"length {kept} (at most {kept - 1}); is the input too short?")
            x = mx.take(x, mx.array(_pad_index(n, lo, hi, mode).astype(np.int32)), axis=a)
    return [x]


# --- space/depth ---------------------------------------------------------------------


@register("DepthToSpace", ("blocksize", "mode"))
def _depth_to_space(ctx, ins):
    x = to_mx(ins[0])
    b, (n, c, h, w) = ctx.get("blocksize"), x.shape
    if ctx.sget("mode", "DCR") == "DCR":
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return [y.reshape(n, c // (b * b), h * b, w * b)]


@register("SpaceToDepth", ("blocksize", "mode"))
def _space_to_depth(ctx, ins):
    x = to_mx(ins[0])
    b, (n, c, h, w) = ctx.get("blocksize"), x.shape
    mode = ctx.sget("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise ctx.unsupported(f"attribute 'mode' = {mode!r}")
    y = x.reshape(n, c, h // b, b, w // b, b)
    y = y.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else y.transpose(0, 1, 3, 5, 2, 4)
    return [y.reshape(n, c * b * b, h // b, w // b)]
