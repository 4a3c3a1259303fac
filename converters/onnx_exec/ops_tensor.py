"""Indexing ops: gathers, scatters, TopK, NonZero, Compress, OneHot, Trilu, Unique.

Gathers run in MLX. Ops whose output shape depends on the values (NonZero,
Compress, Unique) and the scatters with duplicate-index reductions run on
the evaluated values in numpy: there is no lazy graph to keep for them.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from edgelstm.converters.onnx_exec.ops import (
    ints,
    is_np,
    norm_axis,
    np_dtype,
    opt,
    register,
    to_mx,
    to_np,
)


def _fix_neg(idx, n):
    return mx.where(idx < 0, idx + n, idx)


@register("Gather", ("axis",))
def _gather(ctx, ins):
    x, idx = ins
    axis = norm_axis(ctx.get("axis", 0), x.ndim)
    if is_np(x) and is_np(idx):
        return [np.take(x, idx.astype(np.int64), axis=axis)]
    idx = _fix_neg(to_mx(idx), x.shape[axis])
    return [mx.take(to_mx(x), idx, axis=axis)]


@register("GatherElements", ("axis",))
def _gather_elements(ctx, ins):
    x, idx = to_mx(ins[0]), to_mx(ins[1])
    axis = norm_axis(ctx.get("axis", 0), x.ndim)
    return [mx.take_along_axis(x, _fix_neg(idx, x.shape[axis]), axis=axis)]


@register("GatherND", ("batch_dims",))
def _gather_nd(ctx, ins):
    x, idx = to_np(ins[0]), to_np(ins[1]).astype(np.int64)
    b = ctx.get("batch_dims", 0)
    bshape = x.shape[:b]
    xb = x.reshape((-1,) + x.shape[b:])
    ib = idx.reshape((-1,) + idx.shape[b:])
    k = idx.shape[-1]
    outs = []
    for xi, ii in zip(xb, ib, strict=True):
        flat = ii.reshape(-1, k)
        outs.append(np.stack([xi[tuple(r)] for r in flat]).reshape(ii.shape[:-1] + xi.shape[k:]))
    out = np.stack(outs) if outs else np.zeros((0,), x.dtype)
    return [out.reshape(bshape + out.shape[1:])]


_REDUCERS = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


@register("ScatterND", ("reduction",))
def _scatter_nd(ctx, ins):
    x, idx, upd = to_np(ins[0]).copy(), to_np(ins[1]).astype(np.int64), to_np(ins[2])
    red = ctx.sget("reduction", "none")
    if red != "none" and red not in _REDUCERS:
        raise ctx.unsupported(f"attribute 'reduction' = {red!r}")
    k = idx.shape[-1]
    flat_i = idx.reshape(-1, k)
    flat_u = upd.reshape((-1,) + upd.shape[idx.ndim - 1:])
    for r, u in zip(flat_i, flat_u, strict=True):
        t = tuple(r)
        x[t] = u if red == "none" else _REDUCERS[red](x[t], u)
    return [x]


@register("ScatterElements", ("axis", "reduction"))
def _scatter_elements(ctx, ins):
    x, idx, upd = to_np(ins[0]).copy(), to_np(ins[1]).astype(np.int64), to_np(ins[2])
    axis = norm_axis(ctx.get("axis", 0), x.ndim)
    red = ctx.sget("reduction", "none")
    if red != "none" and red not in _REDUCERS:
        raise ctx.unsupported(f"attribute 'reduction' = {red!r}")
    idx = np.where(idx < 0, idx + x.shape[axis], idx)
    grid = list(np.indices(idx.shape))
    grid[axis] = idx
    where = tuple(grid)
    if red == "none":
        x[where] = upd
    else:
        _REDUCERS[red].at(x, where, upd)  # applies duplicates in order
    return [x]


@register("NonZero")
def _nonzero(ctx, ins):
    x = to_np(ins[0])
    return [np.array(np.nonzero(x if x.ndim else x.reshape(1)), dtype=np.int64)]


@register("Compress", ("axis",))
def _compress(ctx, ins):
    x, cond = to_np(ins[0]), to_np(ins[1]).astype(bool)
    axis = ctx.get("axis")
    return [np.compress(cond, x, axis=None if axis is None else norm_axis(axis, x.ndim))]


@register("OneHot", ("axis",))
def _one_hot(ctx, ins):
    idx, depth, values = to_mx(ins[0]), int(to_np(ins[1]).reshape(-1)[0]), to_mx(ins[2])
    axis = ctx.get("axis", -1)
    out_ndim = idx.ndim + 1
    axis = norm_axis(axis, out_ndim)
    idx = mx.where(idx < 0, idx + depth, idx)
    pos = mx.arange(depth).reshape([-1 if i == axis else 1 for i in range(out_ndim)])
    hot = mx.expand_dims(idx, axis) == pos
    return [mx.where(hot, values[1], values[0])]


@register("Trilu", ("upper",))
def _trilu(ctx, ins):
    x = to_mx(ins[0])
    k = int(to_np(ins[1]).reshape(-1)[0]) if opt(ins, 1) is not None else 0
    n, m = x.shape[-2], x.shape[-1]
    r = mx.arange(n).reshape(-1, 1)
    c = mx.arange(m).reshape(1, -1)
    keep = (c - r >= k) if ctx.get("upper", 1) else (c - r <= k)
    return [mx.where(keep, x, mx.zeros_like(x))]


@register("TopK", ("axis", "largest", "sorted"))
def _topk(ctx, ins):
    x = to_np(ins[0])
    k = ints(ins[1])[0]
    axis = norm_axis(ctx.get("axis", -1), x.ndim)
    largest = ctx.get("largest", 1)
    if not ctx.get("sorted", 1):
        raise ctx.unsupported("attribute 'sorted' = 0")
    # stable sort on (value, index): ties keep the lower index first, as ONNX requires
    key = -x if largest else x
    if x.dtype.kind == "u" and largest:
        key = np.iinfo(x.dtype).max - x
    order = np.argsort(key, axis=axis, kind="stable")
    idx = np.take(order, np.arange(k), axis=axis)
    return [np.take_along_axis(x, idx, axis=axis), idx.astype(np.int64)]


@register("Unique", ("axis", "sorted"))
def _unique(ctx, ins):
    x = to_np(ins[0])
    axis = ctx.get("axis")
    axis = None if axis is None else norm_axis(axis, x.ndim)
    vals, first, inverse, counts = np.unique(
        x, return_index=True, return_inverse=True, return_counts=True, axis=axis
    )
    if not ctx.get("sorted", 1):  # order of first occurrence
        order = np.argsort(first, kind="stable")
        remap = np.empty_like(order)
        remap[order] = np.arange(len(order))
        vals = np.take(vals, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], remap[inverse.reshape(-1)]
    return [vals, first.astype(np.int64), inverse.reshape(-1).astype(np.int64),
            counts.astype(np.int64)]


@register("ReverseSequence", ("batch_axis", "time_axis"))
def _reverse_sequence(ctx, ins):
    x, lens = to_np(ins[0]).copy(), ints(ins[1])
    b, t = ctx.get("batch_axis", 1), ctx.get("time_axis", 0)
    out = x.copy()
    for i, n in enumerate(lens):
        src = [slice(None)] * x.ndim
        src[b], src[t] = i, slice(0, n)
        dst = list(src)
        dst[t] = slice(n - 1, None, -1) if n else slice(0, 0)
        out[tuple(src)] = x[tuple(dst)] if n else out[tuple(src)]
    return [out]


@register("Det")
def _det(ctx, ins):
    x = to_np(ins[0])
    return [np.linalg.det(x.astype(np.float64)).astype(np.dtype(np_dtype(x.dtype)))]
