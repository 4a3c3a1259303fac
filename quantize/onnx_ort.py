"""Opt-in ONNX Runtime form: ``com.microsoft.DynamicQuantizeLSTM`` (ORT-only).

A thin wrapper over ``onnxruntime.quantization.quantize_dynamic`` with
per-channel int8 weights. The result runs in ONNX Runtime (and edgelstm's
MLX runner); no other runtime implements the contrib op, and ONNX Runtime
has no quantized GRU or RNN op, so those are refused here (use the portable
QDQ form).

ORT #15465: older ``quantize_dynamic`` copied the LSTM's ``layout``
attribute onto ``DynamicQuantizeLSTM``, which does not declare it, and the
model would not load. ``layout=0`` (the default) is dropped before
quantizing; ``layout=1`` is refused because ORT's kernels cannot run it.

``reduce_range=True`` (7-bit weights): ORT's u8s8 kernels saturate on x86
CPUs without VNNI. Measured here (H=128, random input): cosine 0.984 with
full-range weights, 0.99998 with reduced range; the edgelstm MLX runner,
which dequantizes, gets 0.99999 from either file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from edgelstm.errors import UnsupportedError
from edgelstm.quantize.config import QuantConfig, Target


@contextlib.contextmanager
def _quiet_root_logger():
    # quantize_dynamic warns about pre-processing through the root logger on every call.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def prepare_for_ort(model):
    """Check ``model`` suits DynamicQuantizeLSTM and drop ``layout=0`` attributes in place."""
    ops = [n.op_type for n in model.graph.node]
    if {"DequantizeLinear", "DynamicQuantizeLSTM"} & set(ops):
        raise UnsupportedError("the ONNX model is already quantized")
    others = sorted({op for op in ops if op in ("GRU", "RNN")})
    if others:
        raise UnsupportedError(f"ONNX Runtime has no quantized {'/'.join(others)} op; "
                               "use --format onnx-qdq (portable QDQ) instead")
    if "LSTM" not in ops:
        raise UnsupportedError("the ONNX model has no LSTM node to quantize")
    for node in model.graph.node:
        if node.op_type != "LSTM":
            continue
        for attr in list(node.attribute):
            if attr.name == "layout":
                if attr.i != 0:
                    raise UnsupportedError("LSTM layout=1 cannot run in ONNX Runtime; "
                                           "export with layout=0 (edgelstm's default)")
                node.attribute.remove(attr)
    return model


def ort_quantize(src: str | os.PathLike, dst: str | os.PathLike,
                 config: QuantConfig | None = None) -> Path:
    """Write the ``DynamicQuantizeLSTM`` form of float ONNX ``src`` to ``dst``.

    Args:
        src: float ONNX file with ``LSTM`` nodes.
        dst: output path (written directly; callers wrap it in an atomic output).
        config: 8-bit :class:`QuantConfig`; ORT always quantizes both ``W``
            and ``R``; ``head`` adds ``MatMul``/``Gemm`` (``MatMulInteger``).

    Returns:
        ``dst``.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config = config or QuantConfig()
    config.check_format("onnx-ort")
    if not {Target.WX, Target.WH} <= set(config.targets):
        raise UnsupportedError("DynamicQuantizeLSTM quantizes W and R together; "
                               "targets must include both Wx and Wh")
    model = prepare_for_ort(onnx.load(str(src)))
    ops = ["LSTM"] + (["MatMul", "Gemm"] if Target.HEAD in config.targets else [])
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        onnx.save(model, str(prepared))
        with _quiet_root_logger():
            quantize_dynamic(prepared, dst, op_types_to_quantize=ops, per_channel=True,
                             reduce_range=True, weight_type=QuantType.QInt8)
    out = onnx.load(str(dst))
    props = {p.key: p.value for p in out.metadata_props}
    props["edgelstm_quantization"] = json.dumps({**config.to_dict(), "format": "onnx-ort"},
                                                sort_keys=True)
    onnx.helper.set_model_props(out, props)
    onnx.save(out, str(dst))
    return Path(dst)
