"""``edgelstm convert`` and the ``convert()`` library function."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import edgelstm
from edgelstm.cli import cli
from edgelstm.converters import convert

FIX = Path(__file__).parent / "fixtures"


@pytest.fixture
def ckpt(tmp_path):
    mx.random.seed(0)
    model = edgelstm.SequenceModel(edgelstm.LSTM(4, 6, num_layers=2), 3, head="frame",
                                   labels=["a", "b", "c"], normalize=True)
    return model.save(tmp_path / "ckpt")


@pytest.fixture
def bi_ckpt(tmp_path):
    mx.random.seed(1)
    return edgelstm.SequenceModel(edgelstm.GRU(4, 6, bidirectional=True), 2,
                                  head="sequence").save(tmp_path / "bi")


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_checkpoint_to_onnx_verify(ckpt, tmp_path):
    dst = tmp_path / "m.onnx"
    r = _invoke("convert", ckpt, dst, "--verify")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("max abs diff ")
    assert "(tolerance 0.0001; output; output run by onnxruntime, source by edgelstm mlx)" in r.stdout
    assert dst.is_file() and onnx.load(str(dst)).opset_import[0].version == 17


def test_streaming_and_opset(ckpt, tmp_path):
    dst = tmp_path / "s.onnx"
    r = _invoke("convert", ckpt, dst, "--streaming", "--opset", "19", "--verify")
    assert r.exit_code == 0, r.output
    assert "output, h_n, c_n" in r.stdout
    proto = onnx.load(str(dst))
    assert [i.name for i in proto.graph.input] == ["input", "h0", "c0"]
    assert proto.opset_import[0].version == 19


def test_onnx_to_checkpoint_and_back(tmp_path):
    src = FIX / "torch_lstm_bi_seq.onnx"
    r = _invoke("convert", src, tmp_path / "ck", "--verify")
    assert r.exit_code == 0, r.output
    model = edgelstm.load(tmp_path / "ck")
    assert model.input_names == ["x"] and model.output_names == ["y"]
    data = np.load(FIX / "torch_lstm_bi_seq.npz")
    np.testing.assert_allclose(np.array(model(mx.array(data["x"]))), data["y"], atol=1e-5)
    r = _invoke("convert", tmp_path / "ck", tmp_path / "again.onnx", "--verify")
    assert r.exit_code == 0, r.output


def test_weights_to_checkpoint_options(tmp_path):
    r = _invoke("convert", FIX / "torch_lstm_bi.safetensors", tmp_path / "ck", "--head", "frame",
                "--verify")
    assert r.exit_code == 0, r.output
    assert edgelstm.load(tmp_path / "ck").head_type == "frame"


def test_existing_output_needs_force(ckpt, tmp_path):
    dst = tmp_path / "m.onnx"
    dst.write_text("old")
    r = _invoke("convert", ckpt, dst)
    assert r.exit_code == 1
    assert r.output == f"Error: {dst} already exists; pass --force to overwrite it\n"
    assert dst.read_text() == "old"
    assert _invoke("convert", ckpt, dst, "--force").exit_code == 0
    assert onnx.load(str(dst)).graph.node


def test_bidirectional_streaming_refused(bi_ckpt, tmp_path):
    r = _invoke("convert", bi_ckpt, tmp_path / "s.onnx", "--streaming")
    assert r.exit_code == 1
    assert r.output == ("Error: a bidirectional model cannot stream: its reverse direction needs "
                        "the whole sequence; export it without --streaming\n")
    assert not (tmp_path / "s.onnx").exists()


def test_usage_errors_exit_2(ckpt, tmp_path):
    r = _invoke("convert", ckpt, tmp_path / "dir", "--streaming")
    assert r.exit_code == 2 and "Error: --streaming needs an .onnx or .tflite DST" in r.output
    r = _invoke("convert", ckpt, tmp_path / "m.onnx", "--opset", "13")
    assert r.exit_code == 2 and "--opset" in r.output


def test_verification_failure_removes_output(ckpt, tmp_path, monkeypatch):
    from edgelstm.converters import conversion

    monkeypatch.setattr(conversion, "verify_outputs", lambda a, b, main: (0.5, [main]))
    dst = tmp_path / "m.onnx"
    r = _invoke("convert", ckpt, dst, "--verify")
    assert r.exit_code == 1
    assert r.output == (f"Error: verification failed: max abs diff 0.5 exceeds the tolerance "
                        f"0.0001; {dst} was not written\n")
    assert not dst.exists() and list(tmp_path.iterdir()) == [ckpt]


def test_bad_and_unmappable_sources(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    r = _invoke("convert", bad, tmp_path / "ck")
    assert r.exit_code == 1 and r.output.startswith(f"Error: {bad} is not a readable ONNX model")
    assert r.output.count("\n") == 1
    r = _invoke("convert", FIX / "torch_gru_frame.onnx", tmp_path / "ck", "--head", "frame")
    assert r.exit_code == 1
    assert r.output == ("Error: option 'head' applies to weight files, not to ONNX (the graph "
                        "defines the model)\n")
    r = _invoke("convert", tmp_path, tmp_path / "m.onnx")
    assert r.exit_code == 1
    assert r.output == f"Error: {tmp_path} is not an edgelstm checkpoint (no config.json)\n"


def test_library_report(ckpt, tmp_path):
    report = convert(ckpt, tmp_path / "m.onnx", verify=True)
    assert report["dst_format"] == "onnx" and report["src_format"] == "checkpoint"
    assert report["architecture"] == "LSTM 2x6, frame head"
    assert 0 <= report["max_abs_diff"] <= report["atol"]
    assert report["verified_by"] == {"source": "edgelstm mlx", "output": "onnxruntime"}
    report = convert(ckpt, tmp_path / "copy", verify=True)
    assert report["max_abs_diff"] == 0.0 and report["compared"] == ["output", "h_n", "c_n"]


def test_verify_never_lets_mlx_stand_in_for_onnxruntime_on_an_output():
    """A graph ORT refuses (LSTM layout=1) is an error for an output, a fallback for a source."""
    import onnx
    from onnx import TensorProto, helper

    from edgelstm.converters.conversion import _onnx_outputs
    from edgelstm.errors import EdgeLSTMError

    H, I = 3, 2
    rng = np.random.default_rng(0)
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W", (1, 4 * H, I)), ("R", (1, 4 * H, H)))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=H, layout=1)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", I])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = edgelstm.LSTM(I, H, batch_first=True)
    x = rng.standard_normal((2, 4, I)).astype(np.float32)
    with pytest.raises(EdgeLSTMError):
        _onnx_outputs(proto, model, x)
    out, by = _onnx_outputs(proto, model, x, allow_mlx=True)
    assert by == "edgelstm mlx runner" and out["y"].shape == (2, 4, 1, H)
