"""Export an edgelstm model to a LiteRT (TFLite) flatbuffer, without TensorFlow.

The flatbuffer is built with the schema module that ships in the
``ai-edge-litert`` wheel (``pip install 'edgelstm[litert]'``); see
:mod:`edgelstm.converters.tflite_builder`. Graph:

- normalisation: ``SUB`` mean, ``DIV`` std (per feature, broadcast);
- each layer and direction: a builtin sequence op where LiteRT has one
  (``UNIDIRECTIONAL_SEQUENCE_LSTM``, ``UNIDIRECTIONAL_SEQUENCE_RNN``), else a
  ``WHILE`` loop of the cell step (GRU; LSTM with clip, peepholes or coupled
  gates; RNN with clip); see :mod:`edgelstm.converters.tflite_cells`. A
  bidirectional layer runs its reverse direction on the time-reversed input
  and concatenates ``[forward, reverse]`` as the MLX model does;
- frame head: ``FULLY_CONNECTED`` with ``keepNumDims`` on ``(B, T, F)``;
  sequence head: the last layer's final hidden state(s) (or ``MEAN`` over
  time for ``pool="mean"``), then ``FULLY_CONNECTED``.

The batch size is fixed at export (``batch_size``, default 1: the builtin
kernels size their state tensors by it); the time axis is dynamic
(``shape_signature`` ``-1``: resize the input, then allocate). In the default
form the builtin ops' states are variable tensors that persist between
``invoke`` calls (call ``interpreter.reset_all_variables()`` before an
unrelated sequence; :func:`edgelstm.converters.litert_run.run_tflite` does);
a ``WHILE``-loop direction starts from zeros on every ``invoke``.
``streaming=True`` instead takes the state as inputs ``h0`` (and ``c0``)
``(L, B, H)`` and returns ``h_n`` (and ``c_n``), every cell in the loop form.

Int8 (MLX-quantized) weights are written as int8 tensors with TFLite
per-channel quantization parameters (the MLX per-row scales) and
dequantized by ``DEQUANTIZE`` for the float kernels, so LiteRT computes what
the MLX int8 model computes; ``int8="hybrid"`` feeds them to LiteRT's
dynamic-range (hybrid) kernels instead. Refused by name: summary heads, non-default activations,
4-bit weights, and streaming a bidirectional or mean-pooled model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelstm.converters.tflite_builder import INSTALL_HINT, ModelBuilder, schema
from edgelstm.converters.tflite_cells import direction
from edgelstm.converters.tflite_loop import Ctx
from edgelstm.errors import ConversionError, UnsupportedError

__all__ = ["INSTALL_HINT", "build_tflite", "check_exportable", "to_tflite"]
_schema = schema  # the name conversion.py checks the install with


def _cells(rnn):
    for layer in rnn.layers:
        yield from ([layer.forward, layer.reverse] if rnn.bidirectional else [layer.forward])


def check_exportable(model, streaming: bool = False) -> None:
    """Refuse what the TFLite graph cannot express, naming it.

    Raises:
        UnsupportedError: summary heads, non-default activations, 4-bit
        weights, streaming a bidirectional or mean-pooled model.
    """
    from edgelstm.converters.onnx_export import _split_model

    seq, rnn = _split_model(model)
    what = None
    spec = [c.get("_qspec") for c in _cells(rnn)]
    if seq is not None and "stem" in seq:
        what = "a conv stem (export it to ONNX)"
    elif seq is not None and "fcn" in seq:
        what = "an fcn branch (export it to ONNX)"
    elif getattr(seq, "summary", None) is not None:
        what = "a sequence head reading other final states than the last layer's (summary)"
    elif rnn.cell_options.get("activations") is not None:
        what = "non-default activations (the export uses LiteRT's sigmoid/tanh/relu ops)"
    elif any(s is not None and s["bits"] != 8 for s in spec):
        what = f"{spec[0]['bits']}-bit weights (LiteRT export takes float or int8)"
    elif streaming and rnn.bidirectional:
        what = "a bidirectional model as streaming (the reverse direction needs the whole input)"
    elif streaming and getattr(seq, "pool", "last") == "mean":
        what = "a mean-pooled head as streaming (it needs the whole input)"
    if what:
        raise UnsupportedError(f"TFLite export cannot express {what}")


INT8_FORMS = ("dequantize", "hybrid")


def build_tflite(model, batch_size: int = 1, streaming: bool = False,
                 int8: str = "dequantize") -> bytes:
    """The LiteRT flatbuffer of ``model`` (an ``edgelstm`` stack or ``SequenceModel``).

    Input ``(batch_size, T, I)`` (``(T, batch_size, I)`` if not
    ``batch_first``) with dynamic ``T``; output named as the model's first
    output: ``(B, T, C)`` frame head, ``(B, C)`` sequence head, ``(B, T, dirs*H)``
    without a head. ``streaming`` adds inputs ``h0``/``c0`` and outputs
    ``h_n``/``c_n``, each ``(L, B, H)`` (``c`` for LSTM only).

    ``int8`` says how an MLX int8 model's weights reach the kernels:
    ``"dequantize"`` (int8 in the file, ``DEQUANTIZE`` to float32: LiteRT
    computes what the MLX int8 model does) or ``"hybrid"`` (LiteRT's
    dynamic-range kernels take the int8 weights and quantize activations on
    the fly; the sequence LSTM/RNN ops read one scale per gate tensor, so
    their weights are re-quantized per tensor). Float models ignore it.
    """
    from edgelstm.converters.onnx_export import _head_weight, _split_model

    check_exportable(model, streaming)
    seq, rnn = _split_model(model)
    if int8 not in INT8_FORMS:
        raise ConversionError(f"int8 must be one of {', '.join(INT8_FORMS)}, got {int8!r}")
    if not 1 <= batch_size <= 65536:
        raise ConversionError(f"batch_size must be 1..65536, got {batch_size}")
    B, I, H, L = batch_size, rnn.input_size, rnn.hidden_size, rnn.num_layers
    m = ModelBuilder()
    g = m.graph("main")
    ctx = Ctx(m, B, H, not rnn.batch_first, hybrid=int8 == "hybrid")
    lead, sig = ([1, B], [-1, B]) if ctx.time_major else ([B, 1], [B, -1])
    names = (seq.input_names, seq.output_names) if seq is not None else (["input"], ["output"])
    x = first = g.tensor(names[0][0], [*lead, I], signature=[*sig, I])
    g.inputs = [first]
    lstm = rnn.cell_type == "lstm"
    states = []
    if streaming:
        states = [g.tensor(n, [L, B, H]) for n in (("h0", "c0") if lstm else ("h0",))]
        g.inputs += states
    if seq is not None and "norm" in seq:
        centred = g.op("SUB", [x, g.const("norm.mean", np.array(seq.norm.mean, np.float32))],
                       [g.like("norm.centred", x)])
        x = g.op("DIV", [centred, g.const("norm.std", np.array(seq.norm.std, np.float32))],
                 [g.like("norm.out", x)])
    finals_h, finals_c, last = [], [], []
    for k, layer in enumerate(rnn.layers):
        cells = [layer.forward, layer.reverse] if rnn.bidirectional else [layer.forward]
        ys, last = [], []
        for d, cell in enumerate(cells):
            label = f"l{k}" + (".rev" if d else "")
            h0, c0 = (_row(g, s, k, f"{label}.{n}0") for n, s in zip("hc", [*states, None, None][:2],
                                                                     strict=True))
            y, h_n, c_n = direction(ctx, g, cell, rnn.cell_type, x, d == 1, streaming, label,
                                    h0, c0 if lstm else None)
            ys.append(y)
            last.append(h_n)
            finals_h.append(h_n)
            finals_c.append(c_n)
        x = ys[0] if len(ys) == 1 else g.op(
            "CONCATENATION", ys, [g.like(f"l{k}.y", ys[0], last=2 * H)],
            "ConcatenationOptions", axis=2)
    out = _head(g, ctx, seq, x, last, names[1][0], _head_weight)
    g.outputs = [out]
    if streaming:
        g.outputs.append(_stack(g, finals_h, "h_n", L, B, H))
        if lstm:
            g.outputs.append(_stack(g, finals_c, "c_n", L, B, H))
    return m.finish("edgelstm export")


def _row(g, state, k: int, name: str):
    """Row ``k`` ``(B, H)`` of a state input ``(L, B, H)`` (``None`` passes through)."""
    if state is None:
        return None
    shape = g.tensors[state].shape[1:]
    return g.op("GATHER", [state, g.const(name + ".index", k, "int32")],
                [g.tensor(name, shape)], "GatherOptions", axis=0)


def _stack(g, rows, name: str, L: int, B: int, H: int) -> int:
    return g.op("PACK", rows, [g.tensor(name, [L, B, H])], "PackOptions", valuesCount=L, axis=0)


def _head(g, ctx, seq, x, last, out_name, head_weight) -> int:
    """The head on the stack's output ``x`` ``(B, T, F)`` or its final states ``last``."""
    head = seq.head_type if seq is not None else None
    if head is None:
        g.tensors[x].name = out_name
        return x
    B = ctx.B
    if head == "sequence" and seq.pool == "mean":
        width = g.tensors[x].shape[-1]
        x = g.op("MEAN", [x, g.const("pool.axis", [ctx.t_axis], "int32")],
                 [g.tensor("pool.mean", [B, width])], "ReducerOptions", keepDims=False)
    elif head == "sequence":
        x = last[0] if len(last) == 1 else g.op(
            "CONCATENATION", last, [g.tensor("last_steps", [B, ctx.H * len(last)])],
            "ConcatenationOptions", axis=1)
    C = seq.num_outputs
    bias = seq.head.get("bias")
    out = (g.tensor(out_name, [B, C]) if head == "sequence"
           else g.like(out_name, x, last=C))
    return g.op("FULLY_CONNECTED", [x, g.const("head.weight", head_weight(seq.head)),
                                    -1 if bias is None else g.const("head.bias", np.array(bias))],
                [out], "FullyConnectedOptions", keepNumDims=head == "frame")


def to_tflite(model, path: str | os.PathLike, batch_size: int = 1, streaming: bool = False,
              force: bool = False, int8: str = "dequantize") -> Path:
    """Write ``model`` as a ``.tflite`` file (atomically); see :func:`build_tflite`."""
    from edgelstm.io.fileio import atomic_output

    data = build_tflite(model, batch_size=batch_size, streaming=streaming, int8=int8)
    path = Path(path)
    with atomic_output(path, force=force) as tmp:
        Path(tmp).write_bytes(data)
    return path
