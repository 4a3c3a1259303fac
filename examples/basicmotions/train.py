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

from _common import data_dir, train_with_cli, write_labels  # noqa: E402

from edgelstm.training.data import load_dataset  # noqa: E402

# The CLI defaults, nothing else: `edgelstm train ../shared/data/uea/BasicMotions
# -o examples/basicmotions/model --seed 0` (see README.md here for what they pick).
ARGS = ["--seed", "0"]


def main():
    data = data_dir(__doc__) / "uea" / "BasicMotions"
    train_with_cli(HERE, data, "../shared/data/uea/BasicMotions", ARGS)
    write_samples(load_dataset(data, "test"))


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
