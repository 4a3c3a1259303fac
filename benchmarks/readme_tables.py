"""Regenerate the README's speed tables in one command.

Runs ``bench_core.py`` (the standard recurrent workloads, every peer interleaved in one
process) and ``edgelstm.runtime.bench.run_bench`` on each shipped model in ``examples/``
(batch 1 x 100 frames, and 10-frame streaming chunks with the state carried), then
prints Markdown to stdout. Progress goes to stderr.

Usage: ``python benchmarks/readme_tables.py [--threads 1] [--repeat 15] [--skip-core]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

MODELS = ("basicmotions", "japanesevowels", "fsdd")
BACKENDS = ("mlx", "mlx-int8", "onnxruntime", "onnxruntime-int8")


def core_table(threads: int, repeat: int) -> str:
    """The recurrent-core table: median ms per implementation and workload."""
    import bench_core

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "core.json"
        argv = ["--threads", str(threads), "--repeat", str(repeat), "--json", str(out)]
        old, sys.stdout = sys.stdout, sys.stderr  # its own tables are progress here
        try:
            bench_core.main(argv)
        finally:
            sys.stdout = old
        data = json.loads(out.read_text())
    rows = data["workloads"]
    names = list(dict.fromkeys(r["impl"] for w in rows for r in w["results"]))
    ratios = [("vs ORT", "onnxruntime"), ("vs PyTorch", "torch.nn.LSTM"),
              ("vs mlx.nn", "mlx.nn.LSTM")]
    lines = [f"MLX BLAS: {data['mlx_blas']}; kernels: {data['kernels']}; threads "
             f"{threads if threads > 0 else 'library defaults'}", "",
             "| workload | " + " | ".join(names + [r for r, _ in ratios]) + " |",
             "|---|" + "---:|" * (len(names) + len(ratios))]
    for w in rows:
        ms = {r["impl"]: r["ms"] for r in w["results"]}
        cells = [f"{ms[n]:.3g}" if n in ms else "" for n in names]
        ours = _ours(ms)
        for _, peer in ratios:
            theirs = next((v for k, v in ms.items() if k.startswith(peer)), None)
            r = theirs / ours if theirs and ours else None
            cells.append("" if r is None else f"**{r:.2f}x**" if r >= 1 else f"{r:.2f}x")
        lines.append(f"| {w['workload']} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios are the peer's median over edgelstm's (the `edgelstm.LSTM` module "
              "forward, the kernel in train mode for the training step): above 1, "
              "edgelstm is faster."]
    return "\n".join(lines)


def _ours(ms: dict) -> float | None:
    """edgelstm's median of a workload: the module as users build it, or the train step."""
    for prefix in ("edgelstm.LSTM module", "edgelstm kernel (train mode)"):
        for k, v in ms.items():
            if k.startswith(prefix):
                return v
    return None


def model_table(threads: int, runs: int) -> str:
    """Each shipped model on each backend: batch-1 call and 10-frame chunk p50 ms."""
    import edgelstm
    from edgelstm.runtime.bench import run_bench

    lines = ["| model | " + " | ".join(f"{b} (T=100 / chunk 10)" for b in BACKENDS) + " |",
             "|---|" + "---:|" * len(BACKENDS)]
    for name in MODELS:
        print(f"benchmarking examples/{name}/model", file=sys.stderr)
        path = ROOT / "examples" / name / "model"
        streams = edgelstm.load(path).can_stream  # the LSTM-FCN branch pools whole sequences
        report = run_bench(path, backends=BACKENDS, runs=runs, threads=threads,
                           modes=("batch", "stream") if streams else ("batch",), chunks=(10,))
        by = {(r.backend, r.mode): r for r in report.results}
        cells = []
        for b in BACKENDS:
            batch, stream = by.get((b, "batch")), by.get((b, "stream"))
            chunk = f"{stream.p50_ms:.3f}" if stream else "-" if streams else "cannot stream"
            cells.append(f"{batch.p50_ms:.3f} / {chunk}" if batch else f"- / {chunk}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="0: each library's default")
    ap.add_argument("--repeat", type=int, default=15, help="timed passes per core workload")
    ap.add_argument("--runs", type=int, default=50, help="timed calls per model case")
    ap.add_argument("--skip-core", action="store_true", help="only the shipped models")
    args = ap.parse_args(argv)
    if not args.skip_core:
        print("### Recurrent core (median ms)\n\n" + core_table(args.threads, args.repeat) + "\n")
    print("### Shipped models (p50 ms)\n\n" + model_table(args.threads, args.runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
