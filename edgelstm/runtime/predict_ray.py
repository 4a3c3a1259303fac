"""Archive-scale prediction on Ray: :func:`~edgelstm.runtime.predict.predict_file` in actors.

Each Ray actor loads the model once (MLX, or ONNX Runtime for ``.onnx`` /
``backend="onnxruntime"``) and classifies chunks of files; records stream
back as chunks finish. A file that fails gives an error record; a worker
that dies turns its chunk into error records and is replaced, and the job
goes on. Ray schedules everything: ``address="local"`` starts a Ray
instance for the run, any other address joins an existing cluster (whose
workers must see MODEL and the files at the same paths and have edgelstm
installed).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence

from edgelstm.errors import ConfigError

INSTALL = "--ray needs Ray: pip install 'edgelstm[ray]'"


def require_ray():
    """The ``ray`` module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL) from None
    return ray


class _Predictor:
    """One model load per actor; ``run(files)`` gives one record per file."""

    def __init__(self, model_path: str, top_k: int, backend: str | None):
        from edgelstm.errors import EdgeLSTMError
        from edgelstm.runtime.predict import _session

        self.args = (model_path, top_k, backend)
        try:
            _session(model_path, backend)  # load and warm up before the first chunk
        except EdgeLSTMError:
            pass  # predict_file reports it on every file

    def run(self, files: Sequence[str]) -> list[dict]:
        from edgelstm.runtime.predict import predict_file

        model_path, top_k, backend = self.args
        out = []
        for f in files:
            try:
                out.append(predict_file(model_path, f, top_k, backend=backend))
            except Exception as exc:  # noqa: BLE001 - one bad file must not end the job
                out.append({"file": str(f), "error": f"{type(exc).__name__}: {exc}"})
        return out


def predict_files_ray(model_path: str | os.PathLike, files: Sequence[str], *,
                      address: str = "local", workers: int = 1, top_k: int = 3,
                      backend: str | None = None, chunk: int | None = None,
                      num_cpus: int | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(index into files, record)`` as Ray actors finish chunks (any order).

    Args:
        address: ``"local"`` starts a local Ray instance (with ``num_cpus``,
            default ``workers``) and shuts it down after; anything else is
            passed to ``ray.init(address=...)``. An already initialised Ray is used as is.
        workers: actors (one CPU and one model load each).
        chunk: files per task (default: small enough to keep every actor busy).
    """
    ray = require_ray()
    files = [str(f) for f in files]
    if not files:
        return
    model_path = os.path.abspath(str(model_path))
    started = False
    if not ray.is_initialized():
        opts = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if address == "local":
                ray.init(num_cpus=num_cpus or workers, **opts)
            else:
                ray.init(address=address, **opts)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot start or join Ray at {address!r}: "
                              f"{' '.join(str(exc).split())}") from None
        started = True
    try:
        yield from _run(ray, model_path, files, workers, top_k, backend, chunk)
    finally:
        if started:
            ray.shutdown()


def _run(ray, model_path, files, workers, top_k, backend, chunk):
    predictor = ray.remote(num_cpus=1, max_restarts=0)(_Predictor)
    size = chunk or max(1, min(32, len(files) // (4 * workers)))
    queue = deque((k, files[k:k + size]) for k in range(0, len(files), size))
    actors = [predictor.remote(model_path, top_k, backend) for _ in range(workers)]
    pending: dict = {}

    def submit(i: int) -> None:
        if queue:
            start, part = queue.popleft()
            # absolute paths: a worker's working directory is not the driver's
            ref = actors[i].run.remote([os.path.abspath(f) for f in part])
            pending[ref] = (actors[i], i, start, part)

    for i in range(workers):
        for _ in range(2):  # one running, one queued: no idle gap between chunks
            submit(i)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        actor, i, start, part = pending.pop(ref)
        try:
            recs = ray.get(ref)
        except ray.exceptions.RayError as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            recs = [{"file": f, "error": f"worker failed: {reason}"} for f in part]
            if isinstance(exc, ray.exceptions.RayActorError) and actors[i] is actor:
                actors[i] = predictor.remote(model_path, top_k, backend)
        for k, rec in enumerate(recs):
            yield start + k, {**rec, "file": part[k]}  # the name as given
        submit(i)
