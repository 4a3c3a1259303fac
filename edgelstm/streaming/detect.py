"""Event-style output for streaming (keyword spotting): posterior smoothing + threshold.

Per-frame logits become softmax posteriors, smoothed by a moving average over
the last ``smooth`` rows (carried across chunks), and a :class:`Detection`
fires when a label's smoothed posterior rises to ``threshold`` or above (a
rising edge, so one utterance gives one detection, not one per frame).
Background-like labels (``ignore``) never fire.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from edgelstm.errors import ConfigError
from edgelstm.streaming.session import ChunkResult, softmax

DEFAULT_IGNORE = ("_background_", "_background_noise_", "_silence_", "_unknown_",
                  "background", "silence", "noise", "none", "blank", "<blank>")


@dataclass
class Detection:
    """One event: ``label`` reached ``score`` (smoothed posterior) at ``frame``."""

    label: str
    score: float
    frame: int
    time_s: float | None = None

    def to_dict(self) -> dict:
        d = {"event": "detection", "label": self.label, "score": round(self.score, 6),
             "frame": self.frame}
        if self.time_s is not None:
            d["time_s"] = round(self.time_s, 4)
        return d


class Detector:
    """Turn a stream's :class:`ChunkResult` s into :class:`Detection` s.

    Args:
        labels: class names, one per output.
        threshold: smoothed posterior needed to fire, in (0, 1]. Default: ``0.5``.
        smooth: moving-average window in rows (frames; chunks for a
            per-sequence head). Default: ``1`` (no smoothing).
        ignore: labels that never fire. Default: common background names.
        frame_ms: frame duration, to stamp detections with a time.
    """

    def __init__(self, labels: list[str], threshold: float = 0.5, smooth: int = 1,
                 ignore: tuple[str, ...] = DEFAULT_IGNORE, frame_ms: float | None = None):
        if not labels:
            raise ConfigError("detections need a model with labels")
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
        if smooth < 1:
            raise ConfigError(f"smoothing window must be >= 1 frame, got {smooth}")
        self.labels = list(labels)
        self.threshold = float(threshold)
        self.smooth = int(smooth)
        self.frame_ms = frame_ms
        low = {s.lower() for s in ignore}
        self._active = np.array([lab.lower() not in low for lab in self.labels])
        self.reset()

    def reset(self) -> None:
        """Forget the smoothing history (new stream)."""
        self._hist: deque = deque(maxlen=self.smooth)
        self._above = np.zeros(len(self.labels), dtype=bool)

    def update(self, result: ChunkResult) -> list[Detection]:
        """Feed one chunk's result; return the detections it completes."""
        probs = softmax(result.output)
        # per-sequence heads give one row, which belongs to the chunk's last frame
        first = result.end - len(probs)
        events = []
        for j, p in enumerate(probs):
            self._hist.append(p)
            smoothed = np.mean(self._hist, axis=0)
            above = smoothed >= self.threshold
            rising = above & ~self._above & self._active
            for k in np.flatnonzero(rising):
                frame = first + j
                t = None if self.frame_ms is None else (frame + 1) * self.frame_ms / 1000.0
                events.append(Detection(self.labels[k], float(smoothed[k]), frame, t))
            self._above = above
        return events
