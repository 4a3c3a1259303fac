"""Files/s of ``predict_files`` (local processes) vs ``predict_files_ray`` (Ray actors).

    python benchmarks/bench_predict_ray.py MODEL FOLDER [--n 300]

Runs interleaved in one process; Ray start-up (``ray.init``) and pool/actor
start are timed separately from the steady-state files/s of each run.
"""

from __future__ import annotations

import argparse
import time

from edgelstm.runtime.predict import expand_inputs, predict_files
from edgelstm.runtime.predict_ray import predict_files_ray, require_ray


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("folder")
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    files = expand_inputs([args.folder])[: args.n]
    ray = require_ray()
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - t0:.1f}s")
    rows = []
    for name, run in [
        ("predict --workers 1", lambda: predict_files(args.model, files, workers=1)),
        ("predict --workers 2", lambda: predict_files(args.model, files, workers=2)),
        ("ray, 1 actor", lambda: (r for _, r in predict_files_ray(args.model, files, workers=1))),
        ("ray, 2 actors", lambda: (r for _, r in predict_files_ray(args.model, files, workers=2))),
    ]:
        t0 = time.perf_counter()
        it = iter(run())
        next(it)  # first record: includes process/actor start and the model load
        t1 = time.perf_counter()
        n = 1 + sum(1 for _ in it)
        t2 = time.perf_counter()
        rows.append((name, n, t1 - t0, (n - 1) / (t2 - t1), n / (t2 - t0)))
    ray.shutdown()
    print(f"{'run':22s} {'files':>5s} {'first s':>8s} {'steady f/s':>10s} {'overall f/s':>11s}")
    for name, n, first, steady, overall in rows:
        print(f"{name:22s} {n:5d} {first:8.2f} {steady:10.1f} {overall:11.1f}")


if __name__ == "__main__":
    main()
