"""Train the shipped JapaneseVowels speaker-ID model from ../shared/data (fixed seed).

Writes model/, metrics.json and samples/ next to this script:

    python examples/japanesevowels/train.py [--data ../shared/data]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import data_dir, load_splits, train_and_finish, write_labels  # noqa: E402

# Sequences are 7-29 frames of 12 LPC cepstra, zero-padded to 29 in a batch;
# per-sequence lengths keep the padding out of the recurrence and the head
# reads each sequence's own last valid step.
MODEL = {"cell": "lstm", "hidden": 64, "head": "sequence"}
TRAINING = {"epochs": 60, "lr": 3e-3, "batch_size": 16, "seed": 0, "validation": None}


def main():
    train_set, test_set = load_splits(data_dir(__doc__) / "uea" / "JapaneseVowels")
    train_and_finish(HERE, MODEL, TRAINING, train_set, test_set)
    write_samples(test_set)


def write_samples(test_set):
    """Three test utterances (speakers 1, 5, 9), each unpadded ``(T_i, 12)``."""
    out = HERE / "samples"
    out.mkdir(exist_ok=True)
    labels = {}
    for name in ("1", "5", "9"):
        c = test_set.labels.index(name)
        k = int(np.flatnonzero(test_set.y == c)[0])
        T = int(test_set.lengths[k])
        file = f"speaker{name}_test{k:03d}_len{T}.npy"
        np.save(out / file, test_set.x[k, :T])
        labels[file] = name
    write_labels(out, labels)


if __name__ == "__main__":
    main()
