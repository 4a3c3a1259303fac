"""Convolution, pooling and normalisation ops (NCHW-style layouts, 1-D to 3-D).

MLX convolves channels-last, so ``Conv`` moves channels to the end, pads
explicitly (asymmetric and ``auto_pad`` padding included) and calls
``mx.conv_general``; pooling gathers the strided window taps and reduces them.
"""

from __future__ import annotations

import itertools
import math

import mlx.core as mx
import numpy as np

from edgelstm.converters.onnx_exec.ops import is_np, norm_axis, opt, register, to_mx

_CONV = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _up(x):
    return x.astype(mx.float32) if x.dtype in (mx.float16, mx.bfloat16) else x


def _auto_pads(ctx, in_sp, k, s, d, ceil=False):
    """(lo, hi) pads per spatial axis from ``pads`` or ``auto_pad``."""
    n = len(in_sp)
    mode = ctx.sget("auto_pad", "NOTSET")
    if mode in ("NOTSET", ""):
        p = list(ctx.get("pads", [0] * 2 * n))
        return list(zip(p[:n], p[n:], strict=True))
    if mode == "VALID":
        return [(0, 0)] * n
    if mode not in ("SAME_UPPER", "SAME_LOWER"):
        raise ctx.unsupported(f"attribute 'auto_pad' = {mode!r}")
    out = []
    for i in range(n):
        o = -(-in_sp[i] // s[i])
        total = max((o - 1) * s[i] + (k[i] - 1) * d[i] + 1 - in_sp[i], 0)
        lo = total // 2 if mode == "SAME_UPPER" else total - total // 2
        out.append((lo, total - lo))
    return out


def _last(x):
    """(N, C, *sp) -> (N, *sp, C)."""
    return mx.moveaxis(x, 1, -1)


def _first(x):
    return mx.moveaxis(x, -1, 1)


def _static_weights(ctx, ins, n_sp):
    """Channels-last float weight and broadcastable bias, converted once when static.

    Built in numpy so the cached arrays are plain constants (never part of a trace).
    """
    w, b = ins[1], opt(ins, 2)
    static = len(ctx.static) > 1 and ctx.static[1] and is_np(w) and (
        b is None or (len(ctx.static) > 2 and ctx.static[2] and is_np(b)))
    if not static:
        wl = _last(_up(to_mx(w)))
        return wl, None if b is None else to_mx(b).reshape([-1] + [1] * n_sp)
    if "w" not in ctx.cache:
        wn = np.asarray(w)
        if wn.dtype != np.float64 and wn.dtype != np.float32:
            wn = wn.astype(np.float32)
        ctx.cache["w"] = to_mx(np.ascontiguousarray(np.moveaxis(wn, 1, -1)))
        ctx.cache["b"] = None if b is None else to_mx(np.asarray(b).reshape([-1] + [1] * n_sp))
    return ctx.cache["w"], ctx.cache["b"]


@register("Conv", _CONV)
def _conv(ctx, ins):
    x = to_mx(ins[0])
    n_sp = x.ndim - 2
    wl, b = _static_weights(ctx, ins, n_sp)
    k = list(ctx.get("kernel_shape") or wl.shape[1:-1])
    s = list(ctx.get("strides", [1] * n_sp))
    d = list(ctx.get("dilations", [1] * n_sp))
    pads = _auto_pads(ctx, x.shape[2:], k, s, d)
    dt = x.dtype
    xl = _last(_up(x))
    if all(lo >= 0 and hi >= 0 for lo, hi in pads):  # the conv pads: no padded copy
        padding = ([lo for lo, _ in pads], [hi for _, hi in pads])
    else:
        xl, padding = mx.pad(xl, [(0, 0)] + pads + [(0, 0)]), 0
    y = mx.conv_general(xl, wl, stride=s, padding=padding, kernel_dilation=d,
                        groups=ctx.get("group", 1))
    y = _first(y)
    if b is not None:
        y = y + b.astype(y.dtype)
    return [y if y.dtype == dt else y.astype(dt)]


@register("ConvTranspose", (*_CONV, "output_padding", "output_shape"))
def _conv_transpose(ctx, ins):
    x, w, b = to_mx(ins[0]), to_mx(ins[1]), opt(ins, 2)
    n_sp, g = x.ndim - 2, ctx.get("group", 1)
    cin, cout_g = w.shape[0], w.shape[1]
    k = list(ctx.get("kernel_shape") or w.shape[2:])
    s = list(ctx.get("strides", [1] * n_sp))
    d = list(ctx.get("dilations", [1] * n_sp))
    op = list(ctx.get("output_padding", [0] * n_sp))
    in_sp = x.shape[2:]
    full = [(in_sp[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 + op[i] for i in range(n_sp)]
    shape = ctx.get("output_shape")
    mode = ctx.sget("auto_pad", "NOTSET")
    # (start, length) of the output window in the full transposed-conv result
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        want = list(shape)[-n_sp:] if shape is not None else [in_sp[i] * s[i] for i in range(n_sp)]
        total = [full[i] - want[i] for i in range(n_sp)]
        lo = [t // 2 if mode == "SAME_UPPER" else t - t // 2 for t in total]
        window = list(zip(lo, want, strict=True))
    elif mode not in ("NOTSET", "", "VALID"):
        raise ctx.unsupported(f"attribute 'auto_pad' = {mode!r}")
    elif shape is not None:  # as the reference: no pads, cropped/zero-extended at the end
        window = [(0, w_) for w_ in list(shape)[-n_sp:]]
    else:
        p = list(ctx.get("pads", [0] * 2 * n_sp)) if mode != "VALID" else [0] * 2 * n_sp
        window = [(p[i], full[i] - p[i] - p[i + n_sp]) for i in range(n_sp)]
    # a transposed conv is a conv of the stride-dilated input with the flipped kernel
    wt = w.reshape(g, cin // g, cout_g, *k)
    wt = mx.moveaxis(wt, 1, 2).reshape(g * cout_g, cin // g, *k)
    wt = _last(_up(wt))
    xl = _last(_up(x))
    conv_pad = [(d[i] * (k[i] - 1), d[i] * (k[i] - 1) + op[i]) for i in range(n_sp)]
    y = mx.conv_general(
        xl, wt, padding=([p[0] for p in conv_pad], [p[1] for p in conv_pad]),
        kernel_dilation=d, input_dilation=s, groups=g, flip=True,
    )
    grow = [(0, 0)] + [(0, max(st + ln - full[i], 0)) for i, (st, ln) in enumerate(window)]
    y = mx.pad(y, grow + [(0, 0)])
    idx = [slice(None)] + [slice(st, st + ln) for st, ln in window]
    y = _first(y[tuple(idx + [slice(None)])])
    if b is not None:
        y = y + to_mx(b).reshape([-1] + [1] * n_sp)
    return [y.astype(x.dtype)]


# --- pooling ---------------------------------------------------------------------------


def _pool_windows(ctx, x, fill):
    """Window taps of a pooling node: list of arrays (N, C, *out_sp), and masks.

    Returns ``(taps, real, padded)``: each tap's values (``fill`` outside the
    input), and per tap whether it lies in the input / in input or explicit pads.
    """
    n_sp = x.ndim - 2
    k = list(ctx.get("kernel_shape"))
    s = list(ctx.get("strides", [1] * n_sp))
    d = list(ctx.get("dilations", [1] * n_sp))
    in_sp = x.shape[2:]
    pads = _auto_pads(ctx, in_sp, k, s, d)
    ceil = ctx.get("ceil_mode", 0)
    out_sp = []
    for i in range(n_sp):
        span = in_sp[i] + pads[i][0] + pads[i][1] - ((k[i] - 1) * d[i] + 1)
        o = (-(-span // s[i]) if ceil else span // s[i]) + 1
        if ceil and (o - 1) * s[i] >= in_sp[i] + pads[i][0]:
            o -= 1  # the last window must start inside the input or left pad
        out_sp.append(o)
    extra = [
        max((out_sp[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - (in_sp[i] + sum(pads[i])), 0)
        for i in range(n_sp)
    ]
    width = [(0, 0), (0, 0)] + [(pads[i][0], pads[i][1] + extra[i]) for i in range(n_sp)]
    xp = mx.pad(x, width, constant_values=mx.array(fill, x.dtype))
    ones = mx.ones((1, 1, *in_sp), mx.float32)
    real = mx.pad(ones, width)
    padded = mx.pad(mx.pad(ones, [(0, 0), (0, 0)] + pads, constant_values=1.0),
                    [(0, 0), (0, 0)] + [(0, e) for e in extra])
    taps, rm, pm = [], [], []
    for off in itertools.product(*[range(kk) for kk in k]):
        sl = tuple(
            slice(off[i] * d[i], off[i] * d[i] + (out_sp[i] - 1) * s[i] + 1, s[i])
            for i in range(n_sp)
        )
        idx = (slice(None), slice(None)) + sl
        taps.append(xp[idx])
        rm.append(real[idx])
        pm.append(padded[idx])
    return taps, rm, pm


@register("MaxPool", ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads",
                      "storage_order", "strides"))
def _max_pool(ctx, ins):
    x = to_mx(ins[0])
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        raise ctx.unsupported("the Indices output")
    fill = -np.inf if mx.issubdtype(x.dtype, mx.floating) else np.iinfo(np.dtype(
        str(x.dtype).split(".")[-1])).min
    taps, _, _ = _pool_windows(ctx, x, fill)
    y = taps[0]
    for t in taps[1:]:
        y = mx.maximum(y, t)
    return [y]


@register("AveragePool", ("auto_pad", "ceil_mode", "count_include_pad", "dilations",
                          "kernel_shape", "pads", "strides"))
def _avg_pool(ctx, ins):
    x = to_mx(ins[0])
    taps, real, padded = _pool_windows(ctx, _up(x), 0.0)
    masks = padded if ctx.get("count_include_pad", 0) else real
    total = sum(taps[1:], taps[0])
    count = sum(masks[1:], masks[0])
    return [(total / count).astype(x.dtype)]


@register("LpPool", ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "p", "pads",
                     "strides"))
def _lp_pool(ctx, ins):
    x = to_mx(ins[0])
    p = ctx.get("p", 2)
    taps, _, _ = _pool_windows(ctx, _up(x), 0.0)
    total = sum((mx.abs(t) ** p for t in taps[1:]), mx.abs(taps[0]) ** p)
    return [(total ** (1.0 / p)).astype(x.dtype)]


@register("GlobalAveragePool")
def _gap(ctx, ins):
    x = to_mx(ins[0])
    return [mx.mean(_up(x), axis=tuple(range(2, x.ndim)), keepdims=True).astype(x.dtype)]


@register("GlobalMaxPool")
def _gmp(ctx, ins):
    x = to_mx(ins[0])
    return [mx.max(x, axis=tuple(range(2, x.ndim)), keepdims=True)]


# --- normalisations ---------------------------------------------------------------------


def _chan(v, ndim):
    """A per-channel vector ``(C,)`` shaped to broadcast against ``(N, C, ...)``."""
    return to_mx(v).reshape([1, -1] + [1] * (ndim - 2))


@register("BatchNormalization", ("epsilon", "momentum", "spatial", "training_mode"))
def _batch_norm(ctx, ins):
    if ctx.get("training_mode", 0) or (len(ctx.node.output) > 1 and any(ctx.node.output[1:])):
        raise ctx.unsupported("training mode (running statistics outputs)")
    if ctx.opset < 7 or ctx.get("spatial", 1) != 1:
        raise ctx.unsupported("non-spatial (opset < 7) BatchNormalization")
    x = to_mx(ins[0])
    sc, b, m, v = (_chan(_up(to_mx(t)), x.ndim) for t in ins[1:5])
    eps = ctx.get("epsilon", 1e-5)
    y = (_up(x) - m) / mx.sqrt(v + eps) * sc + b
    return [y.astype(x.dtype)]


def _stats(x, axes, eps):
    mean = mx.mean(x, axis=axes, keepdims=True)
    var = mx.mean(mx.square(x - mean), axis=axes, keepdims=True)
    return mean, mx.rsqrt(var + eps)


@register("InstanceNormalization", ("epsilon",))
def _instance_norm(ctx, ins):
    x = to_mx(ins[0])
    xf = _up(x)
    mean, inv = _stats(xf, tuple(range(2, x.ndim)), ctx.get("epsilon", 1e-5))
    y = (xf - mean) * inv * _chan(_up(to_mx(ins[1])), x.ndim) + _chan(_up(to_mx(ins[2])), x.ndim)
    return [y.astype(x.dtype)]


@register("LayerNormalization", ("axis", "epsilon", "stash_type"))
def _layer_norm(ctx, ins):
    x = to_mx(ins[0])
    axis = norm_axis(ctx.get("axis", -1), x.ndim)
    stash = mx.float32 if ctx.get("stash_type", 1) == 1 else x.dtype
    xf = x.astype(stash) if x.dtype != mx.float64 else x
    mean, inv = _stats(xf, tuple(range(axis, x.ndim)), ctx.get("epsilon", 1e-5))
    y = (xf - mean) * inv
    y = y.astype(x.dtype) * to_mx(ins[1])
    if opt(ins, 2) is not None:
        y = y + to_mx(ins[2])
    return [y.astype(x.dtype), mean.astype(stash), inv.astype(stash)]


@register("GroupNormalization", ("epsilon", "num_groups", "stash_type"))
def _group_norm(ctx, ins):
    x = to_mx(ins[0])
    g = ctx.get("num_groups")
    n, c = x.shape[:2]
    xf = _up(x).reshape(n, g, -1)
    mean, inv = _stats(xf, (2,), ctx.get("epsilon", 1e-5))
    y = ((xf - mean) * inv).reshape(x.shape)
    sc, b = _up(to_mx(ins[1])), _up(to_mx(ins[2]))
    if ctx.opset < 21 and sc.shape[0] == g and g != c:  # opset 18: scale/bias per group
        sc, b = mx.repeat(sc, c // g), mx.repeat(b, c // g)
    y = y * _chan(sc, x.ndim) + _chan(b, x.ndim)
    return [y.astype(x.dtype)]


@register("RMSNormalization", ("axis", "epsilon", "stash_type"))
def _rms_norm(ctx, ins):
    x = to_mx(ins[0])
    axis = norm_axis(ctx.get("axis", -1), x.ndim)
    xf = x.astype(mx.float32) if x.dtype != mx.float64 else x
    ms = mx.mean(mx.square(xf), axis=tuple(range(axis, x.ndim)), keepdims=True)
    y = (xf * mx.rsqrt(ms + ctx.get("epsilon", 1e-5))).astype(x.dtype) * to_mx(ins[1])
    return [y.astype(x.dtype)]


@register("LpNormalization", ("axis", "p"))
def _lp_norm(ctx, ins):
    x = to_mx(ins[0])
    axis, p = ctx.get("axis", -1), ctx.get("p", 2)
    if p not in (1, 2):
        raise ctx.unsupported(f"attribute 'p' = {p}")
    xf = _up(x)
    norm = (mx.sum(mx.abs(xf), axis=axis, keepdims=True) if p == 1
            else mx.sqrt(mx.sum(xf * xf, axis=axis, keepdims=True)))
    return [mx.where(norm == 0, 0, xf / norm).astype(x.dtype)]


@register("MeanVarianceNormalization", ("axes",))
def _mvn(ctx, ins):
    x = to_mx(ins[0])
    axes = tuple(norm_axis(a, x.ndim) for a in ctx.get("axes", [0, 2, 3]))
    xf = _up(x)
    mean = mx.mean(xf, axis=axes, keepdims=True)
    var = mx.mean(xf * xf, axis=axes, keepdims=True) - mean * mean
    return [((xf - mean) / (mx.sqrt(var) + 1e-9)).astype(x.dtype)]


@register("LRN", ("alpha", "beta", "bias", "size"))
def _lrn(ctx, ins):
    x = to_mx(ins[0])
    size = ctx.get("size")
    alpha, beta, bias = ctx.get("alpha", 1e-4), ctx.get("beta", 0.75), ctx.get("bias", 1.0)
    sq = mx.square(_up(x))
    lo, hi = (size - 1) // 2, math.ceil((size - 1) / 2)
    padded = mx.pad(sq, [(0, 0), (lo, hi)] + [(0, 0)] * (x.ndim - 2))
    c = x.shape[1]
    total = sum(padded[:, i:i + c] for i in range(size))
    return [(_up(x) / (bias + alpha / size * total) ** beta).astype(x.dtype)]
