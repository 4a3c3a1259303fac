"""QDQ ops for the MLX ONNX runner: ``DequantizeLinear`` and ``QuantizeLinear``.

Per-tensor and per-axis (int8/uint8) scales and zero points; blocked
quantization (``block_size``) and float8 types raise UnsupportedError.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from edgelstm.converters.onnx_exec.ops import DTYPES, register, to_np, xp_of


def _axis_param(p, x, axis):
    """Reshape a per-axis scale/zero point ``(C,)`` to broadcast against ``x`` on ``axis``."""
    if p.ndim == 0 or p.size == 1:
        return p.reshape(())
    axis = axis + x.ndim if axis < 0 else axis
    shape = [1] * x.ndim
    shape[axis] = p.shape[0]
    return p.reshape(shape)


def _check_block(ctx):
    if ctx.get("block_size", 0):
        raise ctx.unsupported(f"attribute 'block_size' = {ctx.get('block_size')}")


@register("DequantizeLinear", ("axis", "block_size"))
def _dequantize(ctx, ins):
    _check_block(ctx)
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    axis = ctx.get("axis", 1)
    xp, (x, scale, zp) = xp_of(x, scale, zp)
    f = scale.dtype
    y = x.astype(f)
    if zp is not None:
        y = y - _axis_param(zp, x, axis).astype(f)
    return [y * _axis_param(scale, x, axis)]


@register("QuantizeLinear", ("axis", "block_size", "output_dtype", "saturate"))
def _quantize(ctx, ins):
    _check_block(ctx)
    x, scale = ins[0], ins[1]
    zp = ins[2] if len(ins) > 2 else None
    axis = ctx.get("axis", 1)
    out_t = ctx.get("output_dtype", 0) or (
        helper.np_dtype_to_tensor_dtype(to_np(zp).dtype) if zp is not None else TensorProto.UINT8
    )
    if out_t not in (TensorProto.INT8, TensorProto.UINT8):
        raise ctx.unsupported(f"output type {helper.tensor_dtype_to_string(out_t)}")
    lo, hi = (-128, 127) if out_t == TensorProto.INT8 else (0, 255)
    xp, (x, scale, zp) = xp_of(x, scale, zp)
    y = xp.round(x / _axis_param(scale, x, axis))  # both round half to even
    if zp is not None:
        y = y + _axis_param(zp, x, axis).astype(y.dtype)
    y = xp.clip(y, lo, hi)
    return [y.astype(DTYPES[out_t][0] if xp is np else DTYPES[out_t][1])]
