"""Run an ONNX graph on OpenVINO's CPU plugin, precision pinned to float32.

OpenVINO is optional (``pip install 'edgelstm[openvino]'``). Its CPU plugin
picks bf16 by default where the CPU has AVX-512 bf16 / AMX, which moves LSTM
outputs by ~5e-3; edgelstm always compiles with
``INFERENCE_PRECISION_HINT=f32`` (:data:`PRECISION`) so a check against ONNX
Runtime measures the graph, not a precision change.

ONNX Runtime contrib ops (domain ``com.microsoft``, e.g. the
``DynamicQuantizeLSTM`` of ``quantize --format onnx-ort``) are refused by
name before OpenVINO sees the graph.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError, UnsupportedError

#: ``INFERENCE_PRECISION_HINT`` every compile uses (the report says so).
PRECISION = "f32"
DEVICE = "CPU"
INSTALL_HINT = "pip install 'edgelstm[openvino]' (or pip install openvino)"


def _openvino():
    try:
        import openvino
    except ImportError:
        raise UnsupportedError(f"OpenVINO is not installed; {INSTALL_HINT}") from None
    return openvino


def available() -> bool:
    """Whether ``openvino`` imports."""
    try:
        _openvino()
    except UnsupportedError:
        return False
    return True


def version() -> str:
    """OpenVINO's release, e.g. ``2026.4.1`` (the build suffix dropped)."""
    return _openvino().get_version().split("-")[0]


def unsupported_nodes(model) -> list[str]:
    """``domain.op_type`` of every node outside the standard ONNX domain, in graph order."""
    return [f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain not in ("", "ai.onnx")]


def compile_onnx(path_or_proto, threads: int | None = None):
    """A compiled OpenVINO model (CPU, f32) of an ONNX file or ``ModelProto``.

    Args:
        path_or_proto: ``.onnx`` file or ``onnx.ModelProto``.
        threads: ``INFERENCE_NUM_THREADS`` (default: OpenVINO's choice).

    Raises:
        UnsupportedError: OpenVINO missing, a contrib op, or OpenVINO refuses the graph.
    """
    from edgelstm.converters import _label, _load_onnx

    ov = _openvino()
    model = _load_onnx(path_or_proto)
    foreign = unsupported_nodes(model)
    if foreign:
        raise UnsupportedError(f"OpenVINO cannot run {_label(path_or_proto)}: op {foreign[0]} "
                               "is an ONNX Runtime contrib op (not standard ONNX)")
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:  # read_model takes a path for ONNX
        onnx_path = Path(tmp) / "model.onnx"
        onnx_path.write_bytes(model.SerializeToString())
        try:
            ov_model = core.read_model(str(onnx_path))
            config = {"INFERENCE_PRECISION_HINT": PRECISION}
            if threads:
                config["INFERENCE_NUM_THREADS"] = int(threads)
            return core.compile_model(ov_model, DEVICE, config)
        except Exception as exc:  # OpenVINO raises RuntimeError/OVException with long text
            raise UnsupportedError(f"OpenVINO cannot load {_label(path_or_proto)}: "
                                   f"{_first_line(exc)}") from None


def run_openvino(path_or_proto, feeds: dict) -> dict[str, np.ndarray]:
    """Run an ONNX model on OpenVINO (CPU, f32).

    Args:
        path_or_proto: ``.onnx`` file or ``onnx.ModelProto``.
        feeds: ``{input name: array}``, e.g. ``input (B, T, I)``, ``h0 (L*D, B, H)``,
            ``lengths (B,)`` int32.

    Returns:
        ``{output name: array}`` for every graph output, in graph order.
    """
    from edgelstm.converters import onnx_io_names

    ins, outs = onnx_io_names(path_or_proto)
    compiled = compile_onnx(path_or_proto)
    unknown = sorted(set(feeds) - set(ins))
    if unknown:
        raise DataError(f"unknown input {unknown[0]!r}; the model takes {', '.join(ins)}")
    # a port holds a set of tensor names (OpenVINO merges names across fused nodes)
    arrays = {}
    for port in compiled.inputs:
        name = next((n for n in ins if n in port.get_names()), None)
        if name is None or name not in feeds:
            raise DataError(f"missing input {name or port.get_any_name()!r}")
        arrays[port] = np.ascontiguousarray(feeds[name])
    try:
        result = compiled(arrays)
    except Exception as exc:
        raise DataError(f"OpenVINO failed on {_where(path_or_proto)}: {_first_line(exc)}"
                        ) from None
    by_name = {}
    for port in compiled.outputs:
        for n in port.get_names():
            by_name[n] = np.asarray(result[port])
    return {n: by_name[n] for n in outs}


def _where(path_or_proto) -> str:
    return str(path_or_proto) if isinstance(path_or_proto, (str, os.PathLike)) else "the model"


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
