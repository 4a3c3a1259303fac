"""`quantize --eval` accepts dataset specs, not only .npz, and agrees with `evaluate`."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

import edgelstm
from edgelstm.cli import cli
from edgelstm.quantize import quantize_model
from edgelstm.training.data import load_dataset
from edgelstm.training.train import evaluate


def _write_ts(path, n, rng):
    lines = ["@problemName toy", "@timeStamps false", "@univariate false",
             "@equalLength false", "@classLabel true up down", "@data"]
    for k in range(n):
        label = "up" if k % 2 else "down"
        steps = int(rng.integers(5, 12))
        chans = [rng.standard_normal(steps) + (1 if label == "up" else -1) for _ in range(2)]
        lines.append(":".join(",".join(f"{v:.4f}" for v in c) for c in chans) + f":{label}")
    path.write_text("\n".join(lines) + "\n")


def test_eval_on_a_ts_folder_matches_evaluate(tmp_path):
    rng = np.random.default_rng(0)
    data_dir = tmp_path / "Toy"
    data_dir.mkdir()
    _write_ts(data_dir / "Toy_TRAIN.ts", 8, rng)
    _write_ts(data_dir / "Toy_TEST.ts", 20, rng)
    # labels in the reverse order of the file's: indices must be mapped by name
    model = edgelstm.SequenceModel(edgelstm.LSTM(2, 16), head="sequence", labels=["up", "down"])
    model.save(tmp_path / "m")
    want = evaluate(edgelstm.load(tmp_path / "m"), load_dataset(data_dir, split="test"))
    report = quantize_model(tmp_path / "m", tmp_path / "q", eval_data=data_dir)
    assert report.eval_samples == 20
    assert report.accuracy_before == want["accuracy"]
    assert abs(report.accuracy_after - report.accuracy_before) <= 0.1
    r = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m"), str(tmp_path / "q.onnx"),
                                 "--eval", str(data_dir)])
    assert r.exit_code == 0, r.output
    assert "20 samples of" in r.output and "accuracy" in r.output
