"""The TFLite exporter, checked by the LiteRT interpreter against the MLX model."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import edgelstm
from edgelstm.converters import convert
from edgelstm.converters.tflite_export import build_tflite, check_exportable, to_tflite
from edgelstm.errors import UnsupportedError

pytest.importorskip("ai_edge_litert", reason="LiteRT not installed (pip install 'edgelstm[litert]')")

from edgelstm.converters.litert_run import run_tflite  # noqa: E402

ATOL = 1e-5  # both float32; measured worst ~1.5e-7 on these shapes
I, H, C, T = 5, 12, 4, 9


def _model(head="frame", layers=1, batch_first=True, normalize=True, **kw):
    m = edgelstm.SequenceModel(edgelstm.LSTM(I, H, num_layers=layers, batch_first=batch_first,
                                             **kw),
                               num_outputs=C, head=head, normalize=normalize)
    if normalize:
        m.norm.mean = mx.array(np.linspace(-1, 1, I, dtype=np.float32))
        m.norm.std = mx.array(np.linspace(0.5, 2, I, dtype=np.float32))
    return m


@pytest.mark.parametrize("head", ["frame", "sequence", None])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("batch_first", [True, False])
def test_litert_matches_mlx(head, layers, batch_first, rng):
    model = _model(head, layers, batch_first)
    x = rng.standard_normal((1, T, I) if batch_first else (T, 1, I)).astype(np.float32)
    out = run_tflite(build_tflite(model), x)
    ref = np.array(model(mx.array(x)))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)


def test_batch_size_fixed_at_export_and_time_dynamic(rng):
    model = _model("sequence", 2)
    data = build_tflite(model, batch_size=3)
    for steps in (1, 5, 40):
        x = rng.standard_normal((3, steps, I)).astype(np.float32)
        np.testing.assert_allclose(run_tflite(data, x), np.array(model(mx.array(x))),
                                   rtol=0, atol=ATOL)
    with pytest.raises(edgelstm.errors.DataError, match="batch fixed at export"):
        run_tflite(data, np.zeros((2, 5, I), np.float32))


def test_no_bias_no_norm_and_int8_weights(tmp_path, rng):
    from edgelstm.quantize import quantize_mlx

    model = _model("frame", 2, normalize=False, bias=False)
    x = rng.standard_normal((1, T, I)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(build_tflite(model), x), np.array(model(mx.array(x))),
                               rtol=0, atol=ATOL)
    q = quantize_mlx(_model("sequence"))  # int8 storage, exported dequantized
    np.testing.assert_allclose(run_tflite(build_tflite(q), x), np.array(q(mx.array(x))),
                               rtol=0, atol=ATOL)


def test_states_carry_between_invokes_like_streaming(rng):
    """Variable state tensors persist across ``invoke``: chunks equal the whole sequence."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model("frame", 2)
    x = rng.standard_normal((1, 12, I)).astype(np.float32)
    interp = Interpreter(model_content=build_tflite(model))
    idx = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(idx, [1, 4, I])
    interp.allocate_tensors()
    chunks = []
    for k in range(3):
        interp.set_tensor(idx, x[:, 4 * k:4 * k + 4])
        interp.invoke()
        chunks.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    np.testing.assert_allclose(np.concatenate(chunks, 1), np.array(model(mx.array(x))),
                               rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind,kw,what", [
    ("gru", {}, "GRU"), ("rnn", {}, "RNN"),
    ("lstm", {"bidirectional": True}, "bidirectional"),
    ("lstm", {"peephole": True}, "peephole"),
    ("lstm", {"clip": 3.0}, "clip"),
    ("lstm", {"input_forget": True}, "input_forget"),
])
def test_refused_by_name(kind, kw, what, tmp_path):
    rnn = {"lstm": edgelstm.LSTM, "gru": edgelstm.GRU, "rnn": edgelstm.RNN}[kind](I, H, **kw)
    model = edgelstm.SequenceModel(rnn, num_outputs=C)
    with pytest.raises(UnsupportedError, match=what):
        check_exportable(model)
    model.save(tmp_path / "m")
    with pytest.raises(UnsupportedError, match=what):
        convert(tmp_path / "m", tmp_path / "m.tflite")
    assert not (tmp_path / "m.tflite").exists()


def test_convert_cli_writes_and_verifies_tflite(tmp_path):
    from click.testing import CliRunner

    from edgelstm.cli import cli

    _model("sequence", 2).save(tmp_path / "m")
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m"), str(tmp_path / "m.tflite"),
                                   "--verify", "--atol", "1e-5"])
    assert res.exit_code == 0, res.output
    assert "run by LiteRT" in res.output
    assert (tmp_path / "m.tflite").read_bytes()[4:8] == b"TFL3"
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m"), str(tmp_path / "s.tflite"),
                                   "--lengths"])
    assert res.exit_code == 2 and "--lengths needs an .onnx DST" in res.output


def test_to_tflite_never_overwrites_without_force(tmp_path):
    model = _model()
    to_tflite(model, tmp_path / "a.tflite")
    with pytest.raises(edgelstm.errors.EdgeLSTMError):
        to_tflite(model, tmp_path / "a.tflite")
    to_tflite(model, tmp_path / "a.tflite", force=True)
