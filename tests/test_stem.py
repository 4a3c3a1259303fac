"""The conv feature stem (edgelstm.nn.stem): shapes, causality, lengths, checkpoint and
ONNX round trips against ONNX Runtime and the MLX ONNX executor, int8, and the
training defaults that choose it (auto_stem, the small-data holdout rule)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from conv_part_checks import check_quantized_model_file, check_refuses_streaming

from edgelstm.cli import cli
from edgelstm.errors import ConfigError
from edgelstm.io.checkpoint import load
from edgelstm.nn.layers import LSTM
from edgelstm.nn.model import SequenceModel
from edgelstm.nn.stem import ConvStem
from edgelstm.training.data import Dataset
from edgelstm.training.recipe import AUTO_STEM, auto_stem, holdout
from edgelstm.training.train import build_model, train

STEM = {"kind": "conv", "channels": 6, "kernel": 5, "stride": 2, "input_size": 2}


def _model(pool="last", seed=0):
    mx.random.seed(seed)
    m = SequenceModel(LSTM(6, 8), num_outputs=3, head="sequence", normalize=True, pool=pool,
                      labels=["a", "b", "c"], stem=STEM)
    m.norm.mean = mx.array([0.5, -1.0])
    m.norm.std = mx.array([2.0, 0.5])
    return m.eval()


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 21, 2)).astype(np.float32)
    lengths = np.array([21, 14, 5, 2], np.int32)
    return x, lengths


def _numpy_stem(stem: ConvStem, x: np.ndarray) -> np.ndarray:
    """Independent reference: explicit causal strided correlation + ReLU, ``(T, I) -> (T//s, C)``."""
    w, b = np.array(stem.conv.weight), np.array(stem.conv.bias)  # (C, k, I), (C,)
    k, s = stem.kernel, stem.stride
    xp = np.concatenate([np.zeros((k - s, x.shape[1]), np.float32), x])
    out = [np.einsum("ki,cki->c", xp[j * s: j * s + k], w) + b for j in range(x.shape[0] // s)]
    return np.maximum(np.stack(out), 0.0)


def test_stem_matches_a_numpy_reference_and_is_causal():
    mx.random.seed(1)
    stem = ConvStem(2, channels=6, kernel=5, stride=2)
    x = np.random.default_rng(1).normal(size=(1, 17, 2)).astype(np.float32)
    got = np.array(stem(mx.array(x)))[0]
    assert got.shape == (8, 6)
    np.testing.assert_allclose(got, _numpy_stem(stem, x[0]), atol=1e-5)
    # output j reads raw steps up to s*j + s - 1: changing step 9 leaves outputs 0..3 alone
    y = x.copy()
    y[0, 9] += 5.0
    moved = np.abs(np.array(stem(mx.array(y)))[0] - got).max(axis=1)
    assert np.all(moved[:4] == 0.0) and moved[4] > 0


def test_stem_rejects_bad_settings():
    with pytest.raises(ConfigError, match="cover its stride"):
        ConvStem(1, channels=4, kernel=2, stride=4)
    with pytest.raises(ConfigError, match="stem channels"):
        ConvStem(1, channels=0)
    with pytest.raises(ConfigError, match="unknown stem setting"):
        ConvStem.from_config(1, {"kind": "conv", "dilation": 2})
    with pytest.raises(ConfigError, match="shorter than"):
        ConvStem(1, kernel=4, stride=4)(mx.zeros((1, 3, 1)))


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_padded_batch_equals_each_sequence_alone(pool):
    m = _model(pool)
    x, lengths = _batch()
    batch = np.array(m(mx.array(x), lengths=mx.array(lengths)))
    for k in range(len(x)):
        alone = np.array(m(mx.array(x[k:k + 1, :lengths[k]])))[0]
        np.testing.assert_allclose(batch[k], alone, atol=1e-5)


def test_stem_model_cannot_stream():
    m = _model()
    assert not m.can_stream
    with pytest.raises(ConfigError, match="cannot stream"):
        m(mx.zeros((1, 8, 2)), state=m.zero_state(1))
    y, final = m(mx.zeros((1, 8, 2)), return_state=True)  # the final state is an output
    assert y.shape == (1, 3) and final[0].shape == (1, 1, 8)
    check_refuses_streaming(m, "conv stem")


def test_checkpoint_round_trip(tmp_path):
    m = _model()
    m.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert back.config()["stem"] == STEM and back.input_size == 2
    x, lengths = _batch()
    np.testing.assert_array_equal(np.array(back(mx.array(x), lengths=mx.array(lengths))),
                                  np.array(m(mx.array(x), lengths=mx.array(lengths))))


@pytest.mark.parametrize("pool", ["last", "mean"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_onnx_export_matches_onnxruntime_and_mlx_executor(tmp_path, pool, with_lengths):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import onnx

    from edgelstm.converters import run_onnx
    from edgelstm.converters.onnx_export import build_onnx

    m = _model(pool)
    x, lengths = _batch()
    path = tmp_path / "m.onnx"
    onnx.save(build_onnx(m, lengths=with_lengths), str(path))
    feeds = {"input": x, **({"lengths": lengths} if with_lengths else {})}
    want = np.array(m(mx.array(x), lengths=mx.array(lengths) if with_lengths else None))
    ort = run_onnx(path, feeds, backend="onnxruntime")["output"]
    on_mlx = run_onnx(path, feeds, backend="mlx")["output"]
    np.testing.assert_allclose(ort, want, atol=1e-5)
    np.testing.assert_allclose(on_mlx, ort, atol=1e-5)


def test_int8_keeps_the_stem_float_and_stays_close():
    from edgelstm.quantize.mlx_quant import quantize_mlx

    m = _model()
    x, lengths = _batch()
    ref = np.array(m(mx.array(x), lengths=mx.array(lengths)))
    weight = np.array(m.stem.conv.weight)
    q = quantize_mlx(_model())
    got = np.array(q(mx.array(x), lengths=mx.array(lengths)))
    np.testing.assert_array_equal(np.array(q.stem.conv.weight), weight)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


def _series(n, T, I=1, classes=2, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    t = np.linspace(0, 1, T)
    x = rng.normal(0, 0.3, size=(n, T, I)).astype(np.float32)
    x[:, :, 0] += np.where(y[:, None] == 1, np.sin(6 * np.pi * t), 0.0)  # a local shape
    return Dataset(x, y, None, [f"c{k}" for k in range(classes)], name="series")


def test_auto_stem_only_for_long_series_of_few_channels():
    assert auto_stem(_series(8, 150)) == AUTO_STEM
    assert auto_stem(_series(8, 24)) is None                    # short (ItalyPowerDemand)
    assert auto_stem(_series(8, 150, I=6)) is None              # multi-channel (BasicMotions)
    audio = _series(8, 150)
    audio.features = {"kind": "mfcc"}
    assert auto_stem(audio) is None                             # audio keeps streaming


def test_small_data_trains_on_everything_and_keeps_the_last_epoch():
    ds = _series(50, 40)  # 10% is 5 sequences: below the minimum
    said = []
    rest, held = holdout(ds, 0.1, 0, said.append)
    assert held is None and rest.n == 50 and "too few to pick an epoch" in said[0]
    rest, held = holdout(_series(300, 40), 0.1, 0)
    assert held is not None and held.n == 30


def test_train_with_auto_stem_learns_a_long_univariate_shape():
    ds = _series(40, 128, seed=0)
    test = _series(40, 128, seed=1)
    model, hist = train({"hidden": 16, "stem": "auto"}, ds, epochs=25, seed=0, log=None)
    assert "stem" in model and model.stem.stride == AUTO_STEM["stride"]
    assert hist["best_epoch"] is None and len(hist["loss"]) == 25
    from edgelstm.training.train import evaluate

    assert evaluate(model, test)["accuracy"] >= 0.9
    assert build_model(ds, hidden=4).config().get("stem") is None  # library default: no stem


def test_cli_stem_option(tmp_path):
    ds = _series(20, 64)
    data = tmp_path / "d.npz"
    np.savez(data, x=ds.x, y=ds.y)
    runner = CliRunner()
    bad = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "m"), "--stem", "8,x"])
    assert bad.exit_code != 0 and "Error: --stem takes" in bad.output
    assert "Traceback" not in bad.output
    ok = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "m"), "--stem", "4,4,2",
                             "--epochs", "2", "--hidden", "4"])
    assert ok.exit_code == 0, ok.output
    assert load(tmp_path / "m").config()["stem"]["stride"] == 2


@pytest.mark.parametrize("dst", ["int8", "m.int8.onnx"])
def test_quantize_model_writes_a_working_int8_stem_model(tmp_path, dst):
    """`edgelstm quantize` on a stem model: MLX checkpoint and QDQ ONNX (run by ONNX Runtime)."""
    check_quantized_model_file(_model(), _batch()[0], "stem", tmp_path, dst)
