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

from _common import data_dir, train_with_cli, write_labels  # noqa: E402

from edgelstm.training.data import load_dataset  # noqa: E402

# The CLI defaults: `edgelstm train ../shared/data/uea/JapaneseVowels
# -o examples/japanesevowels/model --seed 0`. Sequences are 7-29 frames of 12 LPC
# cepstra, zero-padded in a batch; lengths keep the padding out of the recurrence.
ARGS = ["--seed", "0"]


def main():
    data = data_dir(__doc__) / "uea" / "JapaneseVowels"
    train_with_cli(HERE, data, "../shared/data/uea/JapaneseVowels", ARGS)
    write_samples(load_dataset(data, "test"))


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
