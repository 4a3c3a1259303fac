"""Training defaults on small and odd data: splits, augmentation, pooling, provenance,
time budget, search, Ctrl-C, labelled WAV trees and the train command's new options."""

from __future__ import annotations

import json
import wave

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from edgelstm.cli import cli
from edgelstm.errors import ConfigError, UnsupportedError
from edgelstm.io.checkpoint import load
from edgelstm.training.augment import AUGMENTATIONS, Augmenter, parse_augment
from edgelstm.training.data import Dataset, load_dataset
from edgelstm.training.recipe import auto_augment, holdout, lr_at, search
from edgelstm.training.train import build_model, train


def _toy(n=60, T=12, I=3, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    lengths = rng.integers(T // 2, T + 1, size=n)
    x = rng.normal(0, 1.0, size=(n, T, I)).astype(np.float32)
    x[:, :, 0] += (y - 1.0)[:, None] * 1.5
    for k, L in enumerate(lengths):
        x[k, L:] = 0
    return Dataset(x, y, lengths, [f"c{k}" for k in range(classes)], name="toy")


def test_split_keeps_one_per_class_on_tiny_data():
    ds = _toy(n=50, classes=10)  # 5 per class: 10% rounds to 0, we hold out 1 each
    rest, held = ds.split(0.1, seed=0)
    assert held.n == 10 and sorted(held.y.tolist()) == list(range(10))
    assert rest.n == 40


def test_holdout_falls_back_without_validation():
    ds = _toy(n=4, classes=4)  # one sequence per class
    said = []
    rest, held = holdout(ds, 0.1, 0, said.append)
    assert held is None and rest.n == 4 and "without early stopping" in said[0]
    _, hist = train({"hidden": 4}, ds, epochs=2, validation=0.1, log=said.append)
    assert hist["best_epoch"] is None and len(hist["loss"]) == 2


def test_lr_schedule_warms_up_and_decays():
    assert lr_at(0.0, 1.0) == pytest.approx(0.1)
    assert lr_at(0.05, 1.0) == pytest.approx(1.0)
    assert lr_at(1.0, 1.0) == pytest.approx(0.01)
    assert lr_at(0.5, 1.0) < lr_at(0.2, 1.0)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_augmentations_keep_shapes_padding_and_seed(name):
    ds = _toy()
    lengths = ds.lengths.copy()
    mean, std = np.zeros(3, np.float32), np.ones(3, np.float32)
    aug = Augmenter((name,))
    a = aug(ds.x, lengths, ds.y, mean, std, np.random.default_rng(1))
    b = aug(ds.x, lengths, ds.y, mean, std, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    x, L = a
    assert x.shape == ds.x.shape and (L >= 1).all() and (L <= lengths).all()
    assert not x[np.arange(x.shape[1])[None] >= L[:, None]].any()  # padding stays zero
    assert np.isfinite(x).all() and not np.array_equal(x, ds.x)


def test_auto_augment_crops_long_multichannel_recordings_only():
    assert auto_augment(_toy(T=100, I=6)) == ("crop", "jitter", "scale")  # BasicMotions-like
    assert auto_augment(_toy(T=29, I=12)) == ("jitter", "scale")  # JapaneseVowels-like
    assert auto_augment(_toy(T=150, I=1)) == ("jitter", "scale")  # univariate UCR shape
    frames = _toy(T=100, I=6)
    frames.y = np.repeat(frames.y[:, None], 100, axis=1)
    assert "crop" not in auto_augment(Dataset(frames.x, frames.y, frames.lengths,
                                              frames.labels, name="frames"))
    audio = _toy(T=100, I=6)
    audio.features = {"kind": "mfcc"}
    assert auto_augment(audio) == ("mask",)


def test_parse_augment():
    assert parse_augment("jitter, scale") == ("jitter", "scale")
    assert parse_augment("none") == () and parse_augment(None) == ()
    with pytest.raises(ConfigError, match="unknown augmentation"):
        parse_augment("rotate")


def test_mean_pool_masks_padding_and_cannot_stream():
    ds = _toy()
    model = build_model(ds, hidden=6, pool="mean")
    model.eval()
    k = int(np.argmin(ds.lengths))
    L = int(ds.lengths[k])
    x = mx.array(ds.x[k:k + 1])
    padded = np.array(model(x, lengths=mx.array([L])))
    alone = np.array(model(mx.array(ds.x[k:k + 1, :L])))
    np.testing.assert_allclose(padded, alone, atol=1e-5)
    from edgelstm.streaming.backends import MLXBackend

    with pytest.raises(UnsupportedError, match="mean-pooling"):
        MLXBackend(model)


def test_mean_pool_onnx_matches_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from edgelstm.converters import to_onnx

    ds = _toy()
    model, _ = train({"hidden": 6, "pool": "mean", "bidirectional": True}, ds, epochs=1,
                     validation=None)
    L = ds.lengths[:8].astype(np.int32)
    ref = np.array(model(mx.array(ds.x[:8]), lengths=mx.array(L)))
    path = to_onnx(model, tmp_path / "m.onnx", lengths=True)
    got = ort.InferenceSession(str(path)).run(None, {"input": ds.x[:8], "lengths": L})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5)
    with pytest.raises(UnsupportedError, match="mean-pooling"):
        to_onnx(model.__class__.from_config({**model.config(), "rnn": {
            **model.config()["rnn"], "bidirectional": False}}), tmp_path / "s.onnx",
            streaming=True)


def test_same_seed_same_model_and_provenance(tmp_path):
    ds = _toy()
    # 40% of 60 = 24 held out: above the 20 below which no split is made
    a, _ = train({"hidden": 5}, ds, epochs=3, seed=4, augment="jitter,scale,warp,mix",
                 validation=0.4)
    b, _ = train({"hidden": 5}, ds, epochs=3, seed=4, augment="jitter,scale,warp,mix",
                 validation=0.4)
    np.testing.assert_array_equal(np.array(a.head.weight), np.array(b.head.weight))
    prov = a.provenance
    assert prov["seed"] == 4 and prov["epochs_run"] == 3 and prov["edgelstm_version"]
    assert prov["split"].startswith("stratified")
    a.save(tmp_path / "m")
    assert load(tmp_path / "m").provenance == json.loads(json.dumps(prov))


def test_time_budget_picks_epochs():
    said = []
    _, hist = train({"hidden": 4}, _toy(), epochs=10_000, time_budget=0.5, validation=None,
                    log=said.append)
    assert hist["epochs"] < 10_000 and any("time budget" in s for s in said)


def test_ctrl_c_keeps_best_epoch():
    calls = []

    def progress(epoch, done, total):
        calls.append(epoch)
        if epoch == 3:
            raise KeyboardInterrupt

    model, hist = train({"hidden": 4}, _toy(), epochs=10, progress=progress, validation=0.4)
    assert hist["interrupted"] == 3 and hist["best_epoch"] in (1, 2)
    assert not model.training


def test_search_small_keeps_best_on_validation():
    said = []
    model, hist = search({"hidden": 4}, _toy(), "small", epochs=2, log=said.append)
    rows = model.provenance["search"]["candidates"]
    assert len(rows) == 4 and sum("search:" in s for s in said) == 4
    assert max(r["val_accuracy"] for r in rows) == pytest.approx(
        hist["val_accuracy"][hist["best_epoch"] - 1], abs=1e-6)


def _wav(path, seconds=0.3, rate=8000, freq=440.0):
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def test_labelled_wav_tree_trains_with_chosen_front_end(tmp_path):
    root = tmp_path / "kws"
    for label, freq in (("no", 300.0), ("yes", 1200.0)):
        (root / label).mkdir(parents=True)
        for k in range(4):
            _wav(root / label / f"{k}.wav", freq=freq * (1 + 0.05 * k))
    ds = load_dataset(root, "train", features={"kind": "fbank", "n_mels": 20})
    assert ds.labels == ["no", "yes"] and ds.input_size == 20 and ds.n == 8
    out = tmp_path / "m"
    r = CliRunner().invoke(cli, ["train", str(root), "-o", str(out), "--features", "mfcc",
                                 "--n-mfcc", "10", "--epochs", "2", "--no-progress"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["features"]["kind"] == "mfcc" and cfg["features"]["n_mfcc"] == 10
    assert cfg["provenance"]["data"] == "kws" and cfg["provenance"]["seed"] == 0


def test_cli_refuses_audio_options_on_sensor_data(tmp_path):
    ds = _toy()
    np.savez(tmp_path / "d.npz", x=ds.x, y=ds.y, lengths=ds.lengths)
    r = CliRunner().invoke(cli, ["train", str(tmp_path / "d.npz"), "-o", str(tmp_path / "m"),
                                 "--n-mels", "20", "--epochs", "1"])
    assert r.exit_code == 1 and "WAV data only" in r.output
