"""Train the shipped BasicMotions model from ../shared/data (fixed seed).

Writes model/, metrics.json and samples/ next to this script:

    python examples/basicmotions/train.py [--data ../shared/data]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import data_dir, finish, timed  # noqa: E402

from edgelstm.data import load_dataset  # noqa: E402
from edgelstm.train import train  # noqa: E402

# One LSTM layer, last-step (sequence) head. Random windows of >= 50% of each
# recording regularise the 40-recording training set.
MODEL = {"cell": "lstm", "hidden": 64, "head": "sequence",
         "features": {"kind": "sensor", "rate": 10}}  # 10 Hz accelerometer + gyroscope
TRAINING = {"epochs": 150, "lr": 2e-3, "batch_size": 8, "seed": 0, "validation": None,
            "crop": 0.5}


def main():
    folder = data_dir(__doc__) / "uea" / "BasicMotions"
    train_set = load_dataset(folder, "train")
    test_set = load_dataset(folder, "test")
    # train() seeds, then builds the model from MODEL: init is reproducible
    (model, history), seconds = timed(train, MODEL, train_set, **TRAINING)
    finish(HERE, model, test_set, {"model": MODEL, "training": TRAINING}, history, seconds)
    write_samples(test_set)


def write_samples(test_set):
    """The first test recording of each class, raw (the model normalises)."""
    out = HERE / "samples"
    out.mkdir(exist_ok=True)
    labels = {}
    for c, name in enumerate(test_set.labels):
        k = int(np.flatnonzero(test_set.y == c)[0])
        stem = f"{name.lower()}_test{k:02d}"
        np.save(out / f"{stem}.npy", test_set.x[k])
        labels[f"{stem}.npy"] = name
    # one as CSV too, for `edgelstm stream`: acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z per row
    np.savetxt(out / f"{stem}.csv", test_set.x[k], delimiter=",", fmt="%.6f",
               header="acc_x,acc_y,acc_z,gyr_x,gyr_y,gyr_z", comments="")
    labels[f"{stem}.csv"] = name
    (out / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")


if __name__ == "__main__":
    main()
