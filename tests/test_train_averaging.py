"""Weight averaging (EMA), label smoothing and refitting on all the data after the split."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from edgelstm.errors import ConfigError
from edgelstm.training.data import Dataset
from edgelstm.training.train import _loss_fn, build_model, evaluate, train


def _toy(n=48, T=10, I=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    lengths = rng.integers(T // 2, T + 1, size=n)
    x = rng.normal(0, 1.0, size=(n, T, I)).astype(np.float32)
    x[:, :, 0] += (y - 1.0)[:, None]
    for k, L in enumerate(lengths):
        x[k, L:] = 0
    return Dataset(x, y, lengths, ["a", "b", "c"], name="toy")


def _weights(model) -> dict[str, np.ndarray]:
    return {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}


def test_ema_weights_are_the_average_of_the_steps():
    ds = _toy()
    snapshots = []
    model = build_model(ds, hidden=6)

    def after_step(epoch, done, total):  # the live weights after every optimizer step
        snapshots.append(_weights(model))

    decay = 0.8
    start = _weights(model)
    trained, hist = train(model, ds, epochs=3, batch_size=16, seed=1, validation=None,
                          augment=None, ema=decay, progress=after_step)
    assert len(snapshots) == 9  # 3 epochs x 3 steps
    expected = dict(start)
    for t, live in enumerate(snapshots, start=1):  # the ramped decay of edgelstm's EMA
        d = min(decay, (1 + t) / (10 + t))
        expected = {k: d * expected[k] + (1 - d) * live[k] for k in expected}
    got = _weights(trained)
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    # the saved weights are the average, not the last step's
    assert any(np.abs(got[k] - snapshots[-1][k]).max() > 1e-4 for k in got)


def test_ema_is_deterministic_and_leaves_the_training_path_alone():
    ds = _toy()
    kw = dict(epochs=4, batch_size=16, seed=2, validation=None)
    plain, hp = train({"hidden": 6}, ds, ema=None, **kw)
    a, ha = train({"hidden": 6}, ds, ema=0.9, **kw)
    b, hb = train({"hidden": 6}, ds, ema=0.9, **kw)
    assert ha["loss"] == hb["loss"] == hp["loss"]  # averaging never feeds back into training
    wa, wb, wp = _weights(a), _weights(b), _weights(plain)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k])
    assert any(not np.array_equal(wa[k], wp[k]) for k in wa)
    assert a.provenance["settings"]["ema"] == 0.9


def test_ema_weights_are_the_ones_validated_and_kept():
    ds, held = _toy(), _toy(n=24, seed=5)
    model, hist = train({"hidden": 6}, ds, epochs=6, batch_size=16, seed=0, validation=held,
                        patience=None, ema=0.7)
    best = hist["best_epoch"]
    metrics = evaluate(model, held)
    assert metrics["accuracy"] == hist["val_accuracy"][best - 1]
    assert metrics["loss"] == pytest.approx(hist["val_loss"][best - 1], rel=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_ema_range_checked(bad):
    with pytest.raises(ConfigError, match="ema"):
        train({"hidden": 4}, _toy(n=12), epochs=1, validation=None, ema=bad)


def test_label_smoothing_loss_matches_its_formula():
    ds = _toy(n=8)
    model = build_model(ds, hidden=5)
    mx.eval(model.parameters())
    x, y, lengths = mx.array(ds.x), mx.array(ds.y), mx.array(ds.lengths.astype(np.int32))
    eps = 0.2
    got = float(_loss_fn(model, x, y, lengths, "sequence", False, "last", smoothing=eps))
    logits = np.array(model(x, lengths=lengths)).astype(np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -logp[np.arange(len(ds.y)), ds.y]
    expected = ((1 - eps) * nll + eps * -logp.mean(-1)).mean()
    assert got == pytest.approx(expected, rel=1e-5)
    plain = float(_loss_fn(model, x, y, lengths, "sequence", False, "last"))
    assert plain == pytest.approx(nll.mean(), rel=1e-5)


@pytest.mark.parametrize("mode", ["same", "fit"])
def test_refit_retrains_on_everything_for_the_picked_epochs(mode):
    ds = _toy(n=60)
    kw = dict(batch_size=16, seed=4, patience=3, epochs=12)
    model, hist = train({"hidden": 6}, ds, validation=0.4, refit=mode, **kw)
    best = hist["best_epoch"]  # the history is the split run's, the retraining under "refit"
    assert best is not None and model.provenance["refit"]["epochs"] == best
    assert model.provenance["train_sequences"] == ds.n  # the held-out part came back in
    assert model.provenance["epochs_run"] == len(hist["refit"]["loss"]) == best
    # the same as training on everything for that many epochs, bit for bit, with the split
    # run's settings (no label smoothing: a run without a split would default to 0.1)
    assert model.provenance["settings"]["label_smoothing"] == 0.0
    if mode == "fit":
        again, _ = train({"hidden": 6}, ds, validation=None, label_smoothing=0.0,
                         **{**kw, "epochs": best})
    else:
        again, _ = train({"hidden": 6}, ds, validation=None, label_smoothing=0.0,
                         _stop_after=best, **kw)
    wa, wb = _weights(model), _weights(again)
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)
    # and reproducible
    twice, _ = train({"hidden": 6}, ds, validation=0.4, refit=mode, **kw)
    for k, v in _weights(twice).items():
        np.testing.assert_array_equal(v, wa[k])


def test_refit_without_a_split_is_plain_training():
    ds = _toy(n=30)
    a, ha = train({"hidden": 5}, ds, epochs=3, batch_size=16, validation=None, refit="same")
    b, hb = train({"hidden": 5}, ds, epochs=3, batch_size=16, validation=None)
    assert ha["loss"] == hb["loss"] and "refit" not in a.provenance and "refit" not in ha


def test_cli_flags_reach_training(tmp_path):
    import json

    from click.testing import CliRunner

    from edgelstm.cli import cli

    ds = _toy(n=60)
    data = tmp_path / "toy.npz"
    np.savez(data, x=ds.x, y=ds.y, lengths=ds.lengths)
    out = tmp_path / "m"
    res = CliRunner().invoke(cli, ["train", str(data), "-o", str(out), "--hidden", "5",
                                   "--epochs", "4", "--val", "0.4", "--ema", "0.9",
                                   "--label-smoothing", "0.1", "--refit", "fit"])
    assert res.exit_code == 0, res.output
    assert "retrained on all 60 sequences" in res.output
    prov = json.loads((out / "config.json").read_text())["provenance"]
    assert prov["settings"]["ema"] == 0.9 and prov["settings"]["label_smoothing"] == 0.1
    assert prov["refit"]["mode"] == "fit" and prov["train_sequences"] == 60
    bad = CliRunner().invoke(cli, ["train", str(data), "-o", str(tmp_path / "b"), "--ema", "1"])
    assert bad.exit_code != 0 and "Traceback" not in bad.output
