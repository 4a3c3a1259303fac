"""Latency and throughput harness behind ``edgelstm bench``.

Each case runs the model on random input of one (batch, seq_len) shape on
one backend: warm-up runs first, then timed runs, synchronised with
``mx.eval`` (MLX) or the returned arrays (ONNX Runtime). All backends run
in this one process on the same weights, so ratios are like for like.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgelstm.errors import EdgeLSTMError

BACKENDS = ("mlx", "mlx-pure", "onnxruntime")


@dataclass
class BenchResult:
    """One measured case; times in milliseconds."""

    backend: str
    batch: int
    seq_len: int
    runs: int
    median_ms: float
    p90_ms: float
    min_ms: float
    frames_per_s: float

    def as_dict(self) -> dict:
        """The result as a JSON-able dict."""
        return asdict(self)


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


def _mlx_runner(model, fast):
    import mlx.core as mx

    def make(x):
        xa = mx.array(x)
        mx.eval(xa)
        return lambda: mx.eval(model(xa, fast=fast))

    return make


def _ort_runner(onnx_path: str, input_name: str, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    if names != {input_name}:
        raise EdgeLSTMError(f"benchmarking needs a single-input ONNX model; it takes {sorted(names)}")
    return lambda x: (lambda: sess.run(None, {input_name: x}))


def run_bench(
    model_path: str | os.PathLike,
    backends: tuple[str, ...] = ("mlx",),
    batches: tuple[int, ...] = (1,),
    seq_lens: tuple[int, ...] = (100,),
    warmup: int = 3,
    runs: int = 20,
    budget_s: float = 5.0,
    threads: int | None = None,
) -> list[BenchResult]:
    """Benchmark a model on each backend x batch x sequence length.

    Args:
        model_path: checkpoint directory (any loadable format) or ``.onnx``.
        backends: from ``mlx`` (fused kernel when available), ``mlx-pure``
            (per-step MLX ops) and ``onnxruntime`` (a native model is
            exported to a temporary ONNX file first).
        batches, seq_lens: input shapes ``(B, T, I)`` to time.
        warmup, runs: untimed and timed runs per case.
        budget_s: stop timing a case after this many seconds (min 3 runs).
        threads: ONNX Runtime intra-op threads (default: its own choice).

    Returns:
        One :class:`BenchResult` per case.
    """
    from edgelstm.io.checkpoint import detect_format, load

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise EdgeLSTMError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    is_onnx = detect_format(model_path) == "onnx"
    model = load(model_path)
    input_size = model.input_size
    from edgelstm.limits import check_elements

    for b in batches:  # each case's input is allocated: refuse absurd ones up front
        for t in seq_lens:
            check_elements((b, t, input_size), "bench input")
    runners = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            if backend == "onnxruntime":
                path = str(model_path)
                if not is_onnx:
                    from edgelstm.converters import to_onnx

                    path = str(Path(tmp) / "model.onnx")
                    to_onnx(model, path)
                name = getattr(model, "input_names", ["input"])[0]
                runners[backend] = _ort_runner(path, name, threads)
            else:
                runners[backend] = _mlx_runner(model, fast=None if backend == "mlx" else False)
        results = []
        rng = np.random.default_rng(0)
        for batch in batches:
            for seq_len in seq_lens:
                x = rng.standard_normal((batch, seq_len, input_size)).astype(np.float32)
                for backend, make in runners.items():
                    times = _time(make(x), warmup, runs, budget_s)
                    med = statistics.median(times)
                    results.append(BenchResult(
                        backend, batch, seq_len, len(times), round(med, 4),
                        round(float(np.percentile(times, 90)), 4), round(min(times), 4),
                        round(batch * seq_len / (med / 1e3), 1)))
    return results


def format_table(results: list[BenchResult]) -> str:
    """A plain-text table, with each case's ratio to the fastest backend."""
    best = {}
    for r in results:
        key = (r.batch, r.seq_len)
        best[key] = min(best.get(key, r.median_ms), r.median_ms)
    head = f"{'backend':<12} {'batch':>5} {'seq':>6} {'median ms':>10} {'p90 ms':>9} " \
           f"{'frames/s':>11} {'vs best':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        ratio = r.median_ms / best[(r.batch, r.seq_len)]
        lines.append(f"{r.backend:<12} {r.batch:>5} {r.seq_len:>6} {r.median_ms:>10.3f} "
                     f"{r.p90_ms:>9.3f} {r.frames_per_s:>11,.0f} {ratio:>7.2f}x")
    return "\n".join(lines)


def write_svg(results: list[BenchResult], path: str | os.PathLike) -> None:
    """A dependency-free SVG bar chart of median latency per case and backend."""
    cases = sorted({(r.batch, r.seq_len) for r in results})
    backends = list(dict.fromkeys(r.backend for r in results))
    colours = ["#4269d0", "#efb118", "#ff725c", "#6cc5b0", "#a463f2"]
    top = max(r.median_ms for r in results) or 1.0
    bar, gap, height, left = 22, 18, 260, 60
    width = left + len(cases) * (len(backends) * bar + gap) + 160
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 70}" '
           'font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="16" font-size="13">median latency (ms), lower is better</text>']
    lookup = {(r.batch, r.seq_len, r.backend): r.median_ms for r in results}
    for ci, case in enumerate(cases):
        x0 = left + ci * (len(backends) * bar + gap)
        for bi, backend in enumerate(backends):
            ms = lookup.get((*case, backend))
            if ms is None:
                continue
            h = max(1.0, (height - 40) * ms / top)
            x = x0 + bi * bar
            out.append(f'<rect x="{x}" y="{height - h:.1f}" width="{bar - 3}" height="{h:.1f}" '
                       f'fill="{colours[bi % len(colours)]}"><title>{backend}: {ms:.3f} ms'
                       '</title></rect>')
            out.append(f'<text x="{x}" y="{height - h - 3:.1f}" font-size="9">{ms:.2g}</text>')
        out.append(f'<text x="{x0}" y="{height + 16}">B={case[0]} T={case[1]}</text>')
    lx = width - 150
    for bi, backend in enumerate(backends):
        y = 40 + bi * 16
        out.append(f'<rect x="{lx}" y="{y - 9}" width="10" height="10" '
                   f'fill="{colours[bi % len(colours)]}"/><text x="{lx + 14}" y="{y}">{backend}</text>')
    out.append("</svg>")
    Path(path).write_text("\n".join(out) + "\n")
