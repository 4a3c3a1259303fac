"""Identify the speaker of the shipped JapaneseVowels samples with the shipped model.

    python examples/japanesevowels/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import report, run_samples  # noqa: E402


def read(model, path: Path) -> np.ndarray:
    """One utterance ``(T, 12)`` of LPC cepstra, any length (no padding needed)."""
    return np.load(path)


def predictions() -> list[dict]:
    return run_samples(HERE, read)


if __name__ == "__main__":
    print("JapaneseVowels (speaker of a /ae/ utterance, 12 LPC cepstra per frame):")
    report(predictions())
