"""Training, evaluation, dataset specs and the train/eval commands on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import edgelstm
from edgelstm.cli import cli
from edgelstm.errors import ConfigError, DataError
from edgelstm.training.data import Dataset, from_sequences, load_dataset
from edgelstm.training.train import build_model, evaluate, predict, train


def _toy(n=96, T=12, I=3, seed=0, variable=True):
    """Class = sign of channel 0's mean (plus a third class: channel 1 high); noisy."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    lengths = rng.integers(T // 2, T + 1, size=n) if variable else np.full(n, T)
    x = rng.normal(0, 1.0, size=(n, T, I)).astype(np.float32)
    x[:, :, 0] += np.where(y == 0, 1.0, -1.0)[:, None]
    x[:, :, 1] += np.where(y == 2, 2.0, 0.0)[:, None]
    for k, L in enumerate(lengths):
        x[k, L:] = 0
    return Dataset(x, y, lengths, ["pos", "neg", "high"], name="toy")


def test_training_learns_sequence_head():
    ds = _toy()
    test = _toy(seed=1)
    model = build_model(ds, hidden=8)
    before = evaluate(model, test)
    model, hist = train(model, ds, epochs=12, lr=1e-2, batch_size=16, validation=None)
    after = evaluate(model, test)
    assert hist["loss"][-1] < 0.5 * hist["loss"][0]
    assert after["accuracy"] > 0.8  # chance is 1/3
    assert after["loss"] < before["loss"]
    assert sum(map(sum, after["confusion"])) == after["n"] == test.n
    assert not model.training  # returned in eval mode
    # normalisation statistics were fitted on valid frames and kept fixed
    np.testing.assert_allclose(np.array(model.norm.mean), ds.valid_frames().mean(0), atol=1e-5)


def test_training_is_deterministic():
    ds = _toy(n=48)
    a, ha = train({"hidden": 6}, ds, epochs=2, batch_size=16, seed=3, validation=0.25)
    b, hb = train({"hidden": 6}, ds, epochs=2, batch_size=16, seed=3, validation=0.25)
    assert ha["loss"] == hb["loss"] and ha["val_accuracy"] == hb["val_accuracy"]
    np.testing.assert_array_equal(np.array(a.head.weight), np.array(b.head.weight))


@pytest.mark.parametrize("target", ["last", "all", "mixed"])
def test_frame_head_on_sequence_labels(target):
    ds = _toy(n=64, T=10)
    model, hist = train({"hidden": 8, "head": "frame", "cell": "gru"}, ds, epochs=10, lr=1e-2,
                        batch_size=16, validation=None, target=target)
    assert model.head_type == "frame"
    assert evaluate(model, _toy(n=64, T=10, seed=2))["accuracy"] > 0.75
    assert hist["loss"][-1] < hist["loss"][0]


def test_per_frame_labels_and_crop_rejected():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 2)).astype(np.float32)
    y = (x[:, :, 0] > 0).astype(np.int32)  # the label is visible in the current frame
    ds = Dataset(x, y, rng.integers(4, 9, size=40))
    model, _ = train({"hidden": 8, "cell": "rnn"}, ds, epochs=15, lr=2e-2, batch_size=8,
                     validation=None)
    assert model.head_type == "frame"
    metrics = evaluate(model, ds)
    assert metrics["n"] == int(ds.lengths.sum())  # only valid frames are scored
    assert metrics["accuracy"] > 0.85
    with pytest.raises(ConfigError, match="crop"):
        train({"hidden": 4}, ds, epochs=1, crop=0.5, validation=None)


def test_early_stopping_restores_best():
    ds = _toy(n=60)
    _, hist = train({"hidden": 6}, ds, epochs=30, lr=5e-2, batch_size=60, validation=0.4,
                    patience=2)
    best = hist["best_epoch"]
    assert best is not None and best <= len(hist["loss"])
    assert hist["val_accuracy"][best - 1] == max(hist["val_accuracy"])


def test_crop_augmentation_and_predict():
    ds = _toy(n=64, variable=False)
    model, _ = train({"hidden": 8}, ds, epochs=10, lr=1e-2, batch_size=16, validation=None,
                     crop=0.5)
    pred = predict(model, ds.x, ds.lengths)
    assert pred.shape == (64,) and (pred == ds.y).mean() > 0.75
    assert int(predict(model, ds.x[0])) == pred[0]


def test_evaluate_maps_labels_by_name():
    ds = _toy(n=48)
    model, _ = train({"hidden": 8}, ds, epochs=6, lr=1e-2, batch_size=16, validation=None)
    # same data, classes listed in another order: indices differ, names agree
    order = [2, 0, 1]
    relabelled = Dataset(ds.x, np.array([order.index(v) for v in ds.y]), ds.lengths,
                         [ds.labels[k] for k in order])
    assert evaluate(model, relabelled)["accuracy"] == evaluate(model, ds)["accuracy"]
    bad = Dataset(ds.x, ds.y, ds.lengths, ["pos", "neg", "other"])
    with pytest.raises(DataError, match="other"):
        evaluate(model, bad)


def test_dataset_checks_and_split():
    ds = _toy(n=90)
    rest, held = ds.split(0.2, seed=1)
    assert rest.n + held.n == 90 and abs(held.n - 18) <= 2
    assert set(held.y.tolist()) == {0, 1, 2}  # stratified
    assert held.lengths is not None  # _toy makes variable lengths
    assert held.x.shape[1] == held.lengths.max()  # padding trimmed to the split's longest
    with pytest.raises(DataError, match="lengths"):
        Dataset(np.zeros((2, 3, 1)), np.zeros(2, int), [0, 3])
    with pytest.raises(DataError, match="integer"):
        Dataset(np.zeros((2, 3, 1)), np.zeros(2))
    # equal lengths collapse to None (no masking needed)
    assert Dataset(np.zeros((2, 3, 1)), np.zeros(2, int), [3, 3]).lengths is None
    seqs = from_sequences([np.ones((2, 1)), np.ones((5, 1))], ["b", "a"])
    assert seqs.labels == ["a", "b"] and seqs.y.tolist() == [1, 0]
    assert seqs.lengths.tolist() == [2, 5] and seqs.x[0, 2:].sum() == 0


TS = """@problemName Toy
@timeStamps false
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3:1,1,1:up
3,2:0,0:down
"""


def test_load_ts_npz_and_errors(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "Toy_TRAIN.ts").write_text(TS)
    (tmp_path / "toy" / "Toy_TEST.ts").write_text(TS.replace("3,2:0,0", "5,5,5,5:0,0,0,0"))
    train_ds = load_dataset(tmp_path / "toy")
    assert train_ds.x.shape == (2, 3, 2) and train_ds.labels == ["up", "down"]
    assert train_ds.lengths.tolist() == [3, 2]
    assert load_dataset(tmp_path / "toy", "test").x.shape == (2, 4, 2)
    assert load_dataset(tmp_path / "toy", "all").n == 4
    assert load_dataset(tmp_path / "toy" / "Toy_TRAIN.ts").n == 2
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 4, 2), np.float32), y=np.array([0, 1, 1]),
             lengths=np.array([4, 2, 1]), labels=np.array(["a", "b"]))
    d = load_dataset(tmp_path / "d.npz")
    assert d.labels == ["a", "b"] and d.lengths.tolist() == [4, 2, 1]
    np.savez(tmp_path / "bad.npz", x=np.zeros((3, 4, 2)))
    with pytest.raises(DataError, match="'y'"):
        load_dataset(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="cannot tell"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")


def test_cli_train_and_eval(tmp_path):
    ds = _toy(n=64)
    data = tmp_path / "toy.npz"
    np.savez(data, x=ds.x, y=ds.y, lengths=ds.lengths, labels=np.array(ds.labels))
    out = tmp_path / "model"
    runner = CliRunner()
    args = ["train", str(data), "-o", str(out), "--hidden", "8", "--epochs", "8", "--lr", "0.01",
            "--batch-size", "16", "--val", "0", "--json"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert len(summary["history"]["loss"]) == 8
    model = edgelstm.load(out)
    assert model.labels == ds.labels and model.head_type == "sequence"
    res = runner.invoke(cli, ["eval", str(out), str(data), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["n"] == 64 and metrics["accuracy"] > 0.7
    res = runner.invoke(cli, ["eval", str(out), str(data)])
    assert res.exit_code == 0 and "accuracy" in res.stdout and "confusion" in res.stdout
    # existing output without --force, and bad data: one-line errors, exit 1
    res = runner.invoke(cli, args)
    assert res.exit_code == 1 and "already exists" in res.output
    np.savez(tmp_path / "wide.npz", x=np.zeros((2, 3, 5), np.float32), y=np.array([0, 1]))
    res = runner.invoke(cli, ["eval", str(out), str(tmp_path / "wide.npz")])
    assert res.exit_code == 1 and "features" in res.output and "Traceback" not in res.output
