"""The functional recurrent core: LSTM, GRU and RNN over a whole sequence.

The layer modules, the ONNX graph runner and the streaming engine call these
three functions with weights as arguments. Each first asks
:func:`edgelstm.fast.dispatch.fused_cell` whether the fused C++ kernel takes
the call (it has a gradient, so training takes it too); otherwise (and always
with ``fast=False``) it runs the pure-MLX recurrence below. Whole unidirectional stacks go to the kernel
from :class:`edgelstm.nn.layers.Recurrent` directly. Shapes use ``B`` batch,
``T`` time, ``I`` input size, ``H`` hidden size.

Gate orders are MLX/PyTorch ones: LSTM ``i, f, g, o``; GRU ``r, z, n``.
The input projection is one matmul for all steps (hoisted out of the loop);
each step is the recurrent matmul plus one compiled, fused gate block.

``lengths`` follows ONNX ``sequence_lens``: past a sequence's length its
state stops updating and its outputs are zero; a reverse direction starts
at each sequence's own last valid step.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import mlx.core as mx

from edgelstm.fast import dispatch as _kernels
from edgelstm.nn import activations as A

SIGMOID = A.spec("sigmoid")
TANH = A.spec("tanh")
LSTM_ACTIVATIONS = (SIGMOID, TANH, TANH)
GRU_ACTIVATIONS = (SIGMOID, TANH)
RNN_ACTIVATIONS = (TANH,)


def _clip(x, clip):
    return x if clip is None else mx.clip(x, -clip, clip)


def _masked(mask, new, old):
    """Keep ``old`` where ``mask`` (B, 1) is False; zero the emitted output there."""
    return mx.where(mask, new, old), mx.where(mask, new, 0.0)


@cache
def _lstm_step(acts, clip, peephole, input_forget, masked):
    fa, ga, ha = acts

    def step(xp_t, h, c, WhT, P, mask):
        gates = mx.addmm(xp_t, h, WhT)
        i, f, g, o = mx.split(gates, 4, axis=-1)
        if peephole:
            p_i, p_f, p_o = mx.split(P, 3)
            i = i + p_i * c
            f = f + p_f * c
        i = A.apply(fa, _clip(i, clip))
        f = 1.0 - i if input_forget else A.apply(fa, _clip(f, clip))
        g = A.apply(ga, _clip(g, clip))
        c_new = f * c + i * g
        if peephole:
            o = o + p_o * c_new
        o = A.apply(fa, _clip(o, clip))
        h_new = o * A.apply(ha, c_new)
        if masked:
            c_new, _ = _masked(mask, c_new, c)
            h_new, y = _masked(mask, h_new, h)
            return h_new, c_new, y
        return h_new, c_new, h_new

    return mx.compile(step)


@cache
def _gru_step(acts, clip, linear_before_reset, masked):
    fa, ga = acts

    def step(xp_t, h, WhT, bhn, mask):
        H = h.shape[-1]
        x_rz, x_n = xp_t[..., : 2 * H], xp_t[..., 2 * H :]
        if linear_before_reset:
            hp = h @ WhT
            rz = x_rz + hp[..., : 2 * H]
            h_n = hp[..., 2 * H :] + bhn
        else:
            rz = mx.addmm(x_rz, h, WhT[:, : 2 * H])
        r, z = mx.split(A.apply(fa, _clip(rz, clip)), 2, axis=-1)
        if not linear_before_reset:
            h_n = (r * h) @ WhT[:, 2 * H :] + bhn
            n = x_n + h_n
        else:
            n = x_n + r * h_n
        n = A.apply(ga, _clip(n, clip))
        h_new = (1.0 - z) * n + z * h
        if masked:
            h_new, y = _masked(mask, h_new, h)
            return h_new, y
        return h_new, h_new

    return mx.compile(step)


@cache
def _rnn_step(acts, clip, masked):
    (fa,) = acts

    def step(xp_t, h, WhT, mask):
        h_new = A.apply(fa, _clip(mx.addmm(xp_t, h, WhT), clip))
        if masked:
            h_new, y = _masked(mask, h_new, h)
            return h_new, y
        return h_new, h_new

    return mx.compile(step)


def _project(x, Wx, bias):
    """Input projection for all steps at once, time-major: (T, B, G*H)."""
    xt = x.transpose(1, 0, 2)
    return xt @ Wx.T if bias is None else mx.addmm(bias, xt, Wx.T)


def _masks(lengths, B, T):
    """Per-step (B, 1) bool masks from ``lengths`` (B,), or ``None``s."""
    if lengths is None:
        return [None] * T
    lengths = mx.array(lengths) if not isinstance(lengths, mx.array) else lengths
    mask = mx.arange(T)[:, None] < lengths.astype(mx.int32)[None, :]
    return [m[:, None] for m in mask]


def _run(step, xp, state, masks, reverse, n_state):
    """Run ``step`` over time; returns (y (B, T, H), final state list)."""
    T = xp.shape[0]
    order = range(T - 1, -1, -1) if reverse else range(T)
    ys = [None] * T
    for t in order:
        out = step(xp[t], *state, masks[t])
        state, ys[t] = list(out[:n_state]), out[n_state]
    return mx.stack(ys, axis=1), state


def _zeros_like_state(x, H):
    return mx.zeros((x.shape[0], H), dtype=x.dtype)


def lstm(
    x: mx.array,
    Wx: mx.array,
    Wh: mx.array,
    bias: mx.array | None = None,
    *,
    h0: mx.array | None = None,
    c0: mx.array | None = None,
    lengths: mx.array | Sequence[int] | None = None,
    reverse: bool = False,
    peephole: mx.array | None = None,
    clip: float | None = None,
    input_forget: bool = False,
    activations: Sequence[A.Activation] = LSTM_ACTIVATIONS,
    fast: bool | None = None,
    train: bool = False,
) -> tuple[mx.array, tuple[mx.array, mx.array]]:
    """Run one LSTM direction over a batch of sequences.

    Args:
        x: input ``(B, T, I)``.
        Wx: input weights ``(4H, I)``, gate order ``i, f, g, o``.
        Wh: recurrent weights ``(4H, H)``.
        bias: summed bias ``(4H,)`` or ``None``.
        h0, c0: initial states ``(B, H)``; ``None`` means zeros.
        lengths: valid steps per sequence ``(B,)`` (ONNX ``sequence_lens``).
        reverse: run from the last valid step to the first.
        peephole: peephole weights ``(3H,)`` in order ``i, f, o``.
        clip: clip gate pre-activations to ``[-clip, clip]`` (ONNX ``clip``).
        input_forget: couple the gates, ``f = 1 - i`` (ONNX ``input_forget``).
        activations: ``(f, g, h)`` activation specs (see ``activations.spec``).
        fast: fused C++ kernel (:mod:`edgelstm.fast.dispatch`): ``None`` uses it when
            available and supported (gradients included), ``False`` never,
            ``True`` requires it (raises ``UnsupportedError`` otherwise).
        train: the caller is training. Under autodiff the fused kernel then saves the
            gate activations for its gradient (``7 * H`` floats per step and sequence)
            instead of recomputing the forward pass in the backward one.

    Returns:
        ``y`` ``(B, T, H)`` and the final ``(h, c)``, each ``(B, H)``.
    """
    args = {"Wx": Wx, "Wh": Wh, "bias": bias, "peephole": peephole, "clip": clip,
            "input_forget": input_forget, "activations": activations}
    fused = _kernels.fused_cell("lstm", x, args, h0, c0, lengths, reverse, fast, train=train)
    if fused is not None:
        return fused
    H = Wh.shape[-1]
    xp = _project(x, Wx, bias)
    h = _zeros_like_state(x, H) if h0 is None else h0
    c = _zeros_like_state(x, H) if c0 is None else c0
    masks = _masks(lengths, x.shape[0], x.shape[1])
    step = _lstm_step(
        tuple(activations), clip, peephole is not None, bool(input_forget), lengths is not None
    )
    P = peephole if peephole is not None else mx.zeros((3 * H,), dtype=x.dtype)
    WhT = Wh.T

    def bound(xp_t, h, c, mask):
        return step(xp_t, h, c, WhT, P, mask)

    y, (h, c) = _run(bound, xp, [h, c], masks, reverse, 2)
    return y, (h, c)


def gru(
    x: mx.array,
    Wx: mx.array,
    Wh: mx.array,
    b: mx.array | None = None,
    bhn: mx.array | None = None,
    *,
    h0: mx.array | None = None,
    lengths: mx.array | Sequence[int] | None = None,
    reverse: bool = False,
    linear_before_reset: bool = True,
    clip: float | None = None,
    activations: Sequence[A.Activation] = GRU_ACTIVATIONS,
    fast: bool | None = None,
) -> tuple[mx.array, mx.array]:
    """Run one GRU direction over a batch of sequences.

    ``linear_before_reset=True`` is the PyTorch/MLX form
    ``n = g(Wn x + b_n + r * (Rn h + bhn))``; ``False`` is the ONNX default
    ``n = g(Wn x + b_n + Rn (r * h) + bhn)``.

    Args:
        x: input ``(B, T, I)``.
        Wx: input weights ``(3H, I)``, gate order ``r, z, n``.
        Wh: recurrent weights ``(3H, H)``.
        b: bias ``(3H,)``: input and recurrent biases summed for r and z,
            the input bias alone for n.
        bhn: recurrent bias of the n gate ``(H,)``.
        h0: initial state ``(B, H)``; ``None`` means zeros.
        lengths, reverse, clip: as for :func:`lstm`.
        activations: ``(f, g)`` activation specs.
        fast: fused kernel choice, as for :func:`lstm`.

    Returns:
        ``y`` ``(B, T, H)`` and the final ``h`` ``(B, H)``.
    """
    args = {"Wx": Wx, "Wh": Wh, "bias": b, "bhn": bhn, "clip": clip, "activations": activations,
            "linear_before_reset": linear_before_reset}
    fused = _kernels.fused_cell("gru", x, args, h0, None, lengths, reverse, fast)
    if fused is not None:
        return fused
    H = Wh.shape[-1]
    xp = _project(x, Wx, b)
    h = _zeros_like_state(x, H) if h0 is None else h0
    masks = _masks(lengths, x.shape[0], x.shape[1])
    step = _gru_step(tuple(activations), clip, bool(linear_before_reset), lengths is not None)
    bhn = bhn if bhn is not None else mx.zeros((H,), dtype=x.dtype)
    WhT = Wh.T

    def bound(xp_t, h, mask):
        return step(xp_t, h, WhT, bhn, mask)

    y, (h,) = _run(bound, xp, [h], masks, reverse, 1)
    return y, h


def rnn(
    x: mx.array,
    Wxh: mx.array,
    Whh: mx.array,
    bias: mx.array | None = None,
    *,
    h0: mx.array | None = None,
    lengths: mx.array | Sequence[int] | None = None,
    reverse: bool = False,
    clip: float | None = None,
    activations: Sequence[A.Activation] = RNN_ACTIVATIONS,
    fast: bool | None = None,
) -> tuple[mx.array, mx.array]:
    """Run one Elman RNN direction: ``h = f(Wxh x + Whh h + bias)``.

    Args:
        x: input ``(B, T, I)``.
        Wxh: input weights ``(H, I)``; Whh: recurrent weights ``(H, H)``.
        bias: summed bias ``(H,)`` or ``None``.
        h0, lengths, reverse, clip: as for :func:`lstm`.
        activations: ``(f,)``, e.g. ``(spec("relu"),)``.
        fast: fused kernel choice, as for :func:`lstm`.

    Returns:
        ``y`` ``(B, T, H)`` and the final ``h`` ``(B, H)``.
    """
    args = {"Wx": Wxh, "Wh": Whh, "bias": bias, "clip": clip, "activations": activations}
    fused = _kernels.fused_cell("rnn", x, args, h0, None, lengths, reverse, fast)
    if fused is not None:
        return fused
    H = Whh.shape[-1]
    xp = _project(x, Wxh, bias)
    h = _zeros_like_state(x, H) if h0 is None else h0
    masks = _masks(lengths, x.shape[0], x.shape[1])
    step = _rnn_step(tuple(activations), clip, lengths is not None)
    WhT = Whh.T

    def bound(xp_t, h, mask):
        return step(xp_t, h, WhT, mask)

    y, (h,) = _run(bound, xp, [h], masks, reverse, 1)
    return y, h
