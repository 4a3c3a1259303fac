"""Export an edgelstm model to ONNX: standard LSTM/GRU/RNN ops, one node per layer.

The graph is batch-first at its edges and time-major inside: each recurrent
node uses ``layout=0`` (ONNX Runtime's CPU kernels refuse ``layout=1``) with
``Transpose`` nodes around the stack. Normalisation is ``Sub``/``Div``, a
frame head ``MatMul``+``Add``, a sequence head ``Gemm`` on the last layer's
final hidden state(s) ``Y_h`` (directions concatenated, as
``SequenceModel._last_step``); a mean-pooling head (``pool: "mean"``)
``ReduceSum`` over time divided by the lengths (or ``T``), then ``Gemm``.
Batch and time axes are dynamic.

A streaming export adds ``h0``/``c0`` inputs and ``h_n``/``c_n`` outputs,
each ``(layers*dirs, B, H)``, as icefall/sherpa-onnx do; the config is
mirrored in ``metadata_props`` (``edgelstm_config`` plus sherpa-style keys).

A ``lengths`` export adds an int32 input ``lengths`` ``(B,)`` fed to every
recurrent node's ``sequence_lens``: past a sequence's length ``Y`` is zero
and ``Y_h`` is the state at its last valid step, as ``SequenceModel`` with
``lengths`` (a frame head there gives its bias, on either side).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from mlx.utils import tree_flatten

from edgelstm.converters import gates
from edgelstm.errors import ConversionError, UnsupportedError

DEFAULT_OPSET = 17
MIN_OPSET = 14  # layout attribute and the Reshape/Squeeze forms used here
STATE_INPUTS = ("h0", "c0")
STATE_OUTPUTS = ("h_n", "c_n")
LENGTHS_INPUT = "lengths"  # the name edgelstm.runtime.inference.run_native also takes

# our activation spec name -> ONNX name (ONNX names are case-sensitive)
_ONNX_ACT = {
    "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "affine": "Affine",
    "leakyrelu": "LeakyRelu", "thresholdedrelu": "ThresholdedRelu", "scaledtanh": "ScaledTanh",
    "hardsigmoid": "HardSigmoid", "elu": "Elu", "softsign": "Softsign", "softplus": "Softplus",
}
_USES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_USES_BETA = {"affine", "scaledtanh", "hardsigmoid"}


def _split_model(model):
    """Return ``(sequence model or None, recurrent stack)``."""
    from edgelstm.nn.layers import Recurrent
    from edgelstm.nn.model import SequenceModel

    if isinstance(model, SequenceModel):
        return model, model.rnn
    if isinstance(model, Recurrent):
        return None, model
    raise ConversionError(f"cannot export a {type(model).__name__}: not an edgelstm model")


def _np(a) -> np.ndarray:
    return np.array(a, dtype=np.float32)


class _Graph:
    """Accumulates nodes and initializers with unique names."""

    def __init__(self):
        from onnx import helper

        self.helper = helper
        self.nodes, self.inits = [], []
        self._n = 0

    def init(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, outputs=None, **attrs):
        self._n += 1
        outs = outputs or [f"{op.lower()}_{self._n}" + (f"_{i}" if i else "") for i in range(n_out)]
        self.nodes.append(self.helper.make_node(op, inputs, outs, name=f"{op}_{self._n}", **attrs))
        return outs if n_out > 1 else outs[0]


def _activation_attrs(cell_type: str, options: dict, dirs: int) -> dict:
    """``activations``/``activation_alpha``/``activation_beta`` when not the op's defaults."""
    acts = options.get("activations")
    if acts is None and cell_type == "rnn":
        if options.get("nonlinearity", "tanh") == "tanh":
            return {}
        acts = [[options["nonlinearity"], None, None]]
    if acts is None:
        return {}
    names, alphas, betas = [], [], []
    for name, alpha, beta in acts:
        names.append(_ONNX_ACT[name])
        if name in _USES_ALPHA:
            alphas.append(float(alpha))
        if name in _USES_BETA:
            betas.append(float(beta))
    attrs = {"activations": names * dirs}
    if alphas:
        attrs["activation_alpha"] = alphas * dirs
    if betas:
        attrs["activation_beta"] = betas * dirs
    return attrs


def _layer_weights(rnn, k: int) -> dict[str, np.ndarray | None]:
    """ONNX ``W, R, B, P`` of layer ``k``, directions stacked on axis 0."""
    cells = rnn._cells(rnn.layers[k])
    per_dir = []
    for cell in cells:
        # Attribute access, not parameters(): a quantized cell's Wx/Wh properties
        # expand its int8 storage to float; parameters() would hand back raw int8.
        p = {name: _np(getattr(cell, name)) for name, _ in tree_flatten(cell.parameters())
             if "." not in name and not name.endswith("_scales")}
        if rnn.cell_type == "lstm":
            W, R, B, P = gates.lstm_to_onnx(p["Wx"], p["Wh"], p.get("bias"), p.get("peephole"))
        elif rnn.cell_type == "gru":
            W, R, B = gates.gru_to_onnx(p["Wx"], p["Wh"], p.get("b"), p.get("bhn"))
            P = None
        else:
            W, R, B = gates.rnn_to_onnx(p["Wxh"], p["Whh"], p.get("bias"))
            P = None
        per_dir.append((W, R, B, P))
    stacked = {}
    for i, key in enumerate("WRBP"):
        parts = [d[i] for d in per_dir]
        stacked[key] = None if parts[0] is None else np.stack(parts).astype(np.float32)
    return stacked


def _head_weight(head) -> np.ndarray:
    """Float head weights ``(C, F)``, expanding an MLX ``QuantizedLinear``."""
    import mlx.core as mx
    import mlx.nn as nn

    if isinstance(head, nn.QuantizedLinear):
        return _np(mx.dequantize(head.weight, head.scales, head.get("biases"),
                                 group_size=head.group_size, bits=head.bits, mode=head.mode))
    return _np(head.weight)


def _metadata(model, seq, rnn, streaming: bool, lengths: bool) -> dict[str, str]:
    from edgelstm import __version__
    from edgelstm.io.checkpoint import model_config

    meta = {
        "edgelstm_config": json.dumps(model_config(model), sort_keys=True),
        "edgelstm_version": __version__,
        "model_type": rnn.cell_type,
        "version": "1",
        "input_size": str(seq.input_size if seq is not None else rnn.input_size),
        "hidden_size": str(rnn.hidden_size),
        "num_layers": str(rnn.num_layers),
        "num_directions": str(rnn.num_directions),
        "bidirectional": str(int(rnn.bidirectional)),
        "streaming": str(int(streaming)),
        "lengths": str(int(lengths)),
        "head": str(seq.head_type if seq is not None else None),
    }
    if seq is not None and seq.labels:
        meta["labels"] = json.dumps(seq.labels)
    return meta


def build_onnx(model, opset: int = DEFAULT_OPSET, streaming: bool = False,
               lengths: bool = False):
    """Build the ONNX ``ModelProto`` of an edgelstm model (not yet checked or saved).

    Args:
        model: ``edgelstm.LSTM``/``GRU``/``RNN`` or ``SequenceModel``.
        opset: default-domain opset, 14 or newer.
        streaming: add state inputs ``h0``/``c0`` and outputs ``h_n``/``c_n``.
        lengths: add the int32 input ``lengths`` ``(B,)``, every recurrent
            node's ``sequence_lens``.

    Returns:
        An ``onnx.ModelProto`` with input ``(B, T, I)`` and outputs as described
        in the module docstring.
    """
    from onnx import TensorProto, helper

    seq, rnn = _split_model(model)
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConversionError(f"opset must be {MIN_OPSET} or newer, got {opset!r}")
    if opset > helper.VERSION_TABLE[-1][2]:
        raise ConversionError(f"opset {opset} is newer than this onnx supports "
                              f"({helper.VERSION_TABLE[-1][2]})")
    stem = seq.stem if seq is not None and "stem" in seq else None
    if streaming and stem is not None:
        raise UnsupportedError("a model with a conv stem cannot stream: the stem's input window "
                               "is not carried as state; export it without --streaming")
    fcn = seq.fcn if seq is not None and "fcn" in seq else None
    if streaming and fcn is not None:
        raise UnsupportedError("a model with an fcn branch cannot stream: its pooled conv "
                               "features are not carried as state; export it without --streaming")
    if streaming and rnn.bidirectional:
        raise UnsupportedError("a bidirectional model cannot stream: its reverse direction "
                               "needs the whole sequence; export it without --streaming")
    is_lstm = rnn.cell_type == "lstm"
    dirs, H, L = rnn.num_directions, rnn.hidden_size, rnn.num_layers
    in_name = seq.input_names[0] if seq is not None else "input"
    out_name = seq.output_names[0] if seq is not None else "output"
    if in_name in (*STATE_INPUTS, LENGTHS_INPUT) or out_name in (*STATE_OUTPUTS, LENGTHS_INPUT):
        raise ConversionError(f"input/output names {in_name!r}/{out_name!r} clash with the "
                              "names h0, c0, h_n, c_n, lengths")
    g = _Graph()
    f32 = TensorProto.FLOAT

    x = in_name
    if seq is not None and "norm" in seq:
        x = g.node("Sub", [x, g.init("norm.mean", _np(seq.norm.mean))])
        x = g.node("Div", [x, g.init("norm.std", _np(seq.norm.std))])
    seq_lens = LENGTHS_INPUT
    branch = None
    if fcn is not None:  # reads the normalised input, beside the stem and stack
        from edgelstm.converters.onnx_fcn import fcn_branch

        branch = fcn_branch(g, fcn, x, LENGTHS_INPUT if lengths else None)
    if stem is not None:
        x = _stem(g, stem, x)  # (T', B, C), time-major for the stack
        if lengths:  # max(L // s, 1), as edgelstm.nn.stem.stem_lengths
            seq_lens = g.node("Max", [g.node("Div", [LENGTHS_INPUT, g.init(
                "stem.stride", np.array(stem.stride, np.int32))]),
                g.init("stem.one", np.array(1, np.int32))])
    elif rnn.batch_first:
        x = g.node("Transpose", [x], perm=[1, 0, 2])  # (T, B, I)
    merge = g.init("shape_T_B_merge", np.array([0, 0, -1], np.int64))

    attrs = {"hidden_size": H, "direction": "bidirectional" if dirs == 2 else "forward"}
    opts = rnn.cell_options
    if opts.get("clip") is not None:
        attrs["clip"] = float(opts["clip"])
    if rnn.cell_type == "lstm" and opts.get("input_forget"):
        attrs["input_forget"] = 1
    if rnn.cell_type == "gru":
        attrs["linear_before_reset"] = int(bool(opts.get("linear_before_reset", True)))
    attrs.update(_activation_attrs(rnn.cell_type, opts, dirs))
    op = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[rnn.cell_type]

    y_h, y_c = [], []
    for k in range(L):
        w = _layer_weights(rnn, k)
        ins = [x, g.init(f"layers.{k}.W", w["W"]), g.init(f"layers.{k}.R", w["R"]),
               g.init(f"layers.{k}.B", w["B"]) if w["B"] is not None else "",
               seq_lens if lengths else ""]
        if streaming:
            starts = g.init(f"state_start_{k}", np.array([k * dirs], np.int64))
            ends = g.init(f"state_end_{k}", np.array([(k + 1) * dirs], np.int64))
            axes = g.init("state_axes", np.array([0], np.int64)) if k == 0 else "state_axes"
            ins.append(g.node("Slice", ["h0", starts, ends, axes]))
            if is_lstm:
                ins.append(g.node("Slice", ["c0", starts, ends, axes]))
        if is_lstm and w["P"] is not None:
            ins += [""] * (7 - len(ins)) + [g.init(f"layers.{k}.P", w["P"])]
        while ins and ins[-1] == "":
            ins.pop()
        outs = g.node(op, ins, n_out=3 if is_lstm else 2, **attrs)
        y_h.append(outs[1])
        if is_lstm:
            y_c.append(outs[2])
        # Y (T, dirs, B, H) -> (T, B, dirs*H), directions concatenated [forward, reverse]
        y = g.node("Transpose", [outs[0]], perm=[0, 2, 1, 3])
        x = g.node("Reshape", [y, merge])
    # (B, T, dirs*H); a time-major model keeps (T, B, dirs*H)
    y = g.node("Transpose", [x], perm=[1, 0, 2]) if rnn.batch_first else x

    head = seq.head_type if seq is not None else None
    out_dim = seq.num_outputs if seq is not None else rnn.output_size
    if head == "frame":
        Wt = g.init("head.weight_t", _head_weight(seq.head).T)
        y = g.node("MatMul", [y, Wt])
        y = g.node("Add", [y, g.init("head.bias", _np(seq.head.bias))], outputs=[out_name])
    elif head == "sequence" and getattr(seq, "pool", "last") == "mean":
        if streaming:
            raise UnsupportedError("a mean-pooling model cannot stream: its head averages the "
                                   "whole sequence; export it without --streaming")
        t_axis = 1 if rnn.batch_first else 0
        # Y is zero past each length (sequence_lens), so the sum covers valid steps only
        total = g.node("ReduceSum", [y, g.init("pool_axes", np.array([t_axis], np.int64))],
                       keepdims=0)  # (B, F)
        if lengths:
            count = g.node("Cast", [seq_lens], to=TensorProto.FLOAT)
            count = g.node("Unsqueeze", [count, g.init("pool_unsq", np.array([1], np.int64))])
        else:
            shape = g.node("Shape", [y])
            count = g.node("Gather", [shape, g.init("pool_t_idx", np.array([t_axis], np.int64))])
            count = g.node("Cast", [count], to=TensorProto.FLOAT)  # (1,)
        y = _sequence_head(g, seq, g.node("Div", [total, count]), branch, out_name)
    elif head == "sequence" and getattr(seq, "summary", None) is not None:
        # the head reads chosen rows of the final state (L*dirs, B, H), in order
        every = g.node("Concat", y_h, axis=0) if len(y_h) > 1 else y_h[0]
        rows = g.node("Gather", [every, g.init("summary_rows", np.array(seq.summary, np.int64))],
                      axis=0)  # (n, B, H)
        last = g.node("Transpose", [rows], perm=[1, 0, 2])  # (B, n, H)
        last = g.node("Reshape", [last, g.init("shape_B_merge", np.array([0, -1], np.int64))])
        y = _sequence_head(g, seq, last, branch, out_name)
    elif head == "sequence":
        last = g.node("Transpose", [y_h[-1]], perm=[1, 0, 2])  # (B, dirs, H)
        last = g.node("Reshape", [last, g.init("shape_B_merge", np.array([0, -1], np.int64))])
        y = _sequence_head(g, seq, last, branch, out_name)
    else:
        y = g.node("Identity", [y], outputs=[out_name])

    bt = ["batch", "time"] if rnn.batch_first else ["time", "batch"]
    out_shape = ["batch", out_dim] if head == "sequence" else [*bt, out_dim]
    width = seq.input_size if seq is not None else rnn.input_size
    inputs = [helper.make_tensor_value_info(in_name, f32, [*bt, width])]
    if lengths:  # sequence_lens is int32 in every opset; no Cast needed
        inputs.append(helper.make_tensor_value_info(LENGTHS_INPUT, TensorProto.INT32, ["batch"]))
    outputs = [helper.make_tensor_value_info(out_name, f32, out_shape)]
    if streaming:
        state_shape = [L * dirs, "batch", H]
        for i, name in enumerate(STATE_INPUTS[: 2 if is_lstm else 1]):
            inputs.append(helper.make_tensor_value_info(name, f32, state_shape))
            g.node("Concat", y_h if i == 0 else y_c, outputs=[STATE_OUTPUTS[i]], axis=0)
            outputs.append(helper.make_tensor_value_info(STATE_OUTPUTS[i], f32, state_shape))

    graph = helper.make_graph(g.nodes, f"edgelstm_{rnn.cell_type}", inputs, outputs, g.inits)
    onnx_model = helper.make_model_gen_version(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgelstm")
    helper.set_model_props(onnx_model, _metadata(model, seq, rnn, streaming, lengths))
    return onnx_model


def _sequence_head(g: _Graph, seq, features: str, branch: str | None, out_name: str) -> str:
    """``Gemm`` head on the stack's ``(B, F)`` summary, after it the fcn branch's when present."""
    if branch is not None:
        features = g.node("Concat", [features, branch], axis=1)
    return g.node("Gemm", [features, g.init("head.weight", _head_weight(seq.head)),
                           g.init("head.bias", _np(seq.head.bias))],
                  outputs=[out_name], transB=1)


def _stem(g: _Graph, stem, x: str) -> str:
    """Causal strided ``Conv`` + ``Relu`` of :class:`edgelstm.nn.stem.ConvStem`.

    ``x (B, T, I)`` -> ``(T // s, B, C)``: ``pads`` ``[k - s, 0]`` is the
    stem's left zero padding; MLX's ``(C, k, I)`` weight becomes ONNX's ``(C, I, k)``.
    """
    x = g.node("Transpose", [x], perm=[0, 2, 1])  # (B, I, T)
    weight = np.ascontiguousarray(_np(stem.conv.weight).transpose(0, 2, 1))
    x = g.node("Conv", [x, g.init("stem.conv.weight", weight),
                        g.init("stem.conv.bias", _np(stem.conv.bias))],
               kernel_shape=[stem.kernel], strides=[stem.stride],
               pads=[stem.kernel - stem.stride, 0])
    x = g.node("Relu", [x])  # (B, C, T')
    return g.node("Transpose", [x], perm=[2, 0, 1])


def to_onnx(model, path: str | os.PathLike, opset: int = DEFAULT_OPSET,
            streaming: bool = False, force: bool = False, lengths: bool = False) -> Path:
    """Export ``model`` to an ONNX file (checked with ``full_check=True``).

    Args:
        model: ``edgelstm.LSTM``/``GRU``/``RNN`` or ``SequenceModel``.
        path: output ``.onnx`` file; must not exist unless ``force``.
        opset: default-domain opset, 14 or newer. Default: ``17``.
        streaming: add ``h0``/``c0`` inputs and ``h_n``/``c_n`` outputs
            ``(layers*dirs, B, H)``. Refused for bidirectional models.
        force: replace an existing file.
        lengths: add the int32 input ``lengths`` ``(B,)`` (valid steps per
            sequence, ONNX ``sequence_lens``) for padded batches.

    Returns:
        The written path.

    Raises:
        ConversionError, UnsupportedError: the model cannot be exported.
    """
    import onnx

    from edgelstm.io.fileio import atomic_output

    onnx_model = export_proto(model, opset=opset, streaming=streaming, lengths=lengths)
    with atomic_output(path, force=force) as tmp:
        onnx.save(onnx_model, str(tmp))
    return Path(path)


def _qdq_config(section: dict | None):
    """The QDQ config that reproduces a quantized model's weights exactly, or None.

    Re-quantizing int8 per-row weights after expanding them gives back the same
    int8 values, so gate weights stay int8 in QDQ form. The head (MLX affine,
    group-wise) and 4-bit weights have no exact QDQ twin: they export as their
    expanded float values.
    """
    if not section:
        return None
    import dataclasses

    from edgelstm.quantize import QuantConfig
    from edgelstm.quantize.config import Target

    config = QuantConfig.from_dict(section)
    targets = tuple(t for t in config.targets if t is not Target.HEAD)
    if config.bits != 8 or not targets:
        return None
    return dataclasses.replace(config, targets=targets)


def export_proto(model, opset: int = DEFAULT_OPSET, streaming: bool = False,
                 lengths: bool = False):
    """:func:`build_onnx`, in QDQ form for a quantized model, checked with ``full_check``.

    Raises:
        ConversionError: the graph fails the ONNX checker.
    """
    import onnx

    onnx_model = build_onnx(model, opset=opset, streaming=streaming, lengths=lengths)
    qdq = _qdq_config(getattr(model, "quantization", None))
    if qdq is not None:
        from edgelstm.quantize.onnx_qdq import qdq_quantize

        onnx_model = qdq_quantize(onnx_model, qdq)
    try:
        onnx.checker.check_model(onnx_model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ConversionError(f"exported graph fails the ONNX checker: {exc}") from None
    return onnx_model
