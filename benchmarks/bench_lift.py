"""A tf2onnx-style Keras GRU ``Loop`` on the MLX executor: lifted to a fused GRU vs op by op.

Builds the Loop graph of ``tests/fixtures/make_loop_fixtures.py`` (Keras GRU,
``reset_after=True``) at a realistic size, then times, interleaved in one
process, ``OnnxMLXRunner(model)`` (the Loop lifted to one ``GRU`` node on the
fused kernels), the same Loop with its trip count fed as an input (the count
cannot be proven, so the Loop stays and only its body's step is fused) and
``OnnxMLXRunner(model, lift=False)`` (the Loop body run op by op, one body
call per step), with ONNX Runtime on the original graph for reference. Reports the median wall time per call and the ratio; checks
both MLX results against ORT first.

    .venv/bin/python benchmarks/bench_lift.py                      # I=40, H=128, T=100, B=1,16
    .venv/bin/python benchmarks/bench_lift.py --threads 1 --repeat 20
"""

from __future__ import annotations  # noqa: I001

import argparse
import json
import sys
import time
from pathlib import Path

import edgelstm  # noqa: F401  (BLAS before mlx.core)
import numpy as np

from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner
from edgelstm.fast import dispatch as kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
import make_loop_fixtures as F  # noqa: E402


def _build(inputs: int, hidden: int, steps: int, steps_input: bool = False):
    # the builder reads its sizes from module constants
    F.I, F.H, F.T = inputs, hidden, steps
    return F.loop_fixture("gru", np.random.default_rng(0), steps_input=steps_input)


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--repeat", type=int, default=15, help="timed calls per variant and round")
    ap.add_argument("--threads", type=int, default=1,
                    help="ORT intra-op and kernel BLAS threads (0: library defaults)")
    args = ap.parse_args(argv)
    import onnxruntime as ort

    if args.threads > 0 and kernels.available():
        kernels.set_blas_threads(args.threads)
    model = _build(args.inputs, args.hidden, args.steps)
    lifted, plain = OnnxMLXRunner(model), OnnxMLXRunner(model, lift=False)
    body = OnnxMLXRunner(_build(args.inputs, args.hidden, args.steps, steps_input=True))
    assert [(r.cell, r.form) for r in lifted.lifted] == [("gru", "loop")], lifted.lifted
    assert [(r.cell, r.form) for r in body.lifted] == [("gru", "step")], body.lifted
    opts = ort.SessionOptions()
    if args.threads > 0:
        opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    rows = []
    for batch in args.batch:
        x = np.random.default_rng(1).standard_normal(
            (batch, args.steps, args.inputs)).astype(np.float32)
        ref = sess.run(["y"], {"x": x})[0]
        feeds = {"x": x}
        counted = {"x": x, "steps": np.array(args.steps, np.int64)}
        for r, f in ((lifted, feeds), (plain, feeds), (body, counted)):
            diff = float(np.abs(r.run(f)["y"] - ref).max())
            assert diff < 1e-4, diff
        variants = {"mlx lifted (fused GRU)": lambda f=feeds: lifted.run(f),
                    "mlx Loop, body step fused": lambda f=counted: body.run(f),
                    "mlx op by op (Loop)": lambda f=feeds: plain.run(f),
                    "onnxruntime (Loop)": lambda f=feeds: sess.run(["y"], f)}
        best = {k: float("inf") for k in variants}
        for _ in range(3):  # interleaved rounds; keep each variant's best median
            for k, fn in variants.items():
                fn()
                best[k] = min(best[k], _median_ms(fn, args.repeat))
        ratio = best["mlx op by op (Loop)"] / best["mlx lifted (fused GRU)"]
        body_ratio = best["mlx op by op (Loop)"] / best["mlx Loop, body step fused"]
        rows.append({"batch": batch, "ms": best, "op_by_op_over_lifted": ratio,
                     "op_by_op_over_body_step": body_ratio})
        print(f"B={batch} T={args.steps} I={args.inputs} H={args.hidden} "
              f"threads={args.threads or 'default'}")
        for k, v in best.items():
            print(f"  {k:26s} {v:9.2f} ms/call")
        print(f"  lifted is {ratio:.1f}x faster than op by op "
              f"(body step fused: {body_ratio:.1f}x)")
    print(json.dumps({"kernels": kernels.reason(), "rows": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
