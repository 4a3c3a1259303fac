"""Latency and throughput harness behind ``edgelstm bench``.

Two modes, every backend in this one process on the same weights, so ratios
are like for like:

- ``batch``: whole sequences ``(B, T, I)`` per call; ms per call, frames/s.
- ``stream``: ``chunk`` frames per call at batch 1, the recurrent state
  carried from call to call; chunk latency percentiles and the real-time
  factor (chunk time / the audio or sensor time the chunk covers).

Warm-up calls run first, then timed calls (each synchronised: ``mx.eval``,
or the arrays ONNX Runtime / PyTorch return), until ``runs`` calls or the
time budget. The forms of the model each backend runs are made on the fly
(:mod:`edgelstm.runtime.bench_forms`); an unavailable one is skipped with
its reason in :attr:`BenchReport.skipped`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgelstm.errors import EdgeLSTMError
from edgelstm.runtime.bench_forms import BACKENDS, Unavailable, build

MODES = ("batch", "stream")
DEFAULT_FRAME_MS = 10.0


@dataclass
class BenchResult:
    """One measured case; times in milliseconds, memory in MB, size in bytes."""

    backend: str
    mode: str
    batch: int
    seq_len: int | None
    chunk: int | None
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    frames_per_s: float
    rtf: float | None
    peak_mem_mb: float | None
    mlx_peak_mb: float | None
    size_bytes: int
    times_ms: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        """The result as a JSON-able dict (without the raw times)."""
        d = asdict(self)
        d.pop("times_ms")
        return d


@dataclass
class BenchReport:
    """Everything one ``edgelstm bench`` run measured."""

    model: str
    frame_ms: float
    frame_ms_source: str
    results: list[BenchResult]
    skipped: list[dict]
    machine: dict

    def as_dict(self) -> dict:
        """The JSON document ``edgelstm bench --json`` prints."""
        return {"model": self.model, "frame_ms": self.frame_ms,
                "frame_ms_source": self.frame_ms_source,
                "results": [r.as_dict() for r in self.results],
                "skipped": self.skipped, "machine": self.machine}


def _time(fn, warmup: int, runs: int, budget_s: float) -> list[float]:
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= 3:
            break
    return times


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # since start: bytes on macOS
    return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)


def frame_duration_ms(model, fallback: float | None = None) -> tuple[float, str]:
    """``(ms per model frame, where it came from)``: the front end's hop or sensor rate."""
    features = getattr(model, "features", None) or {}
    if fallback:
        return float(fallback), "--frame-ms"
    if features.get("hop_ms"):
        return float(features["hop_ms"]), "model front end (hop_ms)"
    if features.get("rate"):
        return 1000.0 / float(features["rate"]), "model sensor rate"
    return DEFAULT_FRAME_MS, f"assumed ({DEFAULT_FRAME_MS:g} ms; the model does not say)"


def cpu_model() -> str:
    """The CPU's marketing name, where the OS tells it."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        import subprocess

        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                  capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None) -> dict:
    """The ``machine`` block: CPU, cores, threads, BLAS, kernels, library versions."""
    from edgelstm.runtime.info import _version, environment

    env = environment()
    env["versions"]["torch"] = _version("torch")
    env.update({
        "cpu_model": cpu_model(),
        "threads": {"onnxruntime": threads or "library default",
                    "edgelstm kernels": threads or "library default",
                    "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
                    "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
    })
    return env


@contextlib.contextmanager
def _kernel_threads(threads: int | None):
    """Cap the fused kernels' step pool at ``threads`` while benchmarking, as ONNX
    Runtime and PyTorch are capped, so that a comparison never mixes thread counts."""
    from edgelstm.fast import dispatch

    if not threads or not dispatch.available():
        yield
        return
    n, source = dispatch.recurrent_threads()
    dispatch.set_recurrent_threads(threads)
    try:
        yield
    finally:
        dispatch.set_recurrent_threads(n if source == "set" else 0)


def plan(backends, modes, batches, seq_lens, chunks) -> list[tuple]:
    """Cases in run order: ``(mode, batch, seq_len, chunk, backend)``."""
    cases = []
    if "batch" in modes:
        cases += [("batch", b, t, None, be) for b in batches for t in seq_lens for be in backends]
    if "stream" in modes:
        cases += [("stream", 1, None, c, be) for c in chunks for be in backends]
    return cases


def run_bench(
    model_path: str | os.PathLike,
    backends: tuple[str, ...] = ("mlx",),
    batches: tuple[int, ...] = (1,),
    seq_lens: tuple[int, ...] = (100,),
    warmup: int = 3,
    runs: int = 20,
    budget_s: float = 5.0,
    threads: int | None = None,
    modes: tuple[str, ...] = ("batch",),
    chunks: tuple[int, ...] = (10,),
    frame_ms: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Benchmark a model on each backend, mode and shape.

    Args:
        model_path: checkpoint directory (any loadable format) or ``.onnx``.
        backends: from :data:`~edgelstm.runtime.bench_forms.BACKENDS`.
        batches, seq_lens: ``batch`` mode input shapes ``(B, T, I)``.
        warmup, runs: untimed and timed calls per case.
        budget_s: stop timing a case after this many seconds (min 3 runs).
        threads: intra-op threads of ONNX Runtime and PyTorch, and of the fused
            kernels' step (default: each library's own).
        modes: ``"batch"`` and/or ``"stream"``.
        chunks: ``stream`` mode frames per call ``(1, chunk, I)``.
        frame_ms: duration of one frame for the real-time factor (default:
            from the model's front end, else 10 ms).
        progress: called with a case's label after it is timed.

    Returns:
        A :class:`BenchReport`.
    """
    import mlx.core as mx

    from edgelstm.io.checkpoint import detect_format, load
    from edgelstm.limits import check_elements

    for name, given, known in (("backend", backends, BACKENDS), ("mode", modes, MODES)):
        unknown = [b for b in given if b not in known]
        if unknown:
            raise EdgeLSTMError(f"unknown {name} {unknown[0]!r}; choose from {', '.join(known)}")
    is_onnx = detect_format(model_path) == "onnx"
    model = load(model_path)
    width = model.input_size
    for b in batches:  # each case's input is allocated: refuse absurd ones up front
        for t in seq_lens:
            check_elements((b, t, width), "bench input")
    for c in chunks:
        check_elements((1, c, width), "bench chunk")
    fms, fms_source = frame_duration_ms(model, frame_ms)
    results, skipped, forms = [], [], {}
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp, _kernel_threads(threads):
        for backend in backends:
            try:
                forms[backend] = build(backend, model, model_path, is_onnx, Path(tmp),
                                       threads, rng)
            except Unavailable as exc:
                skipped.append({"backend": backend, "mode": None, "reason": str(exc)})
        for mode, batch, seq_len, chunk, backend in plan(backends, modes, batches, seq_lens,
                                                          chunks):
            form = forms.get(backend)
            label = f"{backend} {mode} " + (f"B={batch} T={seq_len}" if mode == "batch"
                                            else f"chunk={chunk}")
            if form is None:
                continue
            try:
                if mode == "batch":
                    x = rng.standard_normal((batch, seq_len, width)).astype(np.float32)
                    fn = form.batch(x)
                else:
                    if form.stream is None:
                        raise Unavailable("a bidirectional model cannot stream")
                    fn = form.stream(chunk)
            except Unavailable as exc:
                if not any(s["backend"] == backend and s["mode"] == mode for s in skipped):
                    skipped.append({"backend": backend, "mode": mode, "reason": str(exc)})
                continue
            tracked = _reset_peak_rss()
            is_mlx = backend.startswith("mlx")
            if is_mlx:
                mx.reset_peak_memory()
            times = _time(fn, warmup, runs, budget_s)
            frames = batch * (seq_len if mode == "batch" else chunk)
            p50 = float(np.percentile(times, 50))
            results.append(BenchResult(
                backend=backend, mode=mode, batch=batch, seq_len=seq_len, chunk=chunk,
                runs=len(times), p50_ms=round(p50, 4),
                p90_ms=round(float(np.percentile(times, 90)), 4),
                p99_ms=round(float(np.percentile(times, 99)), 4), min_ms=round(min(times), 4),
                frames_per_s=round(frames / (p50 / 1e3), 1),
                rtf=float(f"{p50 / (chunk * fms):.4g}") if mode == "stream" else None,
                peak_mem_mb=round(_peak_rss_mb(), 2) if tracked else None,
                mlx_peak_mb=round(mx.get_peak_memory() / 2**20, 3) if is_mlx else None,
                size_bytes=form.size_bytes, times_ms=[round(t, 5) for t in times]))
            if progress:
                progress(label)
    return BenchReport(str(model_path), fms, fms_source, results, skipped,
                       machine_info(threads))


def format_table(report: BenchReport) -> str:
    """A plain-text table, with each case's ratio to the fastest backend, then skips."""
    results = report.results
    best: dict = {}
    for r in results:
        key = (r.mode, r.batch, r.seq_len, r.chunk)
        best[key] = min(best.get(key, r.p50_ms), r.p50_ms)
    head = (f"{'backend':<21} {'mode':<6} {'shape':>12} {'p50 ms':>9} {'p90 ms':>9} "
            f"{'p99 ms':>9} {'frames/s':>11} {'RTF':>8} {'size KB':>8} {'vs best':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        shape = f"B={r.batch} T={r.seq_len}" if r.mode == "batch" else f"chunk={r.chunk}"
        ratio = r.p50_ms / best[(r.mode, r.batch, r.seq_len, r.chunk)]
        rtf = f"{r.rtf:.3g}" if r.rtf is not None else "-"
        lines.append(f"{r.backend:<21} {r.mode:<6} {shape:>12} {r.p50_ms:>9.3f} {r.p90_ms:>9.3f} "
                     f"{r.p99_ms:>9.3f} {r.frames_per_s:>11,.0f} {rtf:>8} "
                     f"{r.size_bytes / 1024:>8.1f} {ratio:>7.2f}x")
    if any(r.mode == "stream" for r in results):
        lines.append(f"RTF: p50 chunk time / chunk duration at {report.frame_ms:g} ms per frame "
                     f"({report.frame_ms_source})")
    for s in report.skipped:
        lines.append(f"skipped {s['backend']}{' ' + s['mode'] if s['mode'] else ''}: "
                     f"{s['reason']}")
    return "\n".join(lines)
