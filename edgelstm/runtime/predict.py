"""Per-file prediction: one record per WAV/CSV/.npy file, behind ``edgelstm predict``.

:func:`predict_file` is a plain, picklable function of ``(model path, file)``
(the model is loaded once per process and cached), so any executor can fan
it out: :func:`predict_files` uses local processes,
:func:`edgelstm.runtime.predict_ray.predict_files_ray` Ray actors. A failing file yields a record with ``error`` and the
run goes on.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from edgelstm.frontend.audio_files import AUDIO_SUFFIXES

INPUT_SUFFIXES = (*AUDIO_SUFFIXES, ".csv", ".tsv", ".txt", ".npy")


def expand_inputs(items: Iterable[str], stdin=None) -> list[str]:
    """Files from paths, folders (recursively, supported suffixes, sorted) and ``-``.

    ``-`` reads one path per line from ``stdin`` (blank lines skipped).
    A path that does not exist is kept, so its record reports the error.
    """
    out: list[str] = []
    for item in items:
        if item == "-":
            import sys

            lines = (stdin or sys.stdin).read().splitlines()
            out += [ln.strip() for ln in lines if ln.strip()]
        elif Path(item).is_dir():
            out += sorted(str(p) for p in Path(item).rglob("*")
                          if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES)
        else:
            out.append(item)
    return out


@functools.lru_cache(maxsize=4)
def _session(model_path: str, backend: str | None = None):
    from edgelstm.streaming.session import StreamingSession

    session = StreamingSession.from_path(model_path, backend=backend, chunk_frames=10_000)
    session.warmup()
    return session


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def predict_file(model_path: str, file: str, top_k: int = 3, backend: str | None = None) -> dict:
    """Classify one file with the model at ``model_path``.

    Audio goes through the model's front end (resampled to its rate); CSV and
    ``.npy`` are frames ``(T, I)``. ``backend`` is ``"mlx"``, ``"onnxruntime"``
    or ``None`` (from the model's format). The prediction is the head's output after
    the last frame (as ``edgelstm eval`` scores sequences).

    Returns:
        ``{"file", "label", "score", "top_k": [[label, score]], "duration_s",
        "frames", "latency_ms"}``; on failure ``{"file", "error"}``.
    """
    from edgelstm.errors import EdgeLSTMError
    from edgelstm.frontend.readers import read_input

    try:
        session = _session(str(model_path), backend)
        t0 = time.perf_counter()
        data, rate = read_input(file, target_rate=session.sample_rate)
        stream = session.create_stream()
        if rate is not None:
            stream.accept_waveform(data, sample_rate=rate)
            duration = len(data) / rate
        else:
            stream.accept_frames(data)
            fm = session.frame_ms
            duration = len(data) * fm / 1000.0 if fm else None
        stream.input_finished()
        results = session.process(stream)
        latency = (time.perf_counter() - t0) * 1e3
        if not results:
            raise EdgeLSTMError(f"{file} is too short to give one frame")
        last = np.asarray(results[-1].output)[-1]
        probs = _softmax(last.astype(np.float64))
        names = session.labels or [str(k) for k in range(len(probs))]
        order = np.argsort(-probs)[:top_k]
        return {"file": str(file), "label": names[order[0]], "score": round(float(probs[order[0]]), 6),
                "top_k": [[names[k], round(float(probs[k]), 6)] for k in order],
                "duration_s": None if duration is None else round(duration, 4),
                "frames": int(results[-1].end), "latency_ms": round(latency, 3)}
    except (EdgeLSTMError, OSError, MemoryError) as exc:
        return {"file": str(file), "error": " ".join(str(exc).split()) or type(exc).__name__}


def predict_files(model_path: str | os.PathLike, files: Iterable[str], top_k: int = 3,
                  workers: int = 1, backend: str | None = None) -> Iterator[dict]:
    """Yield :func:`predict_file`'s record for each file, in input order.

    Args:
        workers: local processes (each loads the model once); 1 runs in this one.
    """
    files = list(files)
    model_path = str(model_path)
    if workers <= 1 or len(files) <= 1:
        for f in files:
            yield predict_file(model_path, f, top_k, backend)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn: a forked child would inherit MLX's and ONNX Runtime's thread pools half-made
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        yield from pool.map(functools.partial(predict_file, model_path, top_k=top_k, backend=backend), files,
                            chunksize=max(1, len(files) // (8 * workers)))
