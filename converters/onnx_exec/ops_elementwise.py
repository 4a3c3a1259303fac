"""Elementwise ops: arithmetic, comparisons, logic, bitwise, math functions, activations.

Every op keeps the ONNX output dtype (the input's, or bool for comparisons);
static inputs stay numpy where numpy gives the same answer, the rest is MLX.
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from edgelstm.converters.onnx_exec.ops import is_float, is_int, opt, register, to_mx, xp_of

# --- binary arithmetic, comparisons, logic ------------------------------------------


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
    ("LessOrEqual", np.less_equal, mx.less_equal),
    ("Greater", np.greater, mx.greater),
    ("GreaterOrEqual", np.greater_equal, mx.greater_equal),
    ("And", np.logical_and, mx.logical_and),
    ("Or", np.logical_or, mx.logical_or),
    ("Xor", np.not_equal, mx.not_equal),  # on bools
    ("BitwiseAnd", np.bitwise_and, mx.bitwise_and),
    ("BitwiseOr", np.bitwise_or, mx.bitwise_or),
    ("BitwiseXor", np.bitwise_xor, mx.bitwise_xor),
]:
    register(_name)(_binary(_npf, _mxf))


def _int_div(a, b):
    """Integer division truncating toward zero (ONNX/C), exact for int64."""
    q = mx.floor_divide(a, b)
    fix = (mx.multiply(q, b) != a) & ((a < 0) != (b < 0))
    return mx.where(fix, q + 1, q).astype(a.dtype)


@register("Div")
def _div(ctx, ins):
    xp, (a, b) = xp_of(*ins)
    if xp is np and np.issubdtype(a.dtype, np.integer):
        q = np.floor_divide(a, b)
        fix = (q * b != a) & ((a < 0) != (b < 0))
        return [np.where(fix, q + 1, q).astype(a.dtype)]
    if xp is mx and is_int(a.dtype):
        return [_int_div(a, b)]
    return [xp.divide(a, b)]


@register("Mod", ("fmod",))
def _mod(ctx, ins):
    a, b = to_mx(ins[0]), to_mx(ins[1])
    r = mx.remainder(a, b)  # sign of the divisor, like Python's %
    if ctx.get("fmod", 0):  # C fmod: sign of the dividend
        r = mx.where((r != 0) & ((r < 0) != (a < 0)), r - b, r)
    return [r.astype(a.dtype)]


@register("Pow")
def _pow(ctx, ins):
    xp, (a, b) = xp_of(*ins)
    if is_int(a.dtype):  # integer base: float64 is exact for the ranges in use
        f = np.float64 if xp is np else mx.float64
        return [xp.power(a.astype(f), b.astype(f)).astype(a.dtype)]
    return [xp.power(a, b.astype(a.dtype))]


@register("BitShift", ("direction",))
def _bitshift(ctx, ins):
    a, b = to_mx(ins[0]), to_mx(ins[1])
    d = ctx.sget("direction")
    if d not in ("LEFT", "RIGHT"):
        raise ctx.unsupported(f"attribute 'direction' = {d!r}")
    bits = a.dtype.size * 8
    out = (mx.left_shift if d == "LEFT" else mx.right_shift)(a, mx.clip(b, 0, bits - 1))
    # shifts past the width (or negative) empty the value: 0, or the sign for RIGHT
    gone = (b < 0) | (b >= bits)
    fill = mx.zeros_like(a) if d == "LEFT" else mx.where(a < 0, -1, 0).astype(a.dtype)
    return [mx.where(gone, fill, out).astype(a.dtype)]


@register("PRelu")
def _prelu(ctx, ins):
    x, s = to_mx(ins[0]), to_mx(ins[1])
    return [mx.where(x < 0, x * s, x).astype(x.dtype)]


@register("Where")
def _where(ctx, ins):
    xp, (c, a, b) = xp_of(*ins)
    return [xp.where(c, a, b)]


def _variadic(mx_fn, mean=False):
    def fn(ctx, ins):
        vals = [to_mx(v) for v in ins if v is not None]
        out = vals[0]
        for v in vals[1:]:
            out = mx_fn(out, v)
        if mean:
            out = out / len(vals)
        return [out.astype(vals[0].dtype)]

    return fn


register("Sum")(_variadic(mx.add))
register("Mean")(_variadic(mx.add, mean=True))
register("Max")(_variadic(mx.maximum))
register("Min")(_variadic(mx.minimum))

# --- unary math ---------------------------------------------------------------


def up(x):
    """float16/bfloat16 computed in float32 (rounded once at the end, as references do)."""
    return x.astype(mx.float32) if x.dtype in (mx.float16, mx.bfloat16) else x


def _unary(mx_fn, floats_only=False):
    def fn(ctx, ins):
        x = to_mx(ins[0])
        if floats_only and not is_float(x.dtype):
            raise ctx.unsupported(f"input type {x.dtype}")
        return [mx_fn(up(x)).astype(x.dtype) if floats_only else mx_fn(x)]

    return fn


for _name, _f in [
    ("Abs", mx.abs),
    ("Sign", mx.sign),
    ("Not", mx.logical_not),
    ("BitwiseNot", mx.bitwise_invert),
    ("IsNaN", mx.isnan),
]:
    register(_name)(_unary(_f))

for _name, _f in [
    ("Sqrt", mx.sqrt),
    ("Exp", mx.exp),
    ("Log", mx.log),
    ("Reciprocal", mx.reciprocal),
    ("Floor", mx.floor),
    ("Ceil", mx.ceil),
    ("Round", mx.round),  # half to even, as ONNX
    ("Sin", mx.sin),
    ("Cos", mx.cos),
    ("Tan", mx.tan),
    ("Asin", mx.arcsin),
    ("Acos", mx.arccos),
    ("Atan", mx.arctan),
    ("Sinh", mx.sinh),
    ("Cosh", mx.cosh),
    ("Asinh", mx.arcsinh),
    ("Acosh", mx.arccosh),
    ("Atanh", mx.arctanh),
    ("Erf", mx.erf),
    ("Sigmoid", mx.sigmoid),
    ("Tanh", mx.tanh),
    ("Softsign", lambda x: x / (1 + mx.abs(x))),
    ("Softplus", lambda x: mx.logaddexp(x, mx.array(0, x.dtype))),
    ("Mish", lambda x: x * mx.tanh(mx.logaddexp(x, mx.array(0, x.dtype)))),
]:
    register(_name)(_unary(_f, floats_only=True))


@register("Neg")
def _neg(ctx, ins):
    xp, (a,) = xp_of(*ins)
    return [xp.negative(a)]


@register("Relu")
def _relu(ctx, ins):
    x = to_mx(ins[0])
    return [mx.maximum(x, mx.array(0, x.dtype))]


@register("IsInf", ("detect_negative", "detect_positive"))
def _isinf(ctx, ins):
    x = to_mx(ins[0])
    neg, pos = ctx.get("detect_negative", 1), ctx.get("detect_positive", 1)
    out = mx.zeros(x.shape, mx.bool_)
    if neg:
        out = out | mx.isneginf(x)
    if pos:
        out = out | mx.isposinf(x)
    return [out]


# --- parametrised activations ---------------------------------------------------


def _act(attrs, body):
    def fn(ctx, ins):
        x = to_mx(ins[0])
        vals = [ctx.get(k, d) for k, d in attrs]
        return [body(up(x), *vals).astype(x.dtype)]

    return fn


_SELU_A, _SELU_G = 1.67326319217681884765625, 1.05070102214813232421875
_ACTS = {
    "LeakyRelu": ((("alpha", 0.01),), lambda x, a: mx.where(x < 0, a * x, x)),
    "Elu": ((("alpha", 1.0),), lambda x, a: mx.where(x < 0, a * (mx.exp(x) - 1), x)),
    "Selu": (
        (("alpha", _SELU_A), ("gamma", _SELU_G)),
        lambda x, a, g: g * mx.where(x <= 0, a * (mx.exp(x) - 1), x),
    ),
    "Celu": (
        (("alpha", 1.0),),
        lambda x, a: mx.maximum(x, 0) + mx.minimum(0, a * (mx.exp(x / a) - 1)),
    ),
    "ThresholdedRelu": ((("alpha", 1.0),), lambda x, a: mx.where(x > a, x, 0)),
    "HardSigmoid": (
        (("alpha", 0.2), ("beta", 0.5)),
        lambda x, a, b: mx.clip(a * x + b, 0, 1),
    ),
    "HardSwish": ((), lambda x: x * mx.clip(x / 6 + 0.5, 0, 1)),
    "Shrink": (
        (("bias", 0.0), ("lambd", 0.5)),
        lambda x, b, l: mx.where(x < -l, x + b, mx.where(x > l, x - b, 0)),
    ),
    "Swish": ((("alpha", 1.0),), lambda x, a: x * mx.sigmoid(a * x)),
}
for _name, (_attrs, _body) in _ACTS.items():
    register(_name, tuple(k for k, _ in _attrs))(_act(_attrs, _body))


@register("Gelu", ("approximate",))
def _gelu(ctx, ins):
    x = to_mx(ins[0])
    approx = ctx.sget("approximate", "none")
    if approx == "none":
        y = 0.5 * x * (1 + mx.erf(x / math.sqrt(2)))
    elif approx == "tanh":
        y = 0.5 * x * (1 + mx.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    else:
        raise ctx.unsupported(f"attribute 'approximate' = {approx!r}")
    return [y.astype(x.dtype)]


@register("Clip", ("min", "max"))
def _clip(ctx, ins):
    x = to_mx(ins[0])
    if ctx.opset >= 11:
        lo, hi = opt(ins, 1), opt(ins, 2)
    else:
        lo, hi = ctx.get("min"), ctx.get("max")
    if lo is not None:
        x = mx.maximum(x, to_mx(lo).astype(x.dtype) if not isinstance(lo, float) else lo)
    if hi is not None:
        x = mx.minimum(x, to_mx(hi).astype(x.dtype) if not isinstance(hi, float) else hi)
    return [x]
