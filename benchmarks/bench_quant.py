"""Benchmark int8 against fp32 LSTM inference at batch 1 (edgelstm layers, fused kernel).

Same process, same weights: an ``edgelstm.LSTM`` and its ``quantize_mlx`` twin
(int8 ``Wx``/``Wh``, per-row scales). Three runners, interleaved pass by pass
so background load hits all alike; median (and min) ms per call:

* ``fp32 kernel``: the float model, fused kernel;
* ``int8 kernel``: int8 weights and scales straight into the kernel;
* ``int8 expand``: the previous path, ``q * s`` expanded to float every call,
  then the float kernel (forced by disabling the int8 hand-off).

Workloads: ``B=1 T=100 I=40`` with ``H=128`` and ``H=256``; a 2-layer ``H=128``
LSTM fed 10-frame chunks with its state carried (per chunk); ``B=8`` for the
expand-once batch path.

``--workload step`` instead times the recurrent step's weight traffic:
``B=1`` and ``B=4``, ``T=100 I=40``, ``H=128/512/1024`` (fp32 ``Wh`` 256 KB /
4 MB / 16 MB, int8 a quarter), one layer, with the runners

* ``fp32 kernel``; ``int8 kernel`` (the default: the int8 step where it pays,
  VNNI at one row on CPUs with it); ``int8 step, no VNNI``: the int8 step
  forced (``EDGELSTM_Q8_STEP=1``) with int8 lanes widened to float in
  registers (``EDGELSTM_Q8_VNNI=0``); ``int8 fp32 packing``: the same int8
  model with ``EDGELSTM_Q8_STEP=0`` (its ``Wh`` expanded once to the fp32
  packing, the path before the int8 step);
* ``ORT fp32`` and ``ORT int8`` (``DynamicQuantizeLSTM``, per-channel int8
  weights, as ``edgelstm quantize --format onnx-ort`` writes it) when
  onnxruntime is installed. ``--batches`` / ``--hidden`` change the grid.

Usage: ``.venv/bin/python benchmarks/bench_quant.py [--workload step] [--repeat N]
[--threads 1] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import bench_core
import mlx.core as mx
import numpy as np
from bench_core import _bench, _print_env, _print_table, _set_threads, _write_json

from edgelstm.fast import dispatch as kernels
from edgelstm.nn.layers import LSTM
from edgelstm.quantize import quantize_mlx
from edgelstm.quantize.mlx_quant import _QuantizedCellMixin

I_SIZE = 40
STREAM_FRAMES = 200


class Workload:
    """A float LSTM, its int8 twin and the input chunks (one chunk unless streaming)."""

    def __init__(self, name, B, T, H, layers, chunked):
        self.name = name
        mx.random.seed(0)
        self.fp32 = LSTM(I_SIZE, H, num_layers=layers)
        self.fp32.eval()
        self.int8 = LSTM.from_config(self.fp32.config())
        self.int8.update(self.fp32.parameters())
        quantize_mlx(self.int8)
        mx.eval(self.fp32.parameters(), self.int8.parameters())
        steps = STREAM_FRAMES if chunked else T
        x = mx.array(np.random.default_rng(0).normal(0, 1, (B, steps, I_SIZE)).astype(np.float32))
        self.chunks = [x[:, t : t + T] for t in range(0, steps, T)]
        mx.eval(self.chunks)

    def runner(self, model, expand=False, q8_step=None) -> Callable:
        def run(k, state):
            y, state = model(self.chunks[k], state)
            mx.eval(y, state)
            return y, state

        if q8_step is not None:
            return _with_env("EDGELSTM_Q8_STEP", q8_step, run)
        if not expand:
            return run

        def run_expanded(k, state):
            # The pre-int8-kernel path: every quantized cell expands its weights.
            # The model remembers its stack plan (with the int8 weights) across
            # calls: forget it on the way in and out, or the patch never applies.
            saved = _QuantizedCellMixin._kernel_weights
            _QuantizedCellMixin._kernel_weights = lambda self, fast: None
            model.__dict__.pop("_edgelstm_plan", None)
            try:
                return run(k, state)
            finally:
                _QuantizedCellMixin._kernel_weights = saved
                model.__dict__.pop("_edgelstm_plan", None)

        return run_expanded


def _with_env(name: str, value: str, run: Callable) -> Callable:
    """``run`` with environment variable ``name`` set to ``value`` (read by the kernels per call)."""

    def wrapped(k, state):
        saved = os.environ.get(name)
        os.environ[name] = value
        try:
            return run(k, state)
        finally:
            if saved is None:
                del os.environ[name]
            else:
                os.environ[name] = saved

    return wrapped


def _ort_runners(wl: Workload, tmp: Path) -> dict[str, Callable]:
    """ONNX Runtime fp32 and DynamicQuantizeLSTM int8 sessions of ``wl.fp32`` (none without ORT)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return {}
    from edgelstm.converters import to_onnx
    from edgelstm.quantize.onnx_ort import ort_quantize

    fp32, int8 = tmp / f"{id(wl)}.onnx", tmp / f"{id(wl)}.int8.onnx"
    to_onnx(wl.fp32, fp32)
    ort_quantize(fp32, int8)
    opts = ort.SessionOptions()
    if bench_core.THREADS > 0:
        opts.intra_op_num_threads = bench_core.THREADS
    runners = {}
    for name, path in (("ORT fp32", fp32), ("ORT int8 (DynamicQuantizeLSTM)", int8)):
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feed = sess.get_inputs()[0].name
        xs = [np.array(c) for c in wl.chunks]

        def run(k, state, sess=sess, feed=feed, xs=xs):
            return sess.run(None, {feed: xs[k]})[0], None

        runners[name] = run
    return runners


def _bench_rotated(runners: dict[str, Callable], wl: Workload, repeat: int) -> dict[str, dict]:
    """``bench_core._bench`` with the runner order rotated every pass.

    A runner pays for what its predecessor left in the caches (ORT's arena,
    another model's 16 MB packing): at H=128 the first runner of a fixed
    order measured ~30% slow. Rotating spreads that over all of them.
    """
    names = list(runners)
    times = {n: [] for n in names}
    ys = {}
    for r in range(repeat + 2):  # two warm-up passes
        for n in names[r % len(names):] + names[: r % len(names)]:
            t, ys[n] = bench_core._pass(runners[n], wl)
            if r >= 2:
                times[n].extend(t)
    return {n: {"ms": statistics.median(t), "min_ms": min(t), "y": ys[n]}
            for n, t in times.items()}


def bench_step(wl: Workload, repeat: int, tmp: Path, ort: bool = True) -> list[dict]:
    """The ``--workload step`` runners on ``wl``, compared with fp32 and the fp32 packing of int8."""
    runners = {
        "fp32 kernel": wl.runner(wl.fp32),
        "int8 kernel": wl.runner(wl.int8),
        "int8 step, no VNNI": _with_env("EDGELSTM_Q8_VNNI", "0",
                                        wl.runner(wl.int8, q8_step="1")),
        "int8 fp32 packing (previous)": wl.runner(wl.int8, q8_step="0"),
        **(_ort_runners(wl, tmp) if ort else {}),
    }
    out = _bench_rotated(runners, wl, repeat)
    return _rows(out, out["int8 fp32 packing (previous)"])


def bench(wl: Workload, repeat: int) -> list[dict]:
    """Time the three runners on ``wl``; one result row each, compared with fp32 and expand."""
    runners = {
        "fp32 kernel": wl.runner(wl.fp32),
        "int8 kernel": wl.runner(wl.int8),
        "int8 expand (previous)": wl.runner(wl.int8, expand=True),
    }
    out = _bench(runners, wl, repeat)
    return _rows(out, out["int8 expand (previous)"])


def _rows(out: dict, previous: dict) -> list[dict]:
    """One result row per runner: time, ratio and output gaps to fp32 and the previous int8 path."""
    fp32 = out["fp32 kernel"]
    return [
        {
            "impl": n,
            "ms": o["ms"],
            "min_ms": o["min_ms"],
            "vs_fp32": o["ms"] / fp32["ms"],
            "max_abs_diff_fp32": float(np.abs(o["y"] - fp32["y"]).max()),
            "max_abs_diff_expand": float(np.abs(o["y"] - previous["y"]).max()),
        }
        for n, o in out.items()
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed passes per workload")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--threads", type=int, default=0, help="cap OpenBLAS threads (0: default)")
    ap.add_argument("--no-batch", action="store_true", help="skip the B=8 workload")
    ap.add_argument("--workload", choices=("default", "step"), default="default",
                    help="step: int8 vs fp32 step over batches x hidden sizes, ORT columns")
    ap.add_argument("--batches", default="1,4", help="--workload step batches (comma list)")
    ap.add_argument("--hidden", default="128,512,1024", help="--workload step hidden sizes")
    ap.add_argument("--no-ort", action="store_true", help="--workload step without ORT columns")
    args = ap.parse_args(argv)
    if not kernels.available():
        print(f"fused kernels unavailable: {kernels.reason()}", file=sys.stderr)
        return 1
    _set_threads(args.threads)
    if args.workload == "step":
        workloads = [
            Workload(f"B={b} T=100 I=40 H={h} forward", b, 100, h, 1, False)
            for h in map(int, args.hidden.split(",")) for b in map(int, args.batches.split(","))
        ]
    else:
        workloads = [
            Workload("B=1 T=100 I=40 H=128 forward", 1, 100, 128, 1, False),
            Workload("B=1 T=100 I=40 H=256 forward", 1, 100, 256, 1, False),
            Workload("2x128 LSTM, 10-frame chunk, state carried (p50)", 1, 10, 128, 2, True),
        ]
        if not args.no_batch:
            workloads.append(Workload("B=8 T=100 I=40 H=128 forward", 8, 100, 128, 1, False))
    _print_env(args.threads)
    print(f"load average before: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    results = []
    tmp = tempfile.TemporaryDirectory()
    for wl in workloads:
        if args.workload == "step":
            rows = bench_step(wl, args.repeat, Path(tmp.name), ort=not args.no_ort)
        else:
            rows = bench(wl, args.repeat)
        _print_table(
            wl.name,
            [
                ("implementation", 30),
                ("median ms", 9),
                ("min ms", 8),
                ("x fp32", 6),
                ("max|dy| fp32", 12),
                ("max|dy| expand", 14),
            ],
            [
                [
                    r["impl"],
                    f"{r['ms']:.3f}",
                    f"{r['min_ms']:.3f}",
                    f"{r['vs_fp32']:.2f}",
                    f"{r['max_abs_diff_fp32']:.1e}",
                    f"{r['max_abs_diff_expand']:.1e}",
                ]
                for r in rows
            ],
        )
        results.append({"workload": wl.name, "results": rows})
    tmp.cleanup()
    print(f"\nload average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    _write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
