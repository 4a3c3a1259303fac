"""Export an edgelstm LSTM model to a LiteRT (TFLite) flatbuffer, without TensorFlow.

The flatbuffer is built with the schema module that ships in the
``ai-edge-litert`` wheel (``pip install 'edgelstm[litert]'``). Graph:

- normalisation: ``SUB`` mean, ``DIV`` std (per feature, broadcast);
- each LSTM layer: one ``UNIDIRECTIONAL_SEQUENCE_LSTM`` op (float32,
  ``timeMajor`` = not ``batch_first``, tanh cell/output activation); its
  ``h``/``c`` states are variable tensors ``(B, H)``;
- frame head: ``FULLY_CONNECTED`` with ``keepNumDims`` on ``(B, T, H)``;
  sequence head: ``STRIDED_SLICE`` of the last step, then ``FULLY_CONNECTED``.

The batch size is fixed at export (``batch_size``, default 1: the LSTM
kernel sizes its state tensors by it); the time axis is dynamic
(``shape_signature`` ``-1``: resize the input, then allocate). The state
tensors persist between ``invoke`` calls, which streams a sequence in
chunks; call ``interpreter.reset_all_variables()`` before an unrelated one
(:func:`edgelstm.converters.litert_run.run_tflite` does).

Refused by name: GRU and RNN (LiteRT has no sequence op for them),
bidirectional stacks, peepholes, ``clip`` (LiteRT clips the cell state, ONNX
and edgelstm the gate inputs), coupled input-forget gates and non-default
activations. Int8 (MLX-quantized) weights are exported dequantized, float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelstm.errors import ConversionError, UnsupportedError

INSTALL_HINT = "pip install 'edgelstm[litert]' (or pip install ai-edge-litert)"
_LSTM_INPUTS = 24  # UNIDIRECTIONAL_SEQUENCE_LSTM's input list (optional ones are -1)


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise UnsupportedError(f"TFLite export needs ai-edge-litert; {INSTALL_HINT}") from None
    return schema


def check_exportable(model) -> None:
    """Refuse what the TFLite graph cannot express, naming it.

    Raises:
        UnsupportedError: GRU/RNN, bidirectional, peepholes, clip,
        input_forget or custom activations.
    """
    from edgelstm.converters.onnx_export import _split_model

    seq, rnn = _split_model(model)
    opts = rnn.cell_options
    what = None
    if getattr(seq, "summary", None) is not None:
        what = "a sequence head reading other final states than the last layer's (summary)"
    elif rnn.cell_type != "lstm":
        what = (f"a {rnn.cell_type.upper()} (LiteRT has a sequence op for LSTM only; "
                "export ONNX instead)")
    elif rnn.bidirectional:
        what = "a bidirectional LSTM (exported as unidirectional ops only)"
    elif opts.get("peephole"):
        what = "peephole connections"
    elif opts.get("clip") is not None:
        what = "clip (LiteRT's cell_clip clips the cell state, not the gate inputs)"
    elif opts.get("input_forget"):
        what = "coupled input-forget gates (input_forget)"
    elif opts.get("activations") is not None:
        what = "non-default activations (LiteRT's LSTM is sigmoid/tanh)"
    if what:
        raise UnsupportedError(f"TFLite export cannot express {what}")


class _Builder:
    """Tensors, buffers and operators of one subgraph, as schema ``*T`` objects."""

    def __init__(self, schema):
        self.s = schema
        self.tensors, self.buffers, self.ops, self.codes = [], [schema.BufferT()], [], []

    def tensor(self, name: str, shape, data: np.ndarray | None = None, dtype: str = "float32",
               signature=None, variable: bool = False) -> int:
        t = self.s.TensorT()
        t.name, t.shape = name, list(shape)
        t.type = {"float32": self.s.TensorType.FLOAT32, "int32": self.s.TensorType.INT32}[dtype]
        if signature is not None:
            t.shapeSignature = list(signature)
        t.isVariable = variable
        t.buffer = 0
        if data is not None:
            b = self.s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data, dtype).tobytes(), np.uint8)
            self.buffers.append(b)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def const(self, name: str, value, dtype: str = "float32") -> int:
        arr = np.asarray(value, dtype)
        return self.tensor(name, arr.shape, arr, dtype)

    def op(self, code: str, inputs, outputs, options_type: str | None = None, options=None):
        builtin = getattr(self.s.BuiltinOperator, code)
        if builtin not in self.codes:
            self.codes.append(builtin)
        o = self.s.OperatorT()
        o.opcodeIndex = self.codes.index(builtin)
        o.inputs, o.outputs = list(inputs), list(outputs)
        if options_type:
            o.builtinOptionsType = getattr(self.s.BuiltinOptions, options_type)
            o.builtinOptions = options
        self.ops.append(o)

    def model(self, inputs, outputs, description: str):
        s = self.s
        sg = s.SubGraphT()
        sg.tensors, sg.operators, sg.name = self.tensors, self.ops, "main"
        sg.inputs, sg.outputs = list(inputs), list(outputs)
        m = s.ModelT()
        m.version, m.description = 3, description
        m.subgraphs, m.buffers = [sg], self.buffers
        m.operatorCodes = []
        for builtin in self.codes:
            c = s.OperatorCodeT()
            c.builtinCode, c.deprecatedBuiltinCode, c.version = builtin, min(builtin, 127), 1
            m.operatorCodes.append(c)
        return m


def _lstm_weights(cell) -> dict[str, np.ndarray]:
    """A cell's ``Wx (4H, I)``, ``Wh (4H, H)``, summed ``bias (4H,)`` (zeros if none), float32."""
    wx = np.array(cell.Wx, np.float32)  # attribute access expands int8 storage
    wh = np.array(cell.Wh, np.float32)
    bias = cell.get("bias")
    b = np.zeros(wx.shape[0], np.float32) if bias is None else np.array(bias, np.float32)
    return {"Wx": wx, "Wh": wh, "bias": b}


def build_tflite(model, batch_size: int = 1) -> bytes:
    """The LiteRT flatbuffer of ``model`` (an ``edgelstm.LSTM`` or ``SequenceModel``).

    Input ``(batch_size, T, I)`` (``(T, batch_size, I)`` if not
    ``batch_first``) with dynamic ``T``; output named as the model's first
    output: ``(B, T, C)`` frame head, ``(B, C)`` sequence head, ``(B, T, H)``
    without a head.
    """
    from edgelstm.converters.onnx_export import _head_weight, _split_model

    check_exportable(model)
    s = _schema()
    seq, rnn = _split_model(model)
    if not 1 <= batch_size <= 65536:
        raise ConversionError(f"batch_size must be 1..65536, got {batch_size}")
    B, I, H = batch_size, rnn.input_size, rnn.hidden_size
    tm = not rnn.batch_first
    lead, sig = ([1, B], [-1, B]) if tm else ([B, 1], [B, -1])
    g = _Builder(s)
    names = (seq.input_names, seq.output_names) if seq is not None else (["input"], ["output"])
    x = first = g.tensor(names[0][0], [*lead, I], signature=[*sig, I])
    if seq is not None and "norm" in seq:
        mean = g.const("norm.mean", np.array(seq.norm.mean, np.float32))
        std = g.const("norm.std", np.array(seq.norm.std, np.float32))
        centred = g.tensor("norm.centred", [*lead, I], signature=[*sig, I])
        g.op("SUB", [x, mean], [centred], "SubOptions", s.SubOptionsT())
        x = g.tensor("norm.out", [*lead, I], signature=[*sig, I])
        g.op("DIV", [centred, std], [x], "DivOptions", s.DivOptionsT())
    for k, layer in enumerate(rnn.layers):
        w = _lstm_weights(layer.forward)
        ins = [x]
        for part, name in (("Wx", "input"), ("Wh", "recurrent")):
            for gate, rows in zip("ifgo", np.split(w[part], 4), strict=True):
                ins.append(g.const(f"lstm{k}.{name}_{gate}", rows))
        ins += [-1, -1, -1]  # peepholes
        ins += [g.const(f"lstm{k}.bias_{gate}", b)
                for gate, b in zip("ifgo", np.split(w["bias"], 4), strict=True)]
        ins += [-1, -1]  # projection
        ins += [g.tensor(f"lstm{k}.h", [B, H], variable=True),
                g.tensor(f"lstm{k}.c", [B, H], variable=True)]
        ins += [-1] * (_LSTM_INPUTS - len(ins))  # layer-norm coefficients
        x = g.tensor(f"lstm{k}.y", [*lead, H], signature=[*sig, H])
        opts = s.UnidirectionalSequenceLSTMOptionsT()
        opts.fusedActivationFunction = s.ActivationFunctionType.TANH
        opts.timeMajor = tm
        g.op("UNIDIRECTIONAL_SEQUENCE_LSTM", ins, [x], "UnidirectionalSequenceLSTMOptions", opts)
    head = seq.head_type if seq is not None else None
    if head == "sequence":
        last = g.tensor("last_step", [B, H])
        sl = s.StridedSliceOptionsT()
        axis = 0 if tm else 1
        sl.beginMask = sl.endMask = 0b111 & ~(1 << axis)
        sl.shrinkAxisMask = 1 << axis
        begin = [0, 0, 0]
        begin[axis] = -1
        g.op("STRIDED_SLICE", [x, g.const("slice.begin", begin, "int32"),
                               g.const("slice.end", [0, 0, 0], "int32"),
                               g.const("slice.strides", [1, 1, 1], "int32")],
             [last], "StridedSliceOptions", sl)
        x = last
    if head is not None:
        C = seq.num_outputs
        fc = s.FullyConnectedOptionsT()
        fc.keepNumDims = head == "frame"
        shape, signature = ([B, C], None) if head == "sequence" else ([*lead, C], [*sig, C])
        out = g.tensor(names[1][0], shape, signature=signature)
        bias = seq.head.get("bias")
        g.op("FULLY_CONNECTED", [x, g.const("head.weight", _head_weight(seq.head)),
                                 -1 if bias is None else g.const("head.bias", np.array(bias))],
             [out], "FullyConnectedOptions", fc)
        x = out
    else:
        g.tensors[x].name = names[1][0]
    return _pack(s, g.model([first], [x], "edgelstm export"))


def _pack(schema, model_t) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model_t.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def to_tflite(model, path: str | os.PathLike, batch_size: int = 1, force: bool = False) -> Path:
    """Write ``model`` as a ``.tflite`` file (atomically); see :func:`build_tflite`."""
    from edgelstm.io.fileio import atomic_output

    data = build_tflite(model, batch_size=batch_size)
    path = Path(path)
    with atomic_output(path, force=force) as tmp:
        Path(tmp).write_bytes(data)
    return path
