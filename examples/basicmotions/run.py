"""Classify the shipped BasicMotions samples with the shipped model.

    python examples/basicmotions/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import report, run_samples  # noqa: E402

from edgelstm.frontend.readers import read_csv  # noqa: E402


def read(model, path: Path) -> np.ndarray:
    """A (100, 6) recording from .npy or .csv; normalisation happens inside the model."""
    return np.load(path) if path.suffix == ".npy" else read_csv(path)


def predictions() -> list[dict]:
    return run_samples(HERE, read)


if __name__ == "__main__":
    print("BasicMotions (smartwatch accelerometer + gyroscope, 10 s at 10 Hz):")
    report(predictions())
