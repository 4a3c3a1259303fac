"""ONNX ``LSTM``/``GRU``/``RNN`` and ORT ``DynamicQuantizeLSTM`` on edgelstm.nn.recurrent.

Each direction runs through the functional core with weights converted by
:mod:`edgelstm.converters.gates`. Layouts: ``layout=0`` X ``[T, B, I]``,
Y ``[T, dirs, B, H]``, states ``[dirs, B, H]``; ``layout=1`` X ``[B, T, I]``,
Y ``[B, T, dirs, H]``, states ``[B, dirs, H]``.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from edgelstm.converters import gates
from edgelstm.converters.onnx_exec.ops import NodeCtx, register, to_mx, to_np
from edgelstm.errors import ConversionError
from edgelstm.nn import activations as A
from edgelstm.nn import recurrent

_COMMON = ("activation_alpha", "activation_beta", "activations", "clip", "direction", "hidden_size")
_DIRECTIONS = {"forward": 1, "reverse": 1, "bidirectional": 2}
# ONNX activation name -> our spec name (names are case-sensitive in ONNX)
_ACT_NAMES = {
    "Relu": "relu",
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Affine": "affine",
    "LeakyRelu": "leakyrelu",
    "ThresholdedRelu": "thresholdedrelu",
    "ScaledTanh": "scaledtanh",
    "HardSigmoid": "hardsigmoid",
    "Elu": "elu",
    "Softsign": "softsign",
    "Softplus": "softplus",
}
_USES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_USES_BETA = {"affine", "scaledtanh", "hardsigmoid"}
# ONNX leaves RNN activation defaults open; ORT uses 0 for these (degenerate), so
# we require explicit values. LeakyRelu/HardSigmoid/Elu defaults match ORT.
_NEEDS_EXPLICIT = {"affine", "scaledtanh", "thresholdedrelu"}


def _direction(ctx: NodeCtx) -> tuple[str, int]:
    d = ctx.get("direction", b"forward")
    d = d.decode() if isinstance(d, bytes) else d
    if d not in _DIRECTIONS:
        raise ctx.unsupported(f"attribute 'direction' = {d!r}")
    return d, _DIRECTIONS[d]


def _activations(ctx: NodeCtx, defaults: tuple[str, ...], dirs: int) -> list[tuple]:
    """Per-direction activation spec tuples from ``activations``/``activation_alpha/beta``.

    As in ONNX Runtime, alpha and beta values are consumed in order by the
    activations that take them; the others take none.
    """
    n = len(defaults)
    names = [s.decode() if isinstance(s, bytes) else s for s in ctx.get("activations", [])]
    alphas = list(ctx.get("activation_alpha", []))
    betas = list(ctx.get("activation_beta", []))
    if not names:
        if alphas or betas:
            raise ctx.unsupported(
                "attribute 'activation_alpha'/'activation_beta' without 'activations'"
            )
        names = list(defaults) * dirs
    elif len(names) == n and dirs == 2:
        names = names * 2  # one set given for both directions
        alphas, betas = alphas * 2, betas * 2
    if len(names) != n * dirs:
        raise ctx.unsupported(f"attribute 'activations' with {len(names)} names (need {n * dirs})")
    specs = []
    for name in names:
        if name not in _ACT_NAMES:
            raise ctx.unsupported(f"attribute 'activations' value {name!r}")
        key = _ACT_NAMES[name]
        a = alphas.pop(0) if key in _USES_ALPHA and alphas else None
        b = betas.pop(0) if key in _USES_BETA and betas else None
        if key in _NEEDS_EXPLICIT and (a is None or (key in _USES_BETA and b is None)):
            raise ctx.unsupported(
                f"attribute 'activations' value {name!r} without explicit activation_alpha/beta"
            )
        specs.append(A.spec(key, a, b))
    if alphas or betas:
        raise ctx.unsupported("attribute 'activation_alpha'/'activation_beta' with unused values")
    return [tuple(specs[d * n : (d + 1) * n]) for d in range(dirs)]


def _clip(ctx: NodeCtx):
    clip = ctx.get("clip")
    if clip is not None and not clip > 0:
        raise ctx.unsupported(f"attribute 'clip' = {clip}")
    return None if clip is None else float(clip)


def _layout(ctx: NodeCtx) -> int:
    layout = ctx.get("layout", 0)
    if layout not in (0, 1):
        raise ctx.unsupported(f"attribute 'layout' = {layout}")
    return layout


def _pad(ins, n):
    return list(ins) + [None] * (n - len(ins))


def _weights(ctx: NodeCtx, idx: tuple[int, ...], ins, convert, dtype):
    """Convert ONNX weights to per-direction MLX arrays, cached when the inputs are static."""
    static = all(ctx.static[i] if i < len(ctx.static) else True for i in idx)
    key = f"w/{dtype}"
    if static and key in ctx.cache:
        return ctx.cache[key]
    arrays = [None if ins[i] is None else to_np(ins[i]).astype(np.float32) for i in idx]
    out = convert(*arrays)
    dirs = out[0].shape[0]
    per_dir = [
        tuple(None if a is None else mx.array(a[d]).astype(dtype) for a in out) for d in range(dirs)
    ]
    if static:
        ctx.cache[key] = per_dir
    return per_dir


def _check(ctx: NodeCtx, W, R, dirs: int, n_gates: int):
    if W.ndim != 3 or R.ndim != 3 or W.shape[0] != dirs or R.shape[0] != dirs:
        raise ConversionError(
            f"{ctx.label}: W {tuple(W.shape)} / R {tuple(R.shape)} do not match {dirs} direction(s)"
        )
    H = R.shape[-1]
    hs = ctx.get("hidden_size")
    if (hs is not None and hs != H) or R.shape[1] != n_gates * H:
        raise ConversionError(
            f"{ctx.label}: attribute 'hidden_size' = {hs} does not match R {tuple(R.shape)}"
        )


def _run(ctx: NodeCtx, fn, X, seq, states, per_dir, extra, n_states):
    """Shared driver: layouts, directions, outputs ``[Y, Y_h, (Y_c)]``."""
    direction, dirs = _direction(ctx)
    layout = _layout(ctx)
    X = to_mx(X)
    x = X.transpose(1, 0, 2) if layout == 0 else X  # -> (B, T, I)
    lengths = None if seq is None else to_mx(seq).astype(mx.int32)
    given_lengths = lengths
    init = []
    for s in states:
        s = None if s is None else to_mx(s)
        s = s if s is None or s.dtype == x.dtype else s.astype(x.dtype)
        init.append(s if s is None or layout == 0 else s.transpose(1, 0, 2))
    acts = _activations(ctx, extra.pop("defaults"), dirs)
    ys, finals = [], []
    for d in range(dirs):
        kw = {
            # squeeze, not s[d]: an integer index is a Gather primitive (~3x a view's cost)
            name: (None if s is None else mx.squeeze(s, 0) if dirs == 1 else s[d])
            for name, s in zip(("h0", "c0"), init, strict=False)
        }
        y, st = fn(
            x,
            *per_dir[d],
            **kw,
            lengths=lengths,
            reverse=direction == "reverse" or d == 1,
            activations=acts[d],
            **extra,
        )
        ys.append(y)
        finals.append(st if isinstance(st, tuple) else (st,))
    Y = mx.stack(ys, axis=2) if dirs > 1 else mx.expand_dims(ys[0], 2)  # (B, T, dirs, H)
    Y = Y.transpose(1, 2, 0, 3) if layout == 0 else Y
    outs = [Y]
    for k in range(n_states):
        s = mx.stack([f[k] for f in finals], axis=0) if dirs > 1 else finals[0][k][None]
        if given_lengths is not None:  # as ORT: a zero-length sequence ends in zero state
            s = mx.where((given_lengths > 0)[None, :, None], s, mx.array(0, s.dtype))
        outs.append(s if layout == 0 else s.transpose(1, 0, 2))
    return outs[: max(1, len(ctx.node.output))]


def _lstm_common(ctx, X, seq, h0, c0, per_dir):
    def fn(x, Wx, Wh, bias, peep, **kw):
        return recurrent.lstm(x, Wx, Wh, bias, peephole=peep, **kw)

    extra = {
        "defaults": ("Sigmoid", "Tanh", "Tanh"),
        "clip": _clip(ctx),
        "input_forget": bool(ctx.get("input_forget", 0)),
    }
    return _run(ctx, fn, X, seq, [h0, c0], per_dir, extra, 2)


@register("LSTM", _COMMON + ("input_forget", "layout"))
def lstm_op(ctx: NodeCtx, ins):
    X, W, R, B, seq, h0, c0, P = _pad(ins, 8)
    _, dirs = _direction(ctx)
    _check(ctx, W, R, dirs, 4)
    per_dir = _weights(ctx, (1, 2, 3, 7), _pad(ins, 8), gates.lstm_from_onnx, to_mx(X).dtype)
    return _lstm_common(ctx, X, seq, h0, c0, per_dir)


def _dequant_dq(q, scale, zp):
    """DynamicQuantizeLSTM ``[dirs, K, 4H]`` ints + scale/zp ``[dirs]`` or ``[dirs, 4H]`` -> float."""
    q = to_np(q).astype(np.float32)
    scale = to_np(scale).astype(np.float32)
    zp = np.zeros_like(scale) if zp is None else to_np(zp).astype(np.float32)
    shape = (-1, 1, 1) if scale.ndim == 1 else (scale.shape[0], 1, -1)
    return (q - zp.reshape(shape)) * scale.reshape(shape)


@register("DynamicQuantizeLSTM", _COMMON + ("input_forget",), domain="com.microsoft")
def dq_lstm_op(ctx: NodeCtx, ins):
    X, Wq, Rq, B, seq, h0, c0, P, ws, wz, rs, rz = _pad(ins, 12)
    _, dirs = _direction(ctx)
    if ws is None or rs is None:
        raise ConversionError(f"{ctx.label}: W_scale and R_scale are required")

    def convert(Wq, Rq, B, P, ws, wz, rs, rz):
        W = gates.ort_dq_to_onnx(_dequant_dq(Wq, ws, wz))
        R = gates.ort_dq_to_onnx(_dequant_dq(Rq, rs, rz))
        _check(ctx, W, R, dirs, 4)
        return gates.lstm_from_onnx(W, R, B, P)

    per_dir = _weights(ctx, (1, 2, 3, 7, 8, 9, 10, 11), _pad(ins, 12), convert, to_mx(X).dtype)
    return _lstm_common(ctx, X, seq, h0, c0, per_dir)


@register("GRU", _COMMON + ("layout", "linear_before_reset"))
def gru_op(ctx: NodeCtx, ins):
    X, W, R, B, seq, h0 = _pad(ins, 6)
    _, dirs = _direction(ctx)
    _check(ctx, W, R, dirs, 3)
    lbr = ctx.get("linear_before_reset", 0)
    if lbr not in (0, 1):
        raise ctx.unsupported(f"attribute 'linear_before_reset' = {lbr}")
    per_dir = _weights(ctx, (1, 2, 3), _pad(ins, 6), gates.gru_from_onnx, to_mx(X).dtype)

    def fn(x, Wx, Wh, b, bhn, **kw):
        return recurrent.gru(x, Wx, Wh, b, bhn, linear_before_reset=bool(lbr), **kw)

    extra = {"defaults": ("Sigmoid", "Tanh"), "clip": _clip(ctx)}
    return _run(ctx, fn, X, seq, [h0], per_dir, extra, 1)


@register("RNN", _COMMON + ("layout",))
def rnn_op(ctx: NodeCtx, ins):
    X, W, R, B, seq, h0 = _pad(ins, 6)
    _, dirs = _direction(ctx)
    _check(ctx, W, R, dirs, 1)
    per_dir = _weights(ctx, (1, 2, 3), _pad(ins, 6), gates.rnn_from_onnx, to_mx(X).dtype)

    def fn(x, Wxh, Whh, bias, **kw):
        return recurrent.rnn(x, Wxh, Whh, bias, **kw)

    extra = {"defaults": ("Tanh",), "clip": _clip(ctx)}
    return _run(ctx, fn, X, seq, [h0], per_dir, extra, 1)
