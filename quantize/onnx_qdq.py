"""Portable int8 ONNX: QDQ weights feeding the standard ``LSTM``/``GRU``/``RNN``.

The writer is a transformation of a float ONNX model, so it works on any
exporter's output, subgraphs of ``If``/``Loop``/``Scan`` included: each
recurrent node's ``W`` and ``R`` initializers (and, on request, the weights of
``MatMul``/``Gemm`` and ``Conv``/``ConvTranspose``) become int8 initializers
plus per-output-channel scales, and a ``DequantizeLinear`` node, placed first
in the graph that owns the initializer, produces a tensor of the original
name, which every consumer reads as before. Two lossless size savings, both
constant-folded by ONNX Runtime:

- Scales are rounded to the float16 grid as :func:`~edgelstm.quantize.mlx_quant.quantize_rows`
  does (so QDQ and MLX int8 agree on ``q``), stored as float16 and widened by
  ``Cast(to=FLOAT)``: ``DequantizeLinear`` returns its scale's type, and the
  ``q * s`` product must stay float32.
- A float32 ``B`` whose recurrent half ``Rb`` is all +0.0 (edgelstm's export
  puts every LSTM/RNN bias in ``Wb``) keeps only ``Wb``;
  ``Concat(Wb, ConstantOfShape)`` rebuilds it.

Every other node, initializer, input, output and attribute is kept as it
was (protobuf-equal).

Opset: QDQ graphs are written at opset >= 19 when onnx's version converter
gets there without changing any node of the graph (then the raise is only a
version number; edgelstm's own exports are such graphs). Otherwise a graph at
opset >= 13 keeps its opset: per-axis ``DequantizeLinear`` exists since 13
and ONNX Runtime and the MLX executor run it there, while ``onnx.reference``
implements it only from 19. A graph below 13 goes through the converter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from edgelstm.errors import UnsupportedError
from edgelstm.quantize.config import QuantConfig, Target
from edgelstm.quantize.mlx_quant import F16_MAX, F16_MIN_NORMAL

QDQ_MIN_OPSET = 19
PER_AXIS_MIN_OPSET = 13  # per-axis DequantizeLinear
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
QMAX = 127


def quantize_rows_np(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per index of ``axis``: ``w ~= q * s``.

    As the MLX ``quantize_rows``: scales go to the float16 grid when all of
    them are float16 normals, and ``q`` is computed from the rounded scales.
    """
    w = np.asarray(w, np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red)
    scales = np.where(amax > 0, amax / np.float32(QMAX), 1.0).astype(np.float32)
    if np.all((scales >= F16_MIN_NORMAL) & (scales <= F16_MAX)):
        scales = scales.astype(np.float16).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scales.reshape(shape)), -QMAX, QMAX).astype(np.int8)
    return q, scales


def _default_opset(model) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return o.version
    return 0


def upgrade_opset(model, opset: int = QDQ_MIN_OPSET):
    """Return ``model`` at default-domain opset >= ``opset`` (onnx's version converter)."""
    import onnx

    if _default_opset(model) >= opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises plain RuntimeError on unknown adapters
        raise UnsupportedError(f"cannot move the model to opset {opset} for QDQ: {exc}") from None


def qdq_opset(model):
    """``model`` at the opset its QDQ form is written in (see the module docstring).

    Returns:
        ``(model, note)``; ``note`` says what changed, or is ``None``.
    """
    old = _default_opset(model)
    if old >= QDQ_MIN_OPSET:
        return model, None
    try:
        raised = upgrade_opset(model)
    except UnsupportedError:
        raised = None
    if raised is not None and _same_graph(model.graph, raised.graph):
        # only the version number changes: keep the original protos (the converter
        # also writes inferred shapes into subgraphs' value_info)
        out = type(model)()
        out.CopyFrom(model)
        for o in out.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = _default_opset(raised)
        return out, None
    if old >= PER_AXIS_MIN_OPSET:
        return model, (f"kept opset {old}: raising it to {QDQ_MIN_OPSET} would change nodes "
                       f"(onnx.reference runs DequantizeLinear from {QDQ_MIN_OPSET} only)")
    if raised is None:
        upgrade_opset(model)  # raises, naming the converter's reason
    return raised, f"opset {old} raised to {QDQ_MIN_OPSET} by onnx's version converter"


def _same_graph(a, b) -> bool:
    """Nodes (subgraphs included, their value_info aside), initializers, inputs and
    outputs protobuf-equal."""
    if not all(list(getattr(a, f)) == list(getattr(b, f))
               for f in ("initializer", "input", "output")):
        return False
    if len(a.node) != len(b.node):
        return False
    for x, y in zip(a.node, b.node, strict=True):
        xs, ys = _subgraphs(x), _subgraphs(y)
        if len(xs) != len(ys) or not all(_same_graph(g, h) for g, h in zip(xs, ys, strict=True)):
            return False
        if _without_subgraphs(x) != _without_subgraphs(y):
            return False
    return True


def _subgraphs(node) -> list:
    return [g for a in node.attribute for g in ([a.g] if a.HasField("g") else [])
            + list(a.graphs)]


def _without_subgraphs(node):
    n = type(node)()
    n.CopyFrom(node)
    for a in n.attribute:
        a.ClearField("g")
        del a.graphs[:]
    return n


class _Writer:
    """Rewrites the initializers of one graph; ``outer`` is the enclosing graph's writer."""

    def __init__(self, graph, outer: _Writer | None = None):
        from onnx import numpy_helper

        self.graph = graph
        self.outer = outer
        self.np = numpy_helper
        # An initializer that is also a graph input can be overridden: not a constant.
        inputs = {i.name for i in graph.input}
        self.inits = {i.name: i for i in graph.initializer if i.name not in inputs}
        self.new_nodes = []
        self.done: set[str] = set()  # names already rewritten (a weight may be shared)
        self.quantized: list[str] = []
        self.compacted: list[str] = []

    def owner(self, name: str) -> _Writer | None:
        """The writer of the innermost graph holding initializer ``name`` (or that rewrote it)."""
        w = self
        while w is not None:
            if name in w.inits or name in w.done:
                return w
            w = w.outer
        return None

    def _float32_init(self, name: str):
        init = self.inits.get(name)
        return init if init is not None and init.data_type == 1 else None

    def _half_scales(self, s: np.ndarray, name: str) -> None:
        """Initializer ``name_fp16`` and a ``Cast`` to float32 ``name`` (exact: on the f16 grid)."""
        from onnx import TensorProto, helper

        half = s.astype(np.float16)
        if not np.array_equal(half.astype(np.float32), s):
            self.graph.initializer.append(self.np.from_array(s, name))
            return
        self.graph.initializer.append(self.np.from_array(half, f"{name}_fp16"))
        self.new_nodes.append(helper.make_node("Cast", [f"{name}_fp16"], [name],
                                               to=TensorProto.FLOAT, name=f"{name}_Cast"))

    def quantize(self, name: str, axis: int | None) -> bool:
        """Replace float32 initializer ``name`` with int8 + DequantizeLinear (``axis`` of the
        per-channel scales; ``None``: one scale). False if ``name`` is not one."""
        w = self.owner(name)
        if w is None:
            return False
        if name in w.done:
            return name in w.quantized
        return w._quantize(name, axis)

    def _quantize(self, name: str, axis: int | None) -> bool:
        from onnx import helper

        init = self._float32_init(name)
        if init is None:
            return False
        w = self.np.to_array(init)
        if w.size == 0:
            return False
        reshape = False
        if axis is None or w.ndim == 0:
            q, s = quantize_rows_np(w.reshape(1, -1), 0)
            q, s, deq_out, q_axis = q.reshape(w.shape), s.reshape(()), name, None
        elif w.ndim == 3 and axis == 1 and w.shape[0] > 1:
            # One scale per (direction, row): flatten, dequantize on axis 0, reshape back.
            flat = w.reshape(-1, w.shape[-1])
            q, s = quantize_rows_np(flat, 0)
            deq_out, q_axis, reshape = f"{name}_dequantized_flat", 0, True
        else:
            q, s = quantize_rows_np(w, axis)
            deq_out, q_axis = name, axis
        self.graph.initializer.remove(init)
        del self.inits[name]
        self.done.add(name)
        self.quantized.append(name)
        q_name, s_name = f"{name}_quantized", f"{name}_scale"
        # Symmetric: the zero point is omitted (0 by the spec), one byte per row saved.
        self.graph.initializer.append(self.np.from_array(q, q_name))
        self._half_scales(s, s_name)
        kw = {} if q_axis is None else {"axis": q_axis}
        self.new_nodes.append(helper.make_node(
            "DequantizeLinear", [q_name, s_name], [deq_out], name=f"{name}_DequantizeLinear",
            **kw))
        if reshape:
            shape_name = f"{name}_shape"
            self.graph.initializer.append(self.np.from_array(np.array(w.shape, np.int64),
                                                             shape_name))
            self.new_nodes.append(helper.make_node("Reshape", [deq_out, shape_name], [name],
                                                   name=f"{name}_Reshape"))
        return True

    def compact_bias(self, name: str) -> bool:
        """Store only ``Wb`` of a float32 ``B`` whose ``Rb`` half is all +0.0; False otherwise."""
        w = self.owner(name)
        if w is None or name in w.done:
            return False
        return w._compact_bias(name)

    def _compact_bias(self, name: str) -> bool:
        from onnx import TensorProto, helper

        init = self._float32_init(name)
        if init is None or len(init.dims) != 2 or init.dims[1] % 2:
            return False
        b = self.np.to_array(init)
        half = b.shape[1] // 2
        if np.any(b[:, half:].view(np.uint32)):  # bitwise: -0.0 must stay as written
            return False
        self.graph.initializer.remove(init)
        del self.inits[name]
        self.done.add(name)
        self.compacted.append(name)
        wb, shape = f"{name}_Wb", f"{name}_Rb_shape"
        self.graph.initializer.extend([
            self.np.from_array(np.ascontiguousarray(b[:, :half]), wb),
            self.np.from_array(np.array([b.shape[0], half], np.int64), shape)])
        zero = helper.make_tensor("value", TensorProto.FLOAT, [1], [0.0])
        self.new_nodes += [
            helper.make_node("ConstantOfShape", [shape], [f"{name}_Rb"], value=zero,
                             name=f"{name}_Rb_zeros"),
            helper.make_node("Concat", [wb, f"{name}_Rb"], [name], axis=1,
                             name=f"{name}_Concat")]
        return True

    def finish(self) -> None:
        """Put the new nodes first: they read only initializers and each other, in order."""
        nodes = self.new_nodes + list(self.graph.node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)


@dataclass
class QDQResult:
    """What :func:`qdq_rewrite` did.

    Attributes:
        model: the quantized ``ModelProto``.
        quantized: names of the weights now stored as int8 (graph order).
        recurrent: those of them that are recurrent ``W``/``R``.
        compacted: recurrent biases stored as their ``Wb`` half.
        skipped: ``"node: why"`` for target weights left as they were.
        notes: opset changes and similar.
    """

    model: object
    quantized: list[str] = field(default_factory=list)
    recurrent: list[str] = field(default_factory=list)
    compacted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _weight_axis(node, rank_of) -> tuple[int, int | None] | None:
    """``(input index, per-channel axis or None)`` of a MatMul/Gemm/Conv weight, else None."""
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Gemm":
        return 1, 0 if "transB" in attrs and attrs["transB"].i else 1
    if node.op_type == "MatMul":
        r = rank_of(node.input[1])
        return 1, (r - 1 if r and r >= 2 else None)  # one scale per output column
    if node.op_type == "Conv":
        return 1, 0  # (M, C/group, k...): output channels first
    if node.op_type == "ConvTranspose":  # (C, M/group, k...): per channel only without groups
        group = attrs["group"].i if "group" in attrs else 1
        return 1, 1 if group == 1 else None
    return None


def _rewrite(graph, config: QuantConfig, res: QDQResult, outer: _Writer | None) -> int:
    """Quantize the targets of ``graph`` and its subgraphs; returns the recurrent node count."""
    from onnx import AttributeProto

    w = _Writer(graph, outer)

    def rank_of(name):
        owner = w.owner(name)
        return len(owner.inits[name].dims) if owner and name in owner.inits else None

    n_rec = 0
    matmul = {"MatMul", "Gemm"} if Target.HEAD in config.targets else set()
    conv = {"Conv", "ConvTranspose"} if Target.CONV in config.targets else set()
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        label = f"{node.op_type} {node.name!r}" if node.name else node.op_type
        if node.op_type in RECURRENT_OPS:
            n_rec += 1
            for idx, target in ((1, Target.WX), (2, Target.WH)):
                if target not in config.targets:
                    continue
                if w.quantize(node.input[idx], axis=1):
                    res.recurrent.append(node.input[idx])
                else:
                    res.skipped.append(f"{label}: {node.input[idx]!r} is not a float32 "
                                       "initializer")
            if len(node.input) > 3 and node.input[3]:
                w.compact_bias(node.input[3])
        elif node.op_type in matmul | conv and len(node.input) > 1:
            idx, axis = _weight_axis(node, rank_of)
            w.quantize(node.input[idx], axis)
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else (
                list(attr.graphs) if attr.type == AttributeProto.GRAPHS else [])
            for sub in subs:
                n_rec += _rewrite(sub, config, res, w)
    w.finish()
    res.quantized += w.quantized
    res.compacted += w.compacted
    return n_rec


def qdq_rewrite(model, config: QuantConfig | None = None) -> QDQResult:
    """Quantize a float ONNX model's weights to the QDQ form (see the module docstring).

    Args:
        model: ``onnx.ModelProto`` with ``LSTM``/``GRU``/``RNN`` nodes (in any
            subgraph) whose ``W``/``R`` are float32 initializers.
        config: 8-bit :class:`QuantConfig`; ``Wx`` -> ``W``, ``Wh`` -> ``R``,
            ``head`` -> float32 weights of ``MatMul``/``Gemm``, ``conv`` -> of
            ``Conv``/``ConvTranspose``.

    Returns:
        :class:`QDQResult` holding a new checked ``ModelProto`` with an
        ``edgelstm_quantization`` metadata entry.

    Raises:
        UnsupportedError: no recurrent node, no recurrent weight that is an
            initializer, already quantized input, or non-8-bit config.
    """
    import onnx

    config = config or QuantConfig()
    config.check_format("onnx-qdq")
    if _op_types(model.graph) & {"DequantizeLinear", "DynamicQuantizeLSTM", "QuantizeLinear"}:
        raise UnsupportedError("the ONNX model is already quantized")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out, note = qdq_opset(out)
    res = QDQResult(out, notes=[note] if note else [])
    n_rec = _rewrite(out.graph, config, res, None)
    if not n_rec:
        raise UnsupportedError("the ONNX model has no LSTM, GRU or RNN node to quantize")
    if not res.recurrent and {Target.WX, Target.WH} & set(config.targets):
        raise UnsupportedError("no recurrent weight can be quantized: " + "; ".join(res.skipped))
    props = {p.key: p.value for p in out.metadata_props}
    props["edgelstm_quantization"] = json.dumps({**config.to_dict(), "format": "onnx-qdq"},
                                                sort_keys=True)
    onnx.helper.set_model_props(out, props)
    onnx.checker.check_model(out, full_check=True)
    return res


def qdq_quantize(model, config: QuantConfig | None = None):
    """The quantized ``ModelProto`` of :func:`qdq_rewrite`."""
    return qdq_rewrite(model, config).model


def _op_types(graph) -> set[str]:
    from onnx import AttributeProto

    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                ops |= _op_types(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    ops |= _op_types(g)
    return ops
