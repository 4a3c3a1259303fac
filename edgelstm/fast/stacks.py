"""Whole unidirectional stacks in one fused primitive: the decision and the call.

:func:`plan_stack` decides (through :func:`edgelstm.fast.dispatch.why_not`, as one
direction does) and remembers its plan per model; :func:`run_stack` runs every
layer in one primitive, eagerly for small batches of computed inputs.
"""

from __future__ import annotations

import mlx.core as mx

from edgelstm.fast import dispatch as _dispatch
from edgelstm.fast.dispatch import (
    RNN_RELU_FLAG,
    available,
    eager_call,
    int32_lengths,
    placement,
    reason,
    require,
    why_not,
)


class _Plan(list):
    """A stack plan: the per-layer kernel arguments, plus their argument lists for
    the stack primitive (built once, on first use by :func:`run_stack`)."""

    ext_args: tuple | None = None


def _signature(a):
    """What the plan reads of a state entry: structure, rank and dtype, never values."""
    if a is None or isinstance(a, mx.array):
        return None if a is None else (a.ndim, a.dtype)
    if isinstance(a, (tuple, list)):
        return (len(a), *(_signature(v) for v in a))
    return type(a)


def _plan_key(model, x, state, fast) -> tuple:
    """Everything :func:`plan_stack` reads. Weights count by identity: the remembered
    plan holds them, so an id cannot be reused while the plan is remembered."""
    cells = tuple(
        id(v) for layer in model["layers"] for cell in layer.values() for v in cell.values()
    )
    batch = x.shape[0] if x.ndim == 3 else None
    return (fast, model.training, model._drop is None, x.ndim, x.dtype, x.size == 0,
            placement(batch) if batch is not None else None, _signature(state), cells)


def plan_stack(model, x, state, fast) -> list[dict] | str:
    """:func:`decide_stack`, remembered on ``model`` while nothing it reads changes.

    A stream calls its model chunk after chunk with the same weights and state
    shapes; deciding afresh costs ~4 µs per layer each call, a tenth of a small
    model's whole chunk.
    """
    key = _plan_key(model, x, state, fast)
    memo = model.__dict__.get("_edgelstm_plan")
    if memo is not None and memo[0] == key:
        return memo[1]
    plan = decide_stack(model, x, state, fast)
    if isinstance(plan, list):
        plan = _Plan(plan)
    # object.__setattr__: an nn.Module would file a tuple among its parameters.
    object.__setattr__(model, "_edgelstm_plan", (key, plan))
    return plan


def decide_stack(model, x, state, fast) -> list[dict] | str:
    """Decide whether a recurrent stack runs as one fused primitive (all layers).

    The single place that decides it: :meth:`edgelstm.nn.layers.Recurrent.__call__`
    calls this and falls back to one kernel (or pure-MLX) call per layer when
    given a reason.

    Args:
        model: an ``edgelstm.nn.layers.Recurrent`` (``cell_type``, ``layers``,
            ``bidirectional``, ``training``, ``_drop``).
        x: the input, ``(B, T, I)`` or ``(T, B, I)`` (only its rank, size and
            dtype matter here).
        state: the model's initial state (``(h0, c0)`` for LSTM, ``h0``
            otherwise, each ``(L, B, H)``) or ``None``.
        fast: the call's ``fast`` (``False`` never fuses).

    Returns:
        The per-layer kernel arguments (each cell's ``kernel_args``) for
        :func:`run_stack`, or a one-line reason the stack cannot be fused.
    """
    if fast is False:
        return "fast=False"
    if not available():
        return f"fused kernels unavailable: {reason()}"
    kind = model.cell_type
    if model.bidirectional:
        return "fused stacks are unidirectional"
    if model.training and model._drop is not None:
        return "dropout between layers is active (training)"
    if (
        kind == "lstm"
        and state is not None
        and not (isinstance(state, (tuple, list)) and len(state) == 2)
    ):
        return "LSTM state must be (h0, c0)"
    h0, c0 = _split_state(kind, state)
    for s in (h0, c0):
        if s is not None and not (isinstance(s, mx.array) and s.ndim == 3):
            return "fused stacks take whole (L, B, H) state arrays"
    plan = []
    for k, layer in enumerate(model.layers):
        get = getattr(layer.forward, "kernel_args", None)
        a = get(fast) if get is not None else None
        if a is None:
            return f"layer {k} has no fused-kernel weights"
        why = why_not(kind, a, x, h0, c0)
        if why is not None:
            return f"layer {k}: {why}"
        plan.append(a)
    opt = {"gru": "linear_before_reset", "rnn": "activations"}.get(kind)
    if opt and any(a[opt] != plan[0][opt] for a in plan):
        return f"layers differ in {opt}"
    return plan


def run_stack(kind, plan, x, state, lengths=None, *, batch_first=True, train=False):
    """Run a stack planned by :func:`plan_stack` in one primitive.

    Args:
        kind: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        plan: the per-layer arguments :func:`plan_stack` returned.
        x: input ``(B, T, I)`` (``(T, B, I)`` when not ``batch_first``).
        state: ``(h0, c0)`` for LSTM, ``h0`` otherwise, each ``(L, B, H)``, or ``None``.
        lengths: valid steps per sequence ``(B,)`` or ``None``.
        train: the model is training (LSTM: under autodiff the primitive saves each
            layer's activations for the gradient, see
            :func:`edgelstm.fast.dispatch.lstm_seq`).

    Returns:
        ``y`` of the last layer (``x``'s layout) and the final state, as the
        model returns it: ``(h_n, c_n)`` for LSTM, else ``h_n``, each ``(L, B, H)``.
    """
    require()
    h0, c0 = _split_state(kind, state)
    lists = getattr(plan, "ext_args", None) or _stack_lists(plan)
    if isinstance(plan, _Plan):
        plan.ext_args = lists
    wx, wh, bias, wx_scales, wh_scales, bhn = lists
    kw = {
        "batch_first": bool(batch_first),
        "Wx_scales": wx_scales,
        "Wh_scales": wh_scales,
        "eager": eager_call(x, batch_first),
        "train": bool(train),
    }
    if kind == "lstm":
        y, h, c = _dispatch._ext.lstm_stack(x, wx, wh, bias, h0, c0, int32_lengths(lengths), **kw)
        return y, (h, c)
    if kind == "gru":
        y, h = _dispatch._ext.gru_stack(
            x, wx, wh, bias, bhn, h0, int32_lengths(lengths),
            linear_before_reset=plan[0]["linear_before_reset"], **kw,
        )
        return y, h
    relu = RNN_RELU_FLAG[plan[0]["activations"]]
    y, h = _dispatch._ext.rnn_stack(x, wx, wh, bias, h0, int32_lengths(lengths), relu=relu, **kw)
    return y, h


def _stack_lists(plan) -> tuple:
    """Per-layer ``Wx, Wh, bias, Wx_scales, Wh_scales, bhn`` lists for the stack
    primitives (an empty list where no layer has the entry)."""
    lists = [[a.get(k) for a in plan] for k in ("Wx", "Wh", "bias", "Wx_scales",
                                                 "Wh_scales", "bhn")]
    return tuple(v if k < 2 or any(e is not None for e in v) else []
                 for k, v in enumerate(lists))


def _split_state(kind, state):
    if state is None:
        return None, None
    return tuple(state) if kind == "lstm" else (state, None)
