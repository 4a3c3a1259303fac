"""Checks of a model with a conv part (a stem or an fcn branch), shared by their suites."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from edgelstm.errors import UnsupportedError
from edgelstm.io.checkpoint import load


def check_refuses_streaming(model, part: str) -> None:
    """The streaming MLX backend and the streaming ONNX export refuse ``model`` by
    ``part``'s name (``"conv stem"`` or ``"fcn branch"``)."""
    from edgelstm.converters.onnx_export import build_onnx
    from edgelstm.streaming.backends import MLXBackend

    with pytest.raises(UnsupportedError, match=part):
        MLXBackend(model)
    with pytest.raises(UnsupportedError, match=f"{part} cannot stream"):
        build_onnx(model, streaming=True)


def check_quantized_model_file(model, x: np.ndarray, part: str, tmp_path, dst: str) -> None:
    """Save ``model``, quantize it to ``dst`` (an MLX checkpoint folder or ``*.onnx`` QDQ
    file, run by ONNX Runtime) and check the output on ``x (B, T, I)`` stays close.

    ``part``: the conv part the int8 checkpoint must keep (``"stem"`` or ``"fcn"``).
    """
    if dst.endswith(".onnx"):
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from edgelstm.converters import run_onnx
    from edgelstm.quantize import quantize_model

    model.save(tmp_path / "m")
    report = quantize_model(tmp_path / "m", tmp_path / dst)
    assert report.cosine > 0.999 and report.max_abs_error < 0.05
    ref = np.array(model(mx.array(x)))
    if dst.endswith(".onnx"):  # written without a lengths input: whole sequences
        got = run_onnx(tmp_path / dst, {"input": x}, backend="onnxruntime")["output"]
    else:
        q = load(tmp_path / dst)
        assert q.quantization and part in q
        got = np.array(q(mx.array(x)))
    assert got.shape == ref.shape and np.abs(got - ref).max() < 0.05 * np.abs(ref).max()
