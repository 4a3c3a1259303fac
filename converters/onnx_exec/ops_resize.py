"""``Resize`` (opset 11-19): nearest, linear and cubic, every coordinate mode, antialias.

Resize is separable, so it runs one axis at a time in the order ONNX's
reference does (``axes`` as given, else every axis in order), each axis as a
gather of ``n`` neighbour taps and a weighted sum over them. Taps, weights and
the positions that extrapolate (``tf_crop_and_resize``) are computed on the
host in float64 exactly as ``onnx.reference``'s ``Resize`` computes them;
only the gather and the weighted sum run in MLX (float32; float16/bfloat16
inputs are upcast for the sum and cast back). ``nearest`` is a pure gather,
so it is exact for every dtype; ``linear``/``cubic`` need float input.

Refused by name: Resize-10 (its own coordinate rules), ``antialias`` with
``nearest``, ``linear``/``cubic`` on integer tensors (ONNX leaves their
rounding to the runtime), and both ``scales`` and ``sizes`` given.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from edgelstm.converters.onnx_exec.ops import is_float, norm_axis, opt, register, to_mx, to_np
from edgelstm.errors import ConversionError

_ATTRS = ("antialias", "axes", "coordinate_transformation_mode", "cubic_coeff_a",
          "exclude_outside", "extrapolation_value", "keep_aspect_ratio_policy", "mode",
          "nearest_mode")
_COORD = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
          "asymmetric", "tf_crop_and_resize")
_NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


# --- per-position coefficients, as onnx.reference.ops.op_resize ----------------------


def _nearest(ratio: float, mode: str) -> np.ndarray:
    if float(ratio).is_integer():
        return np.array([0.0, 1.0])
    if mode == "round_prefer_floor":
        return np.array([ratio <= 0.5, ratio > 0.5], np.float64)
    if mode == "round_prefer_ceil":
        return np.array([ratio < 0.5, ratio >= 0.5], np.float64)
    return np.array([1.0, 0.0]) if mode == "floor" else np.array([0.0, 1.0])


def _cubic(ratio: float, A: float) -> np.ndarray:
    r = ratio
    return np.array([
        ((A * (r + 1) - 5 * A) * (r + 1) + 8 * A) * (r + 1) - 4 * A,
        ((A + 2) * r - (A + 3)) * r * r + 1,
        ((A + 2) * (1 - r) - (A + 3)) * (1 - r) * (1 - r) + 1,
        ((A * ((1 - r) + 1) - 5 * A) * ((1 - r) + 1) + 8 * A) * ((1 - r) + 1) - 4 * A,
    ])


def _cubic_aa(ratio: float, scale: float, A: float) -> np.ndarray:
    scale = min(scale, 1.0)

    def k(x: float) -> float:
        x = abs(x)
        x2, x3 = x * x, x * x * x
        if x <= 1:
            return (A + 2) * x3 - (A + 3) * x2 + 1
        if x < 2:
            return A * x3 - 5 * A * x2 + 8 * A * x - 4 * A
        return 0.0

    start = int(np.floor(-2 / scale) + 1)
    c = np.array([k(scale * (i - ratio)) for i in range(start, 2 - start)])
    return c / sum(c)


def _linear_aa(ratio: float, scale: float) -> np.ndarray:
    scale = min(scale, 1.0)
    start = int(np.floor(-1 / scale) + 1)
    args = (np.arange(start, start + 2 - 2 * start) - ratio) * scale
    c = np.clip(1 - np.abs(args), 0, 1)
    return c / sum(c)


def _coeff_fn(ctx):
    mode = ctx.sget("mode", "nearest")
    aa = bool(ctx.get("antialias", 0))
    if mode == "nearest":
        if aa:
            raise ctx.unsupported("attribute 'antialias' = 1 with mode 'nearest'")
        nm = ctx.sget("nearest_mode", "round_prefer_floor")
        if nm not in _NEAREST:
            raise ctx.unsupported(f"attribute 'nearest_mode' = {nm!r}")
        return lambda r, s: _nearest(r, nm)
    A = float(ctx.get("cubic_coeff_a", -0.75))
    if mode == "linear":
        return _linear_aa if aa else (lambda r, s: np.array([1 - r, r]))
    if mode == "cubic":
        return (lambda r, s: _cubic_aa(r, s, A)) if aa else (lambda r, s: _cubic(r, A))
    raise ctx.unsupported(f"attribute 'mode' = {mode!r}")


def _source_coords(mode, y, scale, in_w, out_w, out_int, roi):
    """Source coordinate of every output position, and which extrapolate (or None)."""
    extra = None
    if mode == "align_corners":
        x = np.zeros(out_int) if out_w == 1 else y * (in_w - 1) / (out_w - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        if out_w == 1:
            x = np.full(out_int, (roi[1] - roi[0]) * (in_w - 1) / 2)
        else:
            x = y * (roi[1] - roi[0]) * (in_w - 1) / (out_w - 1)
        x = x + roi[0] * (in_w - 1)
        extra = (x < 0) | (x > in_w - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_int, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        offset = in_w / 2 * (1 - out_int / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    return x, extra


def axis_taps(coeffs, coord_mode, in_w, out_int, scale, roi, exclude_outside):
    """Taps of one axis: ``idx (out, n)`` in ``[0, in_w)``, ``w (out, n)`` float64, mask.

    ``mask`` (``(out,)`` bool or None) marks positions that take the
    extrapolation value instead.
    """
    y = np.arange(out_int, dtype=np.float64)
    x, extra = _source_coords(coord_mode, y, scale, in_w, scale * in_w, out_int, roi)
    x_int = np.floor(x).astype(np.int64)
    ratios = np.where(x == x_int, 1.0, x - x_int)  # prefer the left pixel: ratio in (0, 1]
    w = np.stack([np.asarray(coeffs(float(r), scale), np.float64) for r in ratios])
    n = w.shape[1]
    pad = int(np.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        off = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        off = np.where(frac <= 0.5, base, base + 1)
    idx = (p + off)[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_w), 0.0, w)
        total = w.sum(axis=-1, keepdims=True)
        w = w / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_w - 1), w, (extra if extra is not None and extra.any() else None)


def _plan(ctx, shape, roi, scales, sizes):
    """Per resized axis: (axis, output size, scale, roi pair)."""
    r = len(shape)
    axes = [norm_axis(a, r) for a in ctx.get("axes", [])] or list(range(r))
    if len(set(axes)) != len(axes):
        raise ConversionError(f"{ctx.label}: attribute 'axes' repeats an axis: {axes}")
    n = len(axes)
    if roi is not None and roi.size and roi.size != 2 * n:
        raise ConversionError(f"{ctx.label}: roi has {roi.size} values, needs {2 * n}")
    roi_pairs = [None] * n if roi is None or not roi.size else [
        (float(roi[i]), float(roi[n + i])) for i in range(n)]
    in_sizes = [shape[a] for a in axes]
    if sizes is not None:
        if len(sizes) != n:
            raise ConversionError(f"{ctx.label}: 'sizes' has {len(sizes)} values for {n} axes")
        factors = [s / i for s, i in zip(sizes, in_sizes, strict=True)]
        policy = ctx.sget("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            outs = [int(s) for s in sizes]
        elif policy in ("not_larger", "not_smaller"):
            s = min(factors) if policy == "not_larger" else max(factors)
            factors = [s] * n
            outs = [int(s * i + 0.5) for i in in_sizes]
        else:
            raise ctx.unsupported(f"attribute 'keep_aspect_ratio_policy' = {policy!r}")
    else:
        if len(scales) != n:
            raise ConversionError(f"{ctx.label}: 'scales' has {len(scales)} values for {n} axes")
        if (scales <= 0).any():
            raise ConversionError(f"{ctx.label}: scales must be positive, got {scales.tolist()}")
        factors = [float(s) for s in scales]
        outs = [int(v) for v in (scales * np.array(in_sizes))]
    return [(a, o, f, rp) for a, o, f, rp in zip(axes, outs, factors, roi_pairs, strict=True)]


def _resize_axis(x, axis, idx, w, mask, extrapolation, nearest):
    in_shape = list(x.shape)
    out_n, n = idx.shape
    if nearest:  # one-hot weights: a pure gather, exact in any dtype
        pick = idx[np.arange(out_n), np.argmax(w, axis=1)]
        return mx.take(x, mx.array(pick.astype(np.int32)), axis=axis)
    g = mx.take(x, mx.array(idx.reshape(-1).astype(np.int32)), axis=axis)
    g = g.reshape(in_shape[:axis] + [out_n, n] + in_shape[axis + 1:])
    wshape = [1] * axis + [out_n, n] + [1] * (x.ndim - axis - 1)
    y = (g * mx.array(w.reshape(wshape), dtype=x.dtype)).sum(axis=axis + 1)
    if mask is not None:
        mshape = [1] * axis + [out_n] + [1] * (x.ndim - axis - 1)
        y = mx.where(mx.array(mask.reshape(mshape)), mx.array(extrapolation, x.dtype), y)
    return y


@register("Resize", _ATTRS)
def _resize(ctx, ins):
    if ctx.opset < 11:
        raise ctx.unsupported("Resize-10 (opset < 11)")
    x = to_mx(ins[0])
    roi, scales, sizes = (opt(ins, i) for i in (1, 2, 3))
    roi = None if roi is None else to_np(roi).astype(np.float64).reshape(-1)
    scales = None if scales is None or not np.size(scales) else to_np(scales).reshape(-1)
    sizes = None if sizes is None or not np.size(sizes) else to_np(sizes).reshape(-1)
    if (scales is None) == (sizes is None):
        raise ConversionError(f"{ctx.label}: exactly one of 'scales' and 'sizes' must be given")
    mode = ctx.sget("mode", "nearest")
    coeffs = _coeff_fn(ctx)
    coord = ctx.sget("coordinate_transformation_mode", "half_pixel")
    if coord not in _COORD or (coord == "half_pixel_symmetric" and ctx.opset < 19):
        raise ctx.unsupported(f"attribute 'coordinate_transformation_mode' = {coord!r}")
    nearest = mode == "nearest"
    dt = x.dtype
    if not nearest:
        if not is_float(dt):
            raise ctx.unsupported(f"mode {mode!r} on {dt} input (integer rounding)")
        if dt in (mx.float16, mx.bfloat16):
            x = x.astype(mx.float32)
    if coord == "tf_crop_and_resize" and roi is None:
        raise ConversionError(f"{ctx.label}: tf_crop_and_resize needs the 'roi' input")
    extrapolation = float(ctx.get("extrapolation_value", 0.0))
    exclude = bool(ctx.get("exclude_outside", 0))
    for axis, out, scale, rp in _plan(ctx, list(x.shape), roi, scales, sizes):
        if math.isclose(scale, 1.0) and out == x.shape[axis] and (
                rp is None or (math.isclose(rp[0], 0.0) and math.isclose(rp[1], 1.0))):
            continue  # identity along this axis, as the reference skips it
        if out == 0 or x.shape[axis] == 0:
            shape = list(x.shape)
            shape[axis] = out
            x = mx.zeros(shape, x.dtype)
            continue
        idx, w, mask = axis_taps(coeffs, coord, x.shape[axis], out, scale,
                                 rp if coord == "tf_crop_and_resize" else None, exclude)
        x = _resize_axis(x, axis, idx, w, mask, extrapolation, nearest)
    return [x.astype(dt)]
