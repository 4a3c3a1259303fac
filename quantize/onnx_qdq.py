"""Portable int8 ONNX: QDQ weights feeding the standard ``LSTM``/``GRU``/``RNN``.

The writer is a transformation of a float ONNX model, so it works on any
exporter's output: each recurrent node's ``W`` and ``R`` initializers become
int8 initializers plus per-row scales, and a ``DequantizeLinear`` node
produces a tensor of the original name, which the recurrent op reads as
before. Two lossless size savings, both constant-folded by ONNX Runtime:

- Scales are rounded to the float16 grid as :func:`~edgelstm.quantize.mlx_quant.quantize_rows`
  does (so QDQ and MLX int8 agree on ``q``), stored as float16 and widened by
  ``Cast(to=FLOAT)``: ``DequantizeLinear`` returns its scale's type, and the
  ``q * s`` product must stay float32.
- A float32 ``B`` whose recurrent half ``Rb`` is all +0.0 (edgelstm's export
  puts every LSTM/RNN bias in ``Wb``) keeps only ``Wb``;
  ``Concat(Wb, ConstantOfShape)`` rebuilds it.

The graph is otherwise untouched.

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
from edgelstm.quantize.mlx_quant import F16_MAX, F16_MIN_NORMAL

QDQ_MIN_OPSET = 19
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


class _Writer:
    def __init__(self, graph):
        from onnx import numpy_helper

        self.graph = graph
        self.np = numpy_helper
        # An initializer that is also a graph input can be overridden: not a constant.
        inputs = {i.name for i in graph.input}
        self.inits = {i.name: i for i in graph.initializer if i.name not in inputs}
        self.new_nodes = []

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

    def quantize(self, name: str, axis: int) -> bool:
        """Replace initializer ``name`` with int8 + DequantizeLinear; False if not constant."""
        from onnx import helper

        init = self._float32_init(name)
        if init is None:
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
        self.graph.initializer.append(self.np.from_array(q, q_name))
        self._half_scales(s, s_name)
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

    def compact_bias(self, name: str) -> bool:
        """Store only ``Wb`` of a float32 ``B`` whose ``Rb`` half is all +0.0; False otherwise."""
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
            if len(node.input) > 3 and node.input[3]:
                w.compact_bias(node.input[3])
        elif Target.HEAD in config.targets and node.op_type in ("MatMul", "Gemm"):
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            w.quantize(node.input[1], axis=0 if trans_b else 1)
    if not n_rec:
        raise UnsupportedError("the ONNX model has no LSTM, GRU or RNN node to quantize")
    # The new nodes read only initializers and each other, in order: they lead the list.
    nodes = w.new_nodes + list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    props = {p.key: p.value for p in out.metadata_props}
    props["edgelstm_quantization"] = json.dumps({**config.to_dict(), "format": "onnx-qdq"},
                                                sort_keys=True)
    onnx.helper.set_model_props(out, props)
    onnx.checker.check_model(out, full_check=True)
    return out
