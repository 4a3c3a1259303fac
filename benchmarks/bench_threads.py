"""Where threading the fused LSTM step pays: one thread vs N per step, same call.

For each (B, H) the fused ``lstm_seq`` (input projection inside, T=100, I=40) runs
with the recurrent step on 1 thread and on ``--threads`` threads, interleaved in
one process, with the work threshold lowered so every shape is threaded
(``set_step_min_macs(1)``) and the contention back-off off (raw timings). The
ratio picks ``kStepMinMacs`` (kernels/src/step_pool.cpp). Needs an idle machine:
with more runnable threads than cores a second thread only waits.

Usage: ``.venv/bin/python benchmarks/bench_threads.py [--repeat N] [--threads N]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import edgelstm  # noqa: F401  (applies EDGELSTM_BLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np

from edgelstm.fast import dispatch as kernels

SHAPES = [(1, 128), (1, 256), (1, 512), (4, 128), (4, 256), (8, 128), (8, 256), (16, 128),
          (16, 256), (32, 64), (32, 128), (32, 256)]


def _case(B, H, T=100, I=40):
    rng = np.random.default_rng(0)
    Wx = mx.array(rng.normal(0, 0.2, (4 * H, I)).astype(np.float32))
    Wh = mx.array(rng.normal(0, 0.2, (4 * H, H)).astype(np.float32))
    b = mx.array(rng.normal(0, 0.2, (4 * H,)).astype(np.float32))
    x = mx.array(rng.normal(0, 1, (T, B, I)).astype(np.float32))
    mx.eval(Wx, Wh, b, x)

    def run():
        y, (h, c) = kernels.lstm_seq(x, Wh, Wx=Wx, bias=b)
        mx.eval(y, h, c)

    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if not kernels.available():
        print(f"fused kernels unavailable: {kernels.reason()}")
        return 1
    ext = kernels._ext
    old = ext.step_min_macs()
    ext.set_step_min_macs(1)
    ext.set_step_backoff(False)
    print(f"load average {os.getloadavg()[0]:.2f}; {kernels.reason()}")
    print(f"{'B':>3} {'H':>4} {'MACs/step':>10} {'1 thread ms':>12} "
          f"{args.threads} threads ms {'speed-up':>9}")
    try:
        for B, H in SHAPES:
            run = _case(B, H)
            times = {1: [], args.threads: []}
            for n in times:
                kernels.set_recurrent_threads(n)
                run()  # warm: packing cached, pool started
            for _ in range(args.repeat):
                for n in times:
                    kernels.set_recurrent_threads(n)
                    t0 = time.perf_counter()
                    run()
                    times[n].append((time.perf_counter() - t0) * 1e3)
            one = statistics.median(times[1])
            many = statistics.median(times[args.threads])
            print(f"{B:>3} {H:>4} {B * 4 * H * H:>10} {one:>12.3f} {many:>13.3f} "
                  f"{one / many:>8.2f}x")
    finally:
        ext.set_step_min_macs(old)
        ext.set_step_backoff(True)
        kernels.set_recurrent_threads(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
