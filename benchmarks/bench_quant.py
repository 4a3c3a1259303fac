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

Usage: ``.venv/bin/python benchmarks/bench_quant.py [--repeat N] [--threads 1] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
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

    def runner(self, model, expand=False) -> Callable:
        def run(k, state):
            y, state = model(self.chunks[k], state)
            mx.eval(y, state)
            return y, state

        if not expand:
            return run

        def run_expanded(k, state):
            # The pre-int8-kernel path: every quantized cell expands its weights.
            saved = _QuantizedCellMixin._kernel_weights
            _QuantizedCellMixin._kernel_weights = lambda self, fast: None
            try:
                return run(k, state)
            finally:
                _QuantizedCellMixin._kernel_weights = saved

        return run_expanded


def bench(wl: Workload, repeat: int) -> list[dict]:
    """Time the three runners on ``wl``; one result row each, compared with fp32 and expand."""
    runners = {
        "fp32 kernel": wl.runner(wl.fp32),
        "int8 kernel": wl.runner(wl.int8),
        "int8 expand (previous)": wl.runner(wl.int8, expand=True),
    }
    out = _bench(runners, wl, repeat)
    fp32, expand = out["fp32 kernel"], out["int8 expand (previous)"]
    return [
        {
            "impl": n,
            "ms": o["ms"],
            "min_ms": o["min_ms"],
            "vs_fp32": o["ms"] / fp32["ms"],
            "max_abs_diff_fp32": float(np.abs(o["y"] - fp32["y"]).max()),
            "max_abs_diff_expand": float(np.abs(o["y"] - expand["y"]).max()),
        }
        for n, o in out.items()
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed passes per workload")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--threads", type=int, default=0, help="cap OpenBLAS threads (0: default)")
    ap.add_argument("--no-batch", action="store_true", help="skip the B=8 workload")
    args = ap.parse_args(argv)
    if not kernels.available():
        print(f"fused kernels unavailable: {kernels.reason()}", file=sys.stderr)
        return 1
    _set_threads(args.threads)
    workloads = [
        Workload("B=1 T=100 I=40 H=128 forward", 1, 100, 128, 1, False),
        Workload("B=1 T=100 I=40 H=256 forward", 1, 100, 256, 1, False),
        Workload("2x128 LSTM, 10-frame chunk, state carried (p50)", 1, 10, 128, 2, True),
    ]
    if not args.no_batch:
        workloads.append(Workload("B=8 T=100 I=40 H=128 forward", 8, 100, 128, 1, False))
    _print_env(args.threads)
    results = []
    for wl in workloads:
        rows = bench(wl, args.repeat)
        _print_table(
            wl.name,
            [
                ("implementation", 24),
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
    _write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
