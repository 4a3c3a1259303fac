"""One recurrent direction as LiteRT operators: builtin sequence ops or a ``WHILE`` loop.

- LSTM without clip/peephole/input_forget: ``UNIDIRECTIONAL_SEQUENCE_LSTM``;
  RNN without clip: ``UNIDIRECTIONAL_SEQUENCE_RNN``. Their states are
  variable tensors ``(B, H)`` that persist between ``invoke`` calls.
- Everything else (GRU, which has no builtin; LSTM/RNN options the builtins
  lack; every cell of a streaming export): a ``WHILE`` loop over time whose
  body is the cell step in elementwise ops (``FULLY_CONNECTED``, ``SPLIT``,
  ``LOGISTIC``, ``TANH``, ...), the input projection hoisted out of the loop,
  the state carried as loop variables, so it can be a graph input and output.
- A reverse direction runs on ``REVERSE_V2`` of the input along time and
  reverses its output back.

Int8 (MLX-quantized) weights stay int8 in the file, with their per-row
scales as TFLite per-channel quantization parameters, and reach the float
kernels through ``DEQUANTIZE``: the same ``q * s`` the MLX int8 model computes.
In the hybrid form (``Ctx.hybrid``) the kernels take the int8 tensors
themselves (see :func:`edgelstm.converters.tflite_loop.cell_weight`).
Shapes: ``B`` batch (fixed), ``T`` time (dynamic), ``H`` hidden size.
"""

from __future__ import annotations

import numpy as np

from edgelstm.converters.tflite_builder import Graph
from edgelstm.converters.tflite_loop import Ctx, cell_weight, loop, vec

_LSTM_INPUTS = 24  # UNIDIRECTIONAL_SEQUENCE_LSTM's input list (optional ones are -1)


def uses_builtin(cell, kind: str, streaming: bool) -> bool:
    """Whether a direction runs as a builtin sequence op (else the ``WHILE`` loop)."""
    opts = cell["_opts"]
    if streaming or kind == "gru" or opts.get("clip") is not None:
        return False
    return kind == "rnn" or not (cell.get("peephole") is not None or opts.get("input_forget"))


def direction(ctx: Ctx, g: Graph, cell, kind: str, x: int, reverse: bool, streaming: bool,
              label: str, h0: int | None = None, c0: int | None = None):
    """Run one direction over ``x`` ``(B, T, I)`` (time-major ``(T, B, I)``).

    Returns:
        ``(y, h_n, c_n)``: ``y`` ``(B, T, H)`` in time order, final states
        ``(B, H)`` (``c_n`` ``None`` but for LSTM; for builtin ops ``h_n`` is
        the last step of the output and ``c_n`` is not available).
    """
    ax = g.const(label + ".time_axis", [ctx.t_axis], "int32")
    if reverse:
        x = g.op("REVERSE_V2", [x, ax], [g.like(label + ".x_rev", x)])
    if uses_builtin(cell, kind, streaming):
        y = (_builtin_lstm if kind == "lstm" else _builtin_rnn)(ctx, g, cell, x, label)
        h_n, c_n = _last_step(ctx, g, y, label), None
    else:
        y, h_n, c_n = loop(ctx, g, cell, kind, x, label, h0, c0)
    if reverse:
        y = g.op("REVERSE_V2", [y, ax], [g.like(label + ".y", y)])
    return y, h_n, c_n


def _last_step(ctx: Ctx, g: Graph, y: int, label: str) -> int:
    """``y[:, -1]`` (time-major ``y[-1]``) as ``(B, H)``."""
    a = ctx.t_axis
    begin = [0, 0, 0]
    begin[a] = -1
    return g.op("STRIDED_SLICE", [y, g.const(label + ".last.begin", begin, "int32"),
                                  g.const(label + ".last.end", [0, 0, 0], "int32"),
                                  g.const(label + ".last.strides", [1, 1, 1], "int32")],
                [g.tensor(label + ".last", [ctx.B, ctx.H])], "StridedSliceOptions",
                beginMask=0b111 & ~(1 << a), endMask=0b111 & ~(1 << a), shrinkAxisMask=1 << a)


def _builtin_lstm(ctx: Ctx, g: Graph, cell, x: int, label: str) -> int:
    H = ctx.H
    ins = [x]
    for name, part in (("Wx", "input"), ("Wh", "recurrent")):
        for k, gate in enumerate("ifgo"):
            ins.append(cell_weight(g, cell, name, f"{label}.{part}_{gate}",
                                   slice(k * H, (k + 1) * H), _hybrid(ctx)))
    ins += [-1, -1, -1]  # peepholes
    bias = np.split(vec(cell, "bias", 4 * H), 4)
    ins += [g.const(f"{label}.bias_{gate}", b) for gate, b in zip("ifgo", bias, strict=True)]
    ins += [-1, -1]  # projection
    ins += [g.tensor(f"{label}.h", [ctx.B, H], variable=True),
            g.tensor(f"{label}.c", [ctx.B, H], variable=True)]
    ins += [-1] * (_LSTM_INPUTS - len(ins))  # layer-norm coefficients
    s = ctx.m.s
    return g.op("UNIDIRECTIONAL_SEQUENCE_LSTM", ins, [g.like(label + ".y", x, last=H)],
                "UnidirectionalSequenceLSTMOptions",
                fusedActivationFunction=s.ActivationFunctionType.TANH,
                timeMajor=ctx.time_major, asymmetricQuantizeInputs=ctx.hybrid)


def _builtin_rnn(ctx: Ctx, g: Graph, cell, x: int, label: str) -> int:
    s, H = ctx.m.s, ctx.H
    act = _rnn_activation(cell)
    ins = [x, cell_weight(g, cell, "Wxh", label + ".input", hybrid=_hybrid(ctx)),
           cell_weight(g, cell, "Whh", label + ".recurrent", hybrid=_hybrid(ctx)),
           g.const(label + ".bias", vec(cell, "bias", H)),
           g.tensor(label + ".h", [ctx.B, H], variable=True)]
    return g.op("UNIDIRECTIONAL_SEQUENCE_RNN", ins, [g.like(label + ".y", x, last=H)],
                "SequenceRNNOptions", timeMajor=ctx.time_major,
                asymmetricQuantizeInputs=ctx.hybrid,
                fusedActivationFunction=getattr(s.ActivationFunctionType, act.upper()))


def _hybrid(ctx: Ctx) -> str | None:
    return "tensor" if ctx.hybrid else None  # the sequence kernels read one scale per tensor


def _rnn_activation(cell) -> str:
    acts = cell["_opts"].get("activations")
    return "tanh" if acts is None else acts[0][0]
