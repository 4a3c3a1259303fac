"""Issue 12.5: one NaN/Inf policy everywhere: refuse, naming the first bad position."""

from __future__ import annotations

import numpy as np
import pytest
from hostile import assert_clean_failure, invoke, tiny_model, tiny_onnx, tried

from edgelstm.errors import NonFiniteError, TrainingError
from edgelstm.runtime.inference import run_model
from edgelstm.training.data import Dataset


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("nonfinite")
    return {"ckpt": tiny_model(d), "onnx": tiny_onnx(d), "dir": d,
            "stream": tiny_onnx(d, "stream.onnx", streaming=True)}


def _x(bad=np.nan, pos=(1, 2, 0)):
    x = np.zeros((2, 4, 3), np.float32)
    x[pos] = bad
    return x


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_every_backend_refuses_alike(models, bad):
    messages = set()
    for path, backend in ((models["ckpt"], "mlx"), (models["onnx"], "onnxruntime"),
                          (models["onnx"], "mlx")):
        with pytest.raises(NonFiniteError, match=r"at index \(1, 2, 0\)") as info:
            run_model(path, _x(bad), backend=backend)
        messages.add(str(info.value))
        tried("nonfinite")
    assert len(messages) == 1  # the same words from every backend


def test_finite_input_still_runs(models):
    a = run_model(models["ckpt"], _x(0.0))
    b = run_model(models["onnx"], _x(0.0))
    np.testing.assert_allclose(a["output"], b["output"], atol=1e-4)


def test_run_cli_nan_writes_nothing(models, tmp_path):
    np.save(tmp_path / "x.npy", _x())
    for model in (models["ckpt"], models["onnx"]):
        r = invoke("run", model, "-i", tmp_path / "x.npy", "-o", tmp_path / "y.npz")
        tried("nonfinite")
        assert "NaN at index (1, 2, 0)" in assert_clean_failure(r, codes=(1,))
        assert not (tmp_path / "y.npz").exists()


def test_nan_state_and_lengths_feeds(models):
    h0 = np.zeros((1, 2, 4), np.float32)
    h0[0, 1, 3] = np.nan
    with pytest.raises(NonFiniteError, match="'h0'"):
        run_model(models["ckpt"], {"input": _x(0.0), "h0": h0, "c0": np.zeros_like(h0)})
    tried("nonfinite")


def test_stream_nan_chunk(models, tmp_path):
    rows = ["0.1,0.2,0.3"] * 5 + ["0.1,nan,0.3"] + ["0.1,0.2,0.3"] * 4
    (tmp_path / "x.csv").write_text("\n".join(rows) + "\n")
    for model in (models["ckpt"], models["stream"]):
        r = invoke("stream", model, tmp_path / "x.csv", "--chunk-frames", "2")
        tried("nonfinite")
        line = assert_clean_failure(r, codes=(1,))
        assert "NaN at frame 5, column 1" in line, line
    r = invoke("stream", models["ckpt"], "-", "--chunk-frames", "2",
               input="\n".join(rows) + "\n")
    tried("nonfinite")
    assert "NaN at frame 5" in assert_clean_failure(r, codes=(1,))


def test_train_on_nan_data_saves_nothing(tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 4, 3)).astype(np.float32)
    x[3, 1, 2] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(8) % 2)
    r = invoke("train", tmp_path / "d.npz", "-o", tmp_path / "out", "--epochs", "1")
    tried("nonfinite")
    assert "Inf at index (3, 1, 2)" in assert_clean_failure(r, codes=(1,))
    assert not (tmp_path / "out").exists()
    with pytest.raises(NonFiniteError):
        Dataset(x, np.zeros(8, int))
    tried("nonfinite")


def test_training_stops_on_nonfinite_loss(monkeypatch):
    import edgelstm.training.train as tr

    real = tr._loss_fn

    def exploding(*args, **kwargs):  # a loss that turns NaN, like a diverging lr would
        return real(*args, **kwargs) * float("nan")

    monkeypatch.setattr(tr, "_loss_fn", exploding)
    rng = np.random.default_rng(0)
    ds = Dataset(rng.standard_normal((8, 4, 3)).astype(np.float32), np.arange(8) % 2)
    with pytest.raises(TrainingError, match="not finite|nan"):
        tr.train({"hidden": 4}, ds, epochs=2, validation=None, compile=False)
    tried("nonfinite")
