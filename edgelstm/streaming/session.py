"""Streaming inference: an immutable session plus per-stream state objects.

Shaped like sherpa-onnx's ``OnlineRecognizer`` / ``OnlineStream``. The session
holds the model (MLX, or a streaming ONNX export run by ONNX Runtime) and is
shared; each :class:`Stream` holds one signal's state: the front end's
overlap, frames not yet run, and the recurrent state ``(L, 1, H)``::

    session = StreamingSession.from_path("examples/fsdd/model", chunk_frames=10)
    s = session.create_stream()
    s.accept_waveform(samples, sample_rate=8000)   # or s.accept_frames(frames (t, F))
    while session.is_ready(s):
        result = session.step(s)                   # ChunkResult
    s.input_finished()                             # flush, then step the tail
    results = session.process(s)

``session.step_many(streams)`` runs every ready stream in one batch (states
stacked along the batch axis, then split back), so one process serves many
streams. ``stream.state`` / ``meta_state`` / ``save`` and
``session.create_stream(state, meta_state)`` / ``load_stream`` save and
restore a stream mid-signal.

Exactness: for any chunking, the concatenated outputs equal one pass over the
whole signal (up to float rounding). Per-frame heads emit one vector per
frame. A per-sequence head (``head: "sequence"``) emits one vector per chunk:
the head applied to the hidden state after the chunk's last frame, i.e. the
model's answer for the signal so far. Bidirectional models cannot stream.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelstm.errors import ConfigError, DataError, EdgeLSTMError, NonFiniteError
from edgelstm.streaming.state import (
    export_state,
    import_state,
    read_safetensors,
    write_safetensors,
)

__all__ = ["ChunkResult", "Stream", "StreamingLSTM", "StreamingSession", "softmax",
           "stream_chunks"]

STATE_FORMAT = "edgelstm-stream-1"


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax, float64 math, float32 out."""
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return (z / z.sum(axis=axis, keepdims=True)).astype(np.float32)


@dataclass
class ChunkResult:
    """What one step of one stream produced.

    Attributes:
        chunk: index of the chunk in its stream, from 0.
        start, end: frame indices ``[start, end)`` the chunk covered.
        output: ``(end - start, C)`` for a per-frame head (or no head);
            ``(1, C)`` for a per-sequence head (the head after frame ``end - 1``).
        latency_ms: front-end plus model time spent on this chunk.
        label: argmax of ``scores`` when the model has labels, else ``None``.
        scores: ``{label: mean softmax posterior over the chunk's rows}`` or ``None``.
    """

    chunk: int
    start: int
    end: int
    output: np.ndarray
    latency_ms: float
    label: str | None = None
    scores: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the ``--json`` line of ``edgelstm stream``."""
        d = {"chunk": self.chunk, "start": self.start, "end": self.end,
             "latency_ms": round(self.latency_ms, 4),
             "output": [[float(v) for v in row] for row in self.output]}
        if self.label is not None:
            d["label"] = self.label
            d["scores"] = {k: round(v, 6) for k, v in self.scores.items()}
        return d


def _frontend(features: dict | None):
    """Front-end config from a model's ``features`` dict; ``None`` when frames go in as is."""
    if not features:
        return None
    from edgelstm.frontend.features import FeatureConfig, config_from_dict

    cfg = config_from_dict(features)
    if isinstance(cfg, FeatureConfig) and cfg.kind == "none":
        return None
    return cfg


class StreamingSession:
    """Immutable streaming runner for one model; create streams from it.

    Build it with a factory: :meth:`from_model`, :meth:`from_mlx`,
    :meth:`from_onnx` or :meth:`from_path`. See the module docstring.

    Args:
        backend: an :class:`~edgelstm.streaming.backends.MLXBackend` or ``ORTBackend``.
        chunk_frames: frames per step. Default: ``10`` (100 ms of 10 ms frames).
    """

    def __init__(self, backend, chunk_frames: int = 10):
        if not isinstance(chunk_frames, int) or chunk_frames < 1:
            raise ConfigError(f"chunk_frames must be a positive integer, got {chunk_frames!r}")
        cfg = backend.config
        # a raw-sample backend brings its own framing (edgelstm.frontend.samples)
        frontend = getattr(backend, "frontend", None) or _frontend(cfg.get("features"))
        width = getattr(frontend, "num_features", None)
        if width is not None and width != backend.input_size:
            raise ConfigError(f"the front end gives {width} features per frame but the model "
                              f"takes {backend.input_size}")
        labels = cfg.get("labels")
        set_ = object.__setattr__
        set_(self, "backend", backend)
        set_(self, "chunk_frames", chunk_frames)
        set_(self, "frontend", frontend)
        set_(self, "labels", list(labels) if labels else None)
        set_(self, "config", cfg)

    def __setattr__(self, name, value):
        raise AttributeError("a StreamingSession is immutable; per-stream state lives in Stream")

    # -- factories ---------------------------------------------------------------------------
    @classmethod
    def from_model(cls, model, chunk_frames: int = 10, compile: bool = True) -> StreamingSession:
        """Session over an in-memory edgelstm model, run with MLX."""
        from edgelstm.streaming.backends import MLXBackend

        return cls(MLXBackend(model, compile=compile), chunk_frames)

    @classmethod
    def from_mlx(cls, path: str | os.PathLike, chunk_frames: int = 10,
                 compile: bool = True) -> StreamingSession:
        """Session over a model file run with MLX (checkpoint dir or any importable format)."""
        from edgelstm.io.checkpoint import load

        return cls.from_model(load(path), chunk_frames, compile=compile)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, chunk_frames: int = 10, threads: int = 1,
                  backend: str = "onnxruntime",
                  states: dict[str, str] | None = None) -> StreamingSession:
        """Session over an ONNX graph with state inputs/outputs.

        Args:
            path: the ``.onnx`` file: a streaming export (``h0``/``c0`` ->
                ``h_n``/``c_n``) or any graph whose states pair up by name
                (``h`` -> ``hn``, ``state`` -> ``stateN``) or by ``states``.
            backend: ``"onnxruntime"`` or ``"mlx"`` (edgelstm's MLX executor of ONNX).
            states: explicit ``{state input: state output}``.
        """
        from edgelstm.streaming.onnx_state import OnnxStateBackend

        return cls(OnnxStateBackend(path, backend, threads=threads, states=states), chunk_frames)

    @classmethod
    def from_onnx_samples(cls, path: str | os.PathLike, frame_samples: int,
                          context_samples: int = 0, sample_rate: int = 16000,
                          consts: dict | None = None, backend: str = "onnxruntime",
                          chunk_frames: int = 10, states: dict[str, str] | None = None,
                          output: str | None = None, threads: int = 1) -> StreamingSession:
        """Session over an ONNX graph that takes raw samples, one model step per window.

        Audio fed with ``accept_waveform`` is cut into windows of
        ``frame_samples`` new samples after ``context_samples`` of left
        context (:class:`edgelstm.frontend.samples.SampleFrames`); each window
        is one model step, so a chunk of ``chunk_frames`` windows is that many
        calls, the state carried between them.

        Args:
            path: the ``.onnx`` file (see :mod:`edgelstm.streaming.onnx_samples`).
            frame_samples, context_samples: ``N`` and ``M``.
            sample_rate: the model's rate; audio at other rates is resampled.
            consts: values of the other inputs, e.g. ``{"sr": 16000}``.
            backend: ``"onnxruntime"`` or ``"mlx"``.
            states: explicit ``{state input: state output}``.
            output: the output to report; default: the first that is not a state.
        """
        from edgelstm.frontend.samples import SampleFrames
        from edgelstm.streaming.onnx_samples import OnnxSampleBackend

        frames = SampleFrames(frame_samples, context_samples, sample_rate)
        return cls(OnnxSampleBackend(path, frames, backend, consts=consts, states=states,
                                     output=output, threads=threads), chunk_frames)

    @classmethod
    def from_path(cls, path: str | os.PathLike, backend: str | None = None,
                  chunk_frames: int = 10,
                  states: dict[str, str] | None = None) -> StreamingSession:
        """Pick the backend from the path: ``.onnx`` -> onnxruntime, else mlx.

        With ``backend="mlx"`` an ONNX graph with state inputs/outputs runs on
        the MLX executor of ONNX (keeping the front end of its metadata); one
        without is imported as a native model.

        Args:
            path: checkpoint directory, ``.onnx`` or another importable format.
            backend: ``"mlx"`` or ``"onnxruntime"`` to override the default.
            chunk_frames: frames per step.
            states: explicit ``{state input: state output}`` of an ONNX graph.
        """
        from edgelstm.io.checkpoint import detect_format
        from edgelstm.streaming.onnx_state import has_state_io

        if not Path(path).exists():
            raise EdgeLSTMError(f"{path} does not exist")
        fmt = detect_format(path)
        if backend not in (None, "mlx", "onnxruntime"):
            raise EdgeLSTMError(f"unknown backend {backend!r}; choose mlx or onnxruntime")
        if backend == "onnxruntime" and fmt != "onnx":
            raise EdgeLSTMError(f"{path} is not an ONNX file; export it first "
                                "(edgelstm convert MODEL model.onnx --streaming) or use "
                                "--backend mlx")
        if states and fmt != "onnx":
            raise EdgeLSTMError(f"{path} is not an ONNX file; --state names ONNX tensors")
        if fmt == "onnx" and backend != "mlx":
            return cls.from_onnx(path, chunk_frames, states=states)
        if fmt == "onnx" and has_state_io(path, states):
            return cls.from_onnx(path, chunk_frames, backend="mlx", states=states)
        return cls.from_mlx(path, chunk_frames)

    # -- properties --------------------------------------------------------------------------
    @property
    def input_size(self) -> int:
        """Features per frame the model takes."""
        return self.backend.input_size

    @property
    def per_sequence(self) -> bool:
        """The model has a per-sequence head: one output row per chunk."""
        return self.backend.per_sequence

    @property
    def is_speech(self) -> bool:
        """The model carries a speech front end (takes audio samples)."""
        from edgelstm.frontend.features import FeatureConfig
        from edgelstm.frontend.samples import SampleFrames

        return isinstance(self.frontend, (FeatureConfig, SampleFrames))

    @property
    def sample_rate(self) -> int | None:
        """Audio rate the speech front end expects, else ``None``."""
        return self.frontend.sample_rate if self.is_speech else None

    @property
    def frame_ms(self) -> float | None:
        """Duration of one model frame in ms, when the config says (hop or sensor rate)."""
        if self.is_speech:
            return self.frontend.hop_length * 1000.0 / self.frontend.sample_rate
        rate = getattr(self.frontend, "rate", None)
        return 1000.0 / rate if rate else None

    def warmup(self, batch: int = 1) -> None:
        """Run one zero chunk on a throwaway state, so the first real chunk is not
        charged with tracing/compilation (MLX) or first-run allocation."""
        be = self.backend
        x = np.zeros((batch, self.chunk_frames, be.input_size), dtype=np.float32)
        be.run(x, be.zero_state(batch))

    # -- streams -----------------------------------------------------------------------------
    def create_stream(self, state: dict | None = None, meta_state: dict | None = None) -> Stream:
        """A new stream; with ``state``/``meta_state`` (from a stream's), a restored one."""
        s = Stream(self)
        if state is not None or meta_state is not None:
            s._restore(state or {}, meta_state or {})
        return s

    def load_stream(self, path: str | os.PathLike) -> Stream:
        """Restore a stream written by :meth:`Stream.save`."""
        state, meta = read_safetensors(path)
        return self.create_stream(state, meta)

    def is_ready(self, stream: Stream) -> bool:
        """A full chunk is waiting, or input is finished and any frame is."""
        n = len(stream._pending)
        return n >= self.chunk_frames or (stream.finished and n > 0)

    def step(self, stream: Stream) -> ChunkResult | None:
        """Run one chunk of ``stream``; ``None`` when it is not ready."""
        return self.step_many([stream])[0]

    def step_many(self, streams: list[Stream]) -> list[ChunkResult | None]:
        """Run one chunk of every ready stream, batched; ``None`` for streams not ready.

        Streams whose chunks have the same length share one backend call, with
        their states stacked along the batch axis ``(L, B, H)``.
        """
        results: list[ChunkResult | None] = [None] * len(streams)
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(streams):
            if s._session is not self:
                raise EdgeLSTMError("stream was created by another session")
            if self.is_ready(s):
                groups.setdefault(min(self.chunk_frames, len(s._pending)), []).append(i)
        if len({id(s) for s in streams}) != len(streams):
            raise EdgeLSTMError("the same stream appears twice in one step")
        for n, idx in groups.items():
            batch = [streams[i] for i in idx]
            t0 = time.perf_counter()
            x = np.stack([s._pending[:n] for s in batch])
            state = self._stack([s._state for s in batch])
            y, new = self.backend.run(x, state)
            for b, (i, s) in enumerate(zip(idx, batch, strict=True)):
                s._state = new if len(batch) == 1 else [a[:, b:b + 1] for a in new]
                out = y[b:b + 1] if self.per_sequence else y[b]
                results[i] = s._advance(n, out, t0)
        return results

    def _stack(self, states: list[list]) -> list:
        if len(states) == 1:
            return states[0]
        return [self.backend.concat([st[k] for st in states]) for k in range(len(states[0]))]

    def process(self, stream: Stream) -> list[ChunkResult]:
        """Step ``stream`` while it is ready; return every result."""
        out = []
        while self.is_ready(stream):
            out.append(self.step(stream))
        return out

    def _result(self, chunk, start, end, output, latency_ms) -> ChunkResult:
        label = scores = None
        if self.labels and output.shape[-1] == len(self.labels) and len(output):
            mean = softmax(output).mean(axis=0)
            scores = {k: float(v) for k, v in zip(self.labels, mean, strict=True)}
            label = self.labels[int(np.argmax(mean))]
        return ChunkResult(chunk, start, end, output, latency_ms, label, scores)


class Stream:
    """One signal's streaming state; create it with :meth:`StreamingSession.create_stream`.

    Attributes:
        frames_done: frames already run through the model.
        num_chunks: chunks already emitted.
        finished: :meth:`input_finished` was called.
    """

    def __init__(self, session: StreamingSession):
        self._session = session
        self.reset()

    @classmethod
    def from_state(cls, session: StreamingSession, state: dict, meta_state: dict) -> Stream:
        """Rebuild a stream of ``session`` from :attr:`state` and :attr:`meta_state`."""
        return session.create_stream(state, meta_state)

    def reset(self) -> None:
        """Forget everything: front end, pending frames, recurrent state, counters."""
        ses = self._session
        self._fe = ses.frontend.online() if ses.frontend is not None else None
        self._resampler = None  # created when audio arrives at another rate
        self._rate_in = None
        self._accepted = 0  # samples or frames fed, to place a NaN in the stream
        self._pending = np.zeros((0, ses.input_size), dtype=np.float32)
        self._state = ses.backend.zero_state(1)
        self._fe_seconds = 0.0
        self.frames_done = 0
        self.num_chunks = 0
        self.finished = False

    # -- input -------------------------------------------------------------------------------
    def accept_waveform(self, samples, sample_rate: int | None = None) -> None:
        """Feed audio samples ``(n,)`` (float, nominally in [-1, 1]).

        Args:
            samples: the next samples of the signal.
            sample_rate: their rate; resampled (anti-aliased, streaming) when it
                differs from the model's. ``None``: the model's rate.
        """
        ses = self._session
        if not ses.is_speech:
            raise DataError("this model has no speech front end; feed feature or sensor "
                            "frames with accept_frames()")
        self._check_open()
        t0 = time.perf_counter()
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        self._refuse_nonfinite(x, "sample")
        rate = int(sample_rate or ses.sample_rate)
        if self._rate_in is None:
            self._rate_in = rate
            if rate != ses.sample_rate:
                from edgelstm.frontend.resample import StreamingResampler

                self._resampler = StreamingResampler(ses.sample_rate, rate)
        elif rate != self._rate_in:
            raise DataError(f"sample rate changed mid-stream ({self._rate_in} -> {rate} Hz)")
        if self._resampler is not None:
            x = self._resampler.accept(x).astype(np.float32)
        self._push(np.array(self._fe.accept(x)), t0)

    def accept_frames(self, frames) -> None:
        """Feed frames ``(t, F)`` (one frame may be ``(F,)``).

        For a speech model these are feature frames (the front end is skipped);
        for a sensor model they go through its normalisation/resampling.
        """
        self._check_open()
        t0 = time.perf_counter()
        x = np.asarray(frames, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None] if self._width_in() == 1 else x[None, :]
        if x.ndim != 2:
            raise DataError(f"frames must be (t, F), got shape {x.shape}")
        if x.shape[1] != self._width_in():
            raise DataError(f"frames have {x.shape[1]} features, the model takes "
                            f"{self._width_in()}")
        self._refuse_nonfinite(x, "frame")
        if self._fe is not None and not self._session.is_speech:
            try:
                x = np.array(self._fe.accept(x))
            except ValueError as exc:
                raise DataError(str(exc)) from None
        self._push(x, t0)

    def _refuse_nonfinite(self, x: np.ndarray, unit: str) -> None:
        """NaN/Inf input is refused (edgelstm.frontend.arrays policy), naming its stream position."""
        seen = self._accepted
        bad = ~np.isfinite(x)
        if bad.any():
            k = np.unravel_index(int(np.argmax(bad)), x.shape)
            what = "NaN" if np.isnan(x[k]) else "Inf"
            where = f"{unit} {seen + int(k[0])}" + (f", column {int(k[1])}" if x.ndim == 2 else "")
            raise NonFiniteError(f"input has {what} at {where} of the stream; edgelstm refuses "
                                 "non-finite input")
        self._accepted = seen + len(x)

    def accept(self, chunk) -> None:
        """Audio ``(n,)`` for a speech model, else frames ``(t, F)``."""
        if self._session.is_speech and np.ndim(chunk) == 1:
            self.accept_waveform(chunk)
        else:
            self.accept_frames(chunk)

    def input_finished(self) -> None:
        """No more input: flush resamplers; the tail (a short chunk) becomes ready."""
        if self.finished:
            return
        t0 = time.perf_counter()
        if self._resampler is not None:
            self._push(np.array(self._fe.accept(self._resampler.flush().astype(np.float32))),
                       t0)
            t0 = time.perf_counter()
        if self._fe is not None and hasattr(self._fe, "flush"):
            self._push(np.array(self._fe.flush()), t0)
        self.finished = True

    @property
    def frames_ready(self) -> int:
        """Frames waiting for the model."""
        return len(self._pending)

    def _width_in(self) -> int:
        fe = self._session.frontend
        if fe is not None and not self._session.is_speech:
            return len(fe.mean or fe.std or ()) or self._session.input_size
        return self._session.input_size

    def _check_open(self):
        if self.finished:
            raise EdgeLSTMError("input_finished() was called; reset() the stream to reuse it")

    def _push(self, frames: np.ndarray, t0: float) -> None:
        if frames.size:
            frames = frames.reshape(len(frames), -1)
            if frames.shape[1] != self._session.input_size:
                raise DataError(f"frames have {frames.shape[1]} features, the model takes "
                                f"{self._session.input_size}")
            self._pending = np.concatenate([self._pending, frames.astype(np.float32)])
        self._fe_seconds += time.perf_counter() - t0

    def _advance(self, n: int, output: np.ndarray, t0: float) -> ChunkResult:
        start = self.frames_done
        self._pending = self._pending[n:]
        self.frames_done += n
        latency = (time.perf_counter() - t0 + self._fe_seconds) * 1000.0
        self._fe_seconds = 0.0
        r = self._session._result(self.num_chunks, start, self.frames_done, output, latency)
        self.num_chunks += 1
        return r

    # -- state save / restore ----------------------------------------------------------------
    @property
    def state(self) -> dict[str, np.ndarray]:
        """Arrays to resume from: recurrent state ``h``/``c`` ``(L, H)``, pending frames,
        and the front end's buffers."""
        be = self._session.backend
        arrays = {"h": be.to_numpy(self._state[0])[:, 0], "pending": self._pending.copy()}
        if be.is_lstm:
            arrays["c"] = be.to_numpy(self._state[1])[:, 0]
        meta: dict[str, str] = {}
        export_state(self._fe, "frontend.", arrays, meta)
        export_state(self._resampler, "resampler.", arrays, meta)
        return arrays

    @property
    def meta_state(self) -> dict[str, str]:
        """Scalars to resume from (strings, as safetensors metadata)."""
        be = self._session.backend
        meta = {"format": STATE_FORMAT, "frames_done": str(self.frames_done),
                "num_chunks": str(self.num_chunks), "finished": str(int(self.finished)),
                "rate_in": str(self._rate_in or 0), "input_size": str(be.input_size),
                "num_layers": str(be.num_layers), "hidden_size": str(be.hidden_size),
                "cell": "lstm" if be.is_lstm else "h"}
        export_state(self._fe, "frontend.", {}, meta)
        export_state(self._resampler, "resampler.", {}, meta)
        return meta

    def save(self, path: str | os.PathLike) -> Path:
        """Write :attr:`state` and :attr:`meta_state` to a ``.safetensors`` file."""
        return write_safetensors(path, self.state, self.meta_state)

    def _restore(self, state: dict, meta: dict) -> None:
        be = self._session.backend
        want = {"format": STATE_FORMAT, "input_size": str(be.input_size),
                "num_layers": str(be.num_layers), "hidden_size": str(be.hidden_size),
                "cell": "lstm" if be.is_lstm else "h"}
        for key, value in want.items():
            if meta.get(key) != value:
                raise ConfigError(f"saved stream state does not fit this model: {key} is "
                                  f"{meta.get(key)!r}, expected {value!r}")
        h = [np.asarray(state["h"], np.float32)] + (
            [np.asarray(state["c"], np.float32)] if be.is_lstm else [])
        self._state = [be.to_native(a[:, None]) for a in h]
        self._pending = np.asarray(state.get("pending", self._pending), np.float32)
        self.frames_done = int(meta["frames_done"])
        self.num_chunks = int(meta["num_chunks"])
        self.finished = meta.get("finished") == "1"
        rate = int(meta.get("rate_in", "0"))
        if rate:
            self._rate_in = rate
            if "resampler.up" in meta:
                from edgelstm.frontend.resample import StreamingResampler

                self._resampler = StreamingResampler(self._session.sample_rate, rate)
        import_state(self._fe, "frontend.", state, meta)
        import_state(self._resampler, "resampler.", state, meta)


def stream_chunks(session: StreamingSession, chunks: Iterable,
                  sample_rate: int | None = None) -> Iterator[ChunkResult]:
    """Feed ``chunks`` to one new stream and yield each :class:`ChunkResult` as it is ready.

    Args:
        session: the session.
        chunks: audio chunks ``(n,)`` for a speech model, else frames ``(t, F)``.
        sample_rate: rate of audio chunks, when it is not the model's.
    """
    s = session.create_stream()
    for chunk in chunks:
        if sample_rate is not None and session.is_speech:
            s.accept_waveform(chunk, sample_rate)
        else:
            s.accept(chunk)
        while session.is_ready(s):
            yield session.step(s)
    s.input_finished()
    yield from session.process(s)


StreamingLSTM = StreamingSession  # the name used in the design notes; it serves GRU/RNN too
