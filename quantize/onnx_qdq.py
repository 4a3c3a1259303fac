"""Portable int8 ONNX: QDQ weights feeding the standard ``LSTM``/``GRU``/``RNN``.

The writer is a transformation of a float ONNX model, so it works on any
exporter's output: each recurrent node's ``W`` and ``R`` initializers become
int8 initializers plus per-row float32 scales, and a ``DequantizeLinear``
node produces a tensor of the original name, which the recurrent op reads as
before. The graph is otherwise untouched.

Opset: QDQ graphs are written at opset >= 19. Per-axis ``DequantizeLinear``
exists since opset 13 (ONNX Runtime runs it from there), but
``onnx.reference`` implements ``DequantizeLinear`` only from version 19;
19 is the lowest opset every checker here can execute, and ONNX Runtime has
supported it since 1.15.
"""

from __future__ import annotations

import json

import numpy as np

from edgelstm.errors import UnsupportedError
from edgelstm.quantize.config import QuantConfig, Target

QDQ_MIN_OPSET = 19
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
QMAX = 127


def quantize_rows_np(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per index of ``axis``: ``w ~= q * s``."""
    w = np.asarray(w, np.float32)
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red)
    scales = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)
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


class _Writer:
    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.np = numpy_helper
        self.inits = {i.name: i for i in graph.initializer}
        self.new_nodes = []

    def quantize(self, name: str, axis: int) -> bool:
        """Replace initializer ``name`` with int8 + DequantizeLinear; False if not constant."""
        from onnx import helper

        init = self.inits.get(name)
        if init is None or init.data_type != 1:  # only float32 initializers
            return False
        w = self.np.to_array(init)
        if w.ndim == 3 and axis == 1 and w.shape[0] > 1:
            # One scale per (direction, row): flatten, dequantize on axis 0, reshape back.
            flat = w.reshape(-1, w.shape[-1])
            q, s = quantize_rows_np(flat, 0)
            deq_out, q_axis = f"{name}_dequantized_flat", 0
        else:
            q, s = quantize_rows_np(w, axis)
            deq_out, q_axis = name, axis
        self.graph.initializer.remove(init)
        del self.inits[name]
        q_name, s_name = f"{name}_quantized", f"{name}_scale"
        # Symmetric: the zero point is omitted (0 by the spec), one byte per row saved.
        self.graph.initializer.extend([self.np.from_array(q, q_name),
                                       self.np.from_array(s, s_name)])
        self.new_nodes.append(helper.make_node(
            "DequantizeLinear", [q_name, s_name], [deq_out], axis=q_axis,
            name=f"{name}_DequantizeLinear"))
        if deq_out != name:
            shape_name = f"{name}_shape"
            self.graph.initializer.append(self.np.from_array(np.array(w.shape, np.int64),
                                                             shape_name))
            self.new_nodes.append(helper.make_node("Reshape", [deq_out, shape_name], [name],
                                                   name=f"{name}_Reshape"))
        return True


def qdq_quantize(model, config: QuantConfig | None = None):
    """Quantize a float ONNX model's recurrent weights to the QDQ form.

    Args:
        model: ``onnx.ModelProto`` with ``LSTM``/``GRU``/``RNN`` nodes whose
            ``W``/``R`` are float32 initializers (as ``edgelstm convert`` writes).
        config: 8-bit :class:`QuantConfig`; ``Wx`` -> ``W``, ``Wh`` -> ``R``,
            ``head`` -> float weights of ``MatMul``/``Gemm`` nodes.

    Returns:
        A new checked ``ModelProto`` at opset >= 19 with an
        ``edgelstm_quantization`` metadata entry.

    Raises:
        UnsupportedError: no recurrent node, weights that are not
            initializers, already quantized input, or non-8-bit config.
    """
    import onnx

    config = config or QuantConfig()
    config.check_format("onnx-qdq")
    ops = {n.op_type for n in model.graph.node}
    if ops & {"DequantizeLinear", "DynamicQuantizeLSTM", "QuantizeLinear"}:
        raise UnsupportedError("the ONNX model is already quantized")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out = upgrade_opset(out)
    w = _Writer(out.graph)
    n_rec = 0
    for node in out.graph.node:
        if node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx"):
            n_rec += 1
            for idx, target in ((1, Target.WX), (2, Target.WH)):
                if target in config.targets and not w.quantize(node.input[idx], axis=1):
                    raise UnsupportedError(f"{node.op_type} node {node.name or n_rec}: input "
                                           f"{node.input[idx]!r} is not a float32 initializer")
        elif Target.HEAD in config.targets and node.op_type in ("MatMul", "Gemm"):
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            w.quantize(node.input[1], axis=0 if trans_b else 1)
    if not n_rec:
        raise UnsupportedError("the ONNX model has no LSTM, GRU or RNN node to quantize")
    # Dequantize nodes read only initializers, so they can lead the node list.
    nodes = w.new_nodes + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    props = {p.key: p.value for p in out.metadata_props}
    props["edgelstm_quantization"] = json.dumps({**config.to_dict(), "format": "onnx-qdq"},
                                                sort_keys=True)
    onnx.helper.set_model_props(out, props)
    onnx.checker.check_model(out, full_check=True)
    return out
