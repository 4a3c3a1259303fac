"""Gate-weight quantization for MLX and ONNX, with a measured error report.

>>> from edgelstm.quantize import QuantConfig, quantize_model, quantize_mlx
>>> report = quantize_model("ckpt", "ckpt-int8")            # MLX checkpoint, int8
>>> report = quantize_model("ckpt", "model.int8.onnx")      # portable QDQ ONNX
>>> report = quantize_model("ckpt", "m.onnx", format="onnx-ort")  # ORT-only op
>>> print(report.summary())
>>> quantize_mlx(model, QuantConfig(bits=4))                # in memory, experimental

onnx and onnxruntime are imported only by the ONNX writers and the report.
"""

from __future__ import annotations

from edgelstm.quantize.api import output_format, quantize_model
from edgelstm.quantize.config import Format, Granularity, Mode, QuantConfig, Target
from edgelstm.quantize.mlx_quant import (
    QuantizedGRUCell,
    QuantizedLSTMCell,
    QuantizedRNNCell,
    apply_quantization,
    is_quantized,
    logical_parameter_count,
    quantize_mlx,
)
from edgelstm.quantize.report import QuantReport

__all__ = [
    "Format",
    "Granularity",
    "Mode",
    "QuantConfig",
    "QuantReport",
    "QuantizedGRUCell",
    "QuantizedLSTMCell",
    "QuantizedRNNCell",
    "Target",
    "apply_quantization",
    "is_quantized",
    "logical_parameter_count",
    "output_format",
    "quantize_mlx",
    "quantize_model",
]
