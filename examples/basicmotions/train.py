"""Train the shipped BasicMotions model from ../shared/data (fixed seed).

Writes model/, metrics.json and samples/ next to this script:

    python examples/basicmotions/train.py [--data ../shared/data]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import data_dir, load_splits, train_and_finish, write_labels  # noqa: E402

# One LSTM layer, last-step (sequence) head. Random windows of >= 50% of each
# recording regularise the 40-recording training set.
MODEL = {"cell": "lstm", "hidden": 64, "head": "sequence",
         "features": {"kind": "sensor", "rate": 10}}  # 10 Hz accelerometer + gyroscope
TRAINING = {"epochs": 150, "lr": 2e-3, "batch_size": 8, "seed": 0, "validation": None,
            "crop": 0.5}


def main():
    train_set, test_set = load_splits(data_dir(__doc__) / "uea" / "BasicMotions")
    train_and_finish(HERE, MODEL, TRAINING, train_set, test_set)
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
    write_labels(out, labels)


if __name__ == "__main__":
    main()
