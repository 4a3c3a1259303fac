"""Recognise the digit in the shipped FSDD WAVs with the shipped model.

The model stores its MFCC front end, so a WAV goes in and a digit comes out:

    python examples/fsdd/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _common import report, run_samples  # noqa: E402

from edgelstm.frontend.features import FeatureConfig  # noqa: E402
from edgelstm.frontend.readers import read_wav  # noqa: E402


def read(model, path: Path) -> np.ndarray:
    """8 kHz WAV -> MFCC frames ``(T, 13)`` with the model's own front end."""
    cfg = FeatureConfig.from_dict(model.features)
    samples, _ = read_wav(path, target_rate=cfg.sample_rate)
    return np.array(cfg.compute(samples))


def predictions() -> list[dict]:
    return run_samples(HERE, read)


if __name__ == "__main__":
    print("FSDD spoken digits (8 kHz WAV -> MFCC -> LSTM, frame head read at the last frame):")
    report(predictions())
