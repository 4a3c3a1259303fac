"""Driving one stream from a file or stdin: what ``edgelstm stream`` calls.

:func:`open_input` turns a path (or ``-``) into an iterator of chunks the
session's streams accept: audio samples for a model with a speech front end
(WAV, or raw/WAV PCM on stdin), frames ``(t, F)`` otherwise (CSV, ``.npy``,
CSV lines on stdin). Stdin is consumed as it arrives, so a live producer can
be piped in. :func:`run_stream` feeds the chunks, steps the stream whenever a
chunk of frames is ready, reports each result and returns a
:class:`StreamSummary` (it stops cleanly on Ctrl-C).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError
from edgelstm.frontend.audio_files import AUDIO_SUFFIXES
from edgelstm.streaming.detect import Detection, Detector
from edgelstm.streaming.session import ChunkResult, StreamingSession

DEFAULT_FRAME_MS = 10.0
STDIN_FORMATS = ("auto", "wav", "s16le", "s24le", "s32le", "u8", "f32le", "f64le", "csv")


class StopStream(Exception):
    """Raised by a callback to end :func:`run_stream` early (e.g. its reader went away)."""


@dataclass
class StreamSummary:
    """Totals of one streamed input.

    Attributes:
        frames, chunks: frames run through the model and chunks emitted.
        latencies_ms: per-chunk latency (front end + model).
        frame_ms: duration of one frame, for the real-time factor.
        interrupted: stopped by Ctrl-C.
    """

    frames: int = 0
    chunks: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    frame_ms: float = DEFAULT_FRAME_MS
    interrupted: bool = False
    detections: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0

    @property
    def stream_seconds(self) -> float:
        """Duration of the streamed signal."""
        return self.frames * self.frame_ms / 1000.0

    @property
    def real_time_factor(self) -> float:
        """Processing time over signal duration (below 1: faster than real time)."""
        secs = self.stream_seconds
        return sum(self.latencies_ms) / 1000.0 / secs if secs else 0.0

    def to_dict(self) -> dict:
        return {"frames": self.frames, "chunks": self.chunks,
                "p50_ms": round(self.percentile(50), 4), "p99_ms": round(self.percentile(99), 4),
                "real_time_factor": round(self.real_time_factor, 6),
                "stream_seconds": round(self.stream_seconds, 4),
                "interrupted": self.interrupted}

    def line(self) -> str:
        """One readable line for stderr."""
        text = (f"frames {self.frames}, chunks {self.chunks}, latency p50 "
                f"{self.percentile(50):.3f} ms, p99 {self.percentile(99):.3f} ms, "
                f"real-time factor {self.real_time_factor:.4f} "
                f"({self.stream_seconds:.2f} s of signal)")
        return ("interrupted: " if self.interrupted else "") + text


def open_input(session: StreamingSession, source: str | None, *, stdin=None,
               chunk_frames: int | None = None, rate: int | None = None,
               stdin_format: str = "auto", columns: list | None = None
               ) -> tuple[Iterator[np.ndarray], str]:
    """Chunks of ``source`` for ``session``'s streams.

    Args:
        session: the streaming session (its front end decides audio vs frames).
        source: a ``.wav``, ``.csv``/``.tsv``/``.txt`` or ``.npy`` path, or ``-``/``None``
            for stdin.
        stdin: binary stream used for ``-``. Default: ``sys.stdin.buffer``.
        chunk_frames: frames per chunk read from a file. Default: the session's.
        rate: sample rate of raw PCM on stdin. Default: the model's.
        stdin_format: ``auto`` (WAV header if present, else raw s16le, for a
            speech model; CSV lines otherwise), a raw PCM format, ``wav`` or ``csv``.
        columns: CSV/.npy columns to keep (indices or header names).

    Returns:
        ``(chunks, name)``; each chunk is audio ``(n,)`` at the model's rate or frames ``(t, F)``.
    """
    from edgelstm.frontend import readers

    n = chunk_frames or session.chunk_frames
    if source in (None, "-"):
        stream = stdin if stdin is not None else sys.stdin.buffer
        if stdin_format not in STDIN_FORMATS:
            raise DataError(f"unknown stdin format {stdin_format!r}; valid: "
                            f"{', '.join(STDIN_FORMATS)}")
        if stdin_format == "csv" or (stdin_format == "auto" and not session.is_speech):
            return readers.iter_csv_stream(stream, columns=columns), "<stdin>"
        _need_speech(session, "<stdin>", "audio")
        pcm = readers.PCMStream(stream, fmt=stdin_format, rate=rate,
                                target_rate=session.sample_rate)
        return iter(pcm), "<stdin>"
    path = Path(source)
    if path.suffix.lower() in AUDIO_SUFFIXES:
        _need_speech(session, source, "an audio input")
        samples, _ = readers.read_input(path, target_rate=session.sample_rate)
        step = n * session.frontend.hop_length
        return (samples[i:i + step] for i in range(0, len(samples), step)), source
    frames, _ = readers.read_input(path, columns=columns)
    return (frames[i:i + n] for i in range(0, len(frames), n)), source


def _need_speech(session: StreamingSession, name: str, what: str) -> None:
    if not session.is_speech:
        raise DataError(f"{name}: {what} needs a model with a speech front end "
                        f"(features kind mfcc or fbank); this model takes frames of "
                        f"{session.input_size} features (use CSV or .npy)")


def run_stream(session: StreamingSession, chunks: Iterable[np.ndarray], *,
               name: str = "<input>", on_result: Callable[[ChunkResult], None] | None = None,
               detector: Detector | None = None,
               on_detection: Callable[[Detection], None] | None = None,
               frame_ms: float | None = None) -> StreamSummary:
    """Feed ``chunks`` to one new stream, reporting each chunk as it is ready.

    Args:
        session: the session.
        chunks: audio ``(n,)`` (speech models) or frames ``(t, F)``, e.g. from :func:`open_input`.
        name: input name, prefixed to data errors.
        on_result: called with every :class:`ChunkResult`; it may raise
            :class:`StopStream` to end early.
        detector: turns results into detections, passed to ``on_detection``.
        frame_ms: frame duration for the real-time factor. Default: the
            session's, else 10 ms.

    Returns:
        The totals; ``interrupted`` is set when Ctrl-C stopped the stream.
    """
    summary = StreamSummary(frame_ms=frame_ms or session.frame_ms or DEFAULT_FRAME_MS)
    stream = session.create_stream()

    def emit(results):
        for r in results:
            summary.frames = r.end
            summary.chunks += 1
            summary.latencies_ms.append(r.latency_ms)
            if on_result is not None:
                on_result(r)
            if detector is not None:
                for d in detector.update(r):
                    summary.detections += 1
                    if on_detection is not None:
                        on_detection(d)

    try:
        for chunk in chunks:
            try:
                stream.accept(chunk)
            except DataError as exc:
                raise DataError(f"{name}: {exc}") from None
            emit(session.process(stream))
        stream.input_finished()
        emit(session.process(stream))
        finish = getattr(detector, "finish", None)  # segment detectors close an open segment
        for d in finish() if finish is not None else ():
            summary.detections += 1
            if on_detection is not None:
                on_detection(d)
    except KeyboardInterrupt:
        summary.interrupted = True
    except StopStream:
        pass
    return summary
