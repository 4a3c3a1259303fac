"""Event mode for per-frame probabilities: speech start/end segments.

A voice-activity detector's output is one probability per frame. Segments
come from it in three rules, applied as :func:`speech_segments` does on a
whole signal and :class:`SegmentDetector` does as frames arrive (the two give
the same segments for any chunking):

1. hysteresis: a frame is active when ``p >= on``, or when ``p >= off`` and
   the previous frame was active (``off <= on``);
2. gaps of fewer than ``min_silence`` inactive frames inside speech are bridged;
3. segments shorter than ``min_speech`` frames (after bridging) are dropped.

Segments are half-open frame ranges ``[start, end)``; ``end`` is one past the
last active frame. The streaming detector emits ``start`` once a segment is
``min_speech`` frames long (so it is certain to be kept) and ``end`` once
``min_silence`` inactive frames have followed it, or when the stream ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelstm.errors import ConfigError, DataError
from edgelstm.streaming.session import ChunkResult


def check_thresholds(on: float, off: float | None) -> tuple[float, float]:
    """``(on, off)`` with ``off`` defaulting to ``max(on - 0.15, 0.01)``; refuses bad values."""
    if not 0.0 < on <= 1.0:
        raise ConfigError(f"on threshold must be in (0, 1], got {on}")
    off = max(on - 0.15, 0.01) if off is None else off
    if not 0.0 <= off <= on:
        raise ConfigError(f"off threshold must be in [0, on={on}], got {off}")
    return float(on), float(off)


def speech_segments(probs, on: float = 0.5, off: float | None = None, min_speech: int = 1,
                    min_silence: int = 1) -> list[tuple[int, int]]:
    """Segments ``[(start, end), ...]`` (frames) of a whole probability track ``(T,)``."""
    on, off = check_thresholds(on, off)
    p = np.asarray(probs, np.float64).reshape(-1)
    active, prev = np.zeros(len(p), bool), False
    for i, v in enumerate(p):
        prev = bool(v >= on or (prev and v >= off))
        active[i] = prev
    runs, start = [], None
    for i, a in enumerate(active):
        if a and start is None:
            start = i
        elif not a and start is not None:
            runs.append([start, i])
            start = None
    if start is not None:
        runs.append([start, len(p)])
    merged: list[list[int]] = []
    for s, e in runs:
        if merged and s - merged[-1][1] < min_silence:
            merged[-1][1] = e
        else:
            merged.append([s, e])
    return [(s, e) for s, e in merged if e - s >= min_speech]


@dataclass
class SpeechEvent:
    """A segment boundary: ``kind`` ``"start"`` (``end`` is None) or ``"end"``.

    Attributes:
        start, end: frames of the segment (``end`` exclusive).
        frame_ms: frame duration, for the times.
    """

    kind: str
    start: int
    end: int | None = None
    frame_ms: float | None = None

    def _t(self, frame: int | None) -> float | None:
        return None if frame is None or self.frame_ms is None else frame * self.frame_ms / 1e3

    def to_dict(self) -> dict:
        d = {"event": f"speech_{self.kind}", "start_frame": self.start}
        if self.end is not None:
            d["end_frame"] = self.end
        if self.frame_ms is not None:
            d["start_s"] = round(self._t(self.start), 4)
            if self.end is not None:
                d["end_s"] = round(self._t(self.end), 4)
        return d

    def line(self) -> str:
        """One readable line."""
        def when(f):
            t = self._t(f)
            return f"{t:.3f} s" if t is not None else f"frame {f}"

        if self.kind == "start":
            return f"speech start at {when(self.start)}"
        return f"speech end   at {when(self.end)} (segment {when(self.start)} - {when(self.end)})"


class SegmentDetector:
    """Turn a stream's per-frame probabilities into :class:`SpeechEvent` s (module docstring).

    Args:
        on, off: hysteresis thresholds (``off`` default ``max(on - 0.15, 0.01)``).
        min_speech: frames a segment needs to count. Default: ``1``.
        min_silence: inactive frames that end a segment. Default: ``1``.
        frame_ms: frame duration, to stamp events with times.
        column: which column of a result's output is the probability; default:
            the only one (a wider output is refused: logits are not probabilities).
    """

    def __init__(self, on: float = 0.5, off: float | None = None, min_speech: int = 1,
                 min_silence: int = 1, frame_ms: float | None = None,
                 column: int | None = None):
        self.on, self.off = check_thresholds(on, off)
        if min_speech < 0 or min_silence < 0:
            raise ConfigError("minimum durations must be >= 0 frames")
        self.min_speech, self.min_silence = int(min_speech), int(min_silence)
        self.frame_ms, self.column = frame_ms, column
        self.reset()

    def reset(self) -> None:
        """Forget everything (new stream)."""
        self._active = False
        self._start: int | None = None  # first frame of the segment under way
        self._last = 0  # one past its last active frame
        self._started = False  # its start was emitted
        self._frame = 0

    def update(self, result: ChunkResult) -> list[SpeechEvent]:
        """Feed one chunk's result; return the events it completes."""
        out = np.asarray(result.output)
        col = self.column
        if out.ndim != 2 or (col is None and out.shape[1] != 1) or (
                col is not None and not 0 <= col < out.shape[1]):
            which = "one column" if col is None else f"column {col}"
            raise DataError(f"events need a per-frame probability ({which}); the model's "
                            f"output rows have shape {out.shape[1:]}")
        return self.feed(out[:, col or 0])

    def feed(self, probs) -> list[SpeechEvent]:
        """Feed the next frames' probabilities ``(t,)``; return the events they complete."""
        events = []
        for v in np.asarray(probs, np.float64).reshape(-1):
            i = self._frame
            self._frame += 1
            self._active = bool(v >= self.on or (self._active and v >= self.off))
            if self._active:
                if self._start is None:
                    self._start = i
                self._last = i + 1
                if not self._started and self._last - self._start >= self.min_speech:
                    self._started = True
                    events.append(SpeechEvent("start", self._start, None, self.frame_ms))
            elif self._start is not None and i + 1 - self._last >= self.min_silence:
                events += self._close()
        return events

    def finish(self) -> list[SpeechEvent]:
        """The stream ended: close a segment under way (if long enough)."""
        return self._close() if self._start is not None else []

    def _close(self) -> list[SpeechEvent]:
        events = []
        if self._last - self._start >= self.min_speech:
            if not self._started:
                events.append(SpeechEvent("start", self._start, None, self.frame_ms))
            events.append(SpeechEvent("end", self._start, self._last, self.frame_ms))
        self._start, self._started = None, False
        return events
