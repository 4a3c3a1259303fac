"""Exporting an already-quantized checkpoint keeps its weights exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import edgelstm
from edgelstm.converters import convert, run_onnx
from edgelstm.quantize import QuantConfig, quantize_model
from edgelstm.runtime.inference import run_model


@pytest.mark.parametrize("targets", [("Wx", "Wh"), ("Wx", "Wh", "head")])
def test_int8_checkpoint_exports_as_qdq_with_identical_outputs(tmp_path, targets):
    model = edgelstm.SequenceModel(edgelstm.LSTM(6, 32, num_layers=2), head="frame",
                                   num_outputs=3)
    model.save(tmp_path / "f")
    quantize_model(tmp_path / "f", tmp_path / "q", QuantConfig(targets=targets))
    report = convert(tmp_path / "q", tmp_path / "q.onnx", verify=True, atol=1e-6)
    assert report["max_abs_diff"] < 1e-6
    proto = onnx.load(str(tmp_path / "q.onnx"))
    int8 = [i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) == 4  # W and R of both layers stay int8
    # the very int8 values and float16 scales of the checkpoint, in ONNX gate order
    from safetensors.numpy import load_file

    from edgelstm.converters.gates import lstm_to_onnx

    ckpt = load_file(str(tmp_path / "q" / "model.safetensors"))
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for k in (0, 1):
        cell = f"rnn.layers.{k}.forward."
        q = lstm_to_onnx(ckpt[cell + "Wx"], ckpt[cell + "Wh"])[:2]
        s = lstm_to_onnx(ckpt[cell + "Wx_scales"][:, None], ckpt[cell + "Wh_scales"][:, None])[:2]
        for i, w in enumerate("WR"):
            np.testing.assert_array_equal(inits[f"layers.{k}.{w}_quantized"][0], q[i])
            np.testing.assert_array_equal(inits[f"layers.{k}.{w}_scale_fp16"], s[i][:, 0])
    x = np.random.randn(2, 9, 6).astype(np.float32)
    want = run_model(tmp_path / "q", x)["output"]
    for backend in ("onnxruntime", "mlx"):
        got = run_onnx(tmp_path / "q.onnx", {"input": x}, backend=backend)["output"]
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_4bit_checkpoint_exports_its_expanded_weights(tmp_path):
    model = edgelstm.SequenceModel(edgelstm.GRU(32, 32), head="sequence", num_outputs=2)
    model.save(tmp_path / "f")
    quantize_model(tmp_path / "f", tmp_path / "q4", QuantConfig(bits=4))
    report = convert(tmp_path / "q4", tmp_path / "q4.onnx", verify=True, atol=1e-6)
    assert report["max_abs_diff"] < 1e-6


def test_int8_scales_are_stored_as_float16_and_load_exactly(tmp_path):
    import mlx.core as mx
    from safetensors import safe_open

    from edgelstm.quantize import quantize_mlx

    model = edgelstm.SequenceModel(edgelstm.GRU(12, 64), head="frame", num_outputs=4).eval()
    quantize_mlx(model, QuantConfig())
    model.save(tmp_path / "q")
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "numpy") as f:
        dtypes = {k: str(f.get_tensor(k).dtype) for k in f.keys()}
    assert dtypes["rnn.layers.0.forward.Wh_scales"] == "float16"
    assert dtypes["rnn.layers.0.forward.Wh"] == "int8"
    assert dtypes["rnn.layers.0.forward.b"] == "float32"
    loaded = edgelstm.load(tmp_path / "q")
    cell = loaded.rnn.layers[0].forward
    assert cell["Wh_scales"].dtype == mx.float32
    x = mx.random.normal((2, 7, 12))
    assert np.array_equal(np.array(model(x)), np.array(loaded(x)))
