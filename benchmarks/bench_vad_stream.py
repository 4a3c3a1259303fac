"""Streaming step of a third-party conv-front-end + LSTM model: MLX executor vs ONNX Runtime.

The model is ``tests/fixtures/vad/vad_stream.onnx`` (a PyTorch-exported VAD:
If on sr, reflection Pad, Conv STFT, two Conv1d, LSTM with state in/out,
Gemm + Sigmoid), float and int8 QDQ (``quantize --weights all``). One step is
one call on 288 samples at 8 kHz (32 ms of audio), state carried, as
``edgelstm stream --frame-samples 256 --context-samples 32`` runs it. The
backends are timed interleaved in one process, ONNX Runtime on one thread.

    .venv/bin/python benchmarks/bench_vad_stream.py            # JSON to stdout
    .venv/bin/python benchmarks/bench_vad_stream.py --steps 2000
"""

from __future__ import annotations  # noqa: I001

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import edgelstm  # noqa: F401  (BLAS before mlx.core)
import mlx.core as mx
import numpy as np

from edgelstm.quantize import QuantConfig, quantize_model
from edgelstm.quantize.config import WEIGHT_SETS
from edgelstm.streaming import StreamingSession

MODEL = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "vad" / "vad_stream.onnx"
N, M, SR = 256, 32, 8000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        q = Path(tmp) / "vad.int8.onnx"
        quantize_model(MODEL, q, QuantConfig(targets=WEIGHT_SETS["all"]), consts={"sr": SR},
                       dims={"samples": N + M})
        forms = {f"{engine}{tag}": StreamingSession.from_onnx_samples(
                     path, N, M, SR, consts={"sr": SR}, backend=engine, threads=1).backend
                 for tag, path in (("", MODEL), ("-int8", q))
                 for engine in ("onnxruntime", "mlx")}
        x = (np.random.default_rng(0).standard_normal((1, N + M)) * 0.1).astype(np.float32)
        states = {k: b.zero_state(1) for k, b in forms.items()}
        times = {k: [] for k in forms}
        for i in range(args.warmup + args.steps):
            for k, b in forms.items():  # interleaved: machine noise hits every form alike
                t0 = time.perf_counter()
                _, states[k] = b.step(x, states[k])
                if i >= args.warmup:
                    times[k].append((time.perf_counter() - t0) * 1e3)
    res = [{"backend": k, "p50_ms": round(float(np.percentile(t, 50)), 4),
            "p99_ms": round(float(np.percentile(t, 99)), 4),
            "rtf": round(float(np.mean(t)) / (N * 1e3 / SR), 5)} for k, t in times.items()]
    p50 = {r["backend"]: r["p50_ms"] for r in res}
    print(json.dumps({"model": MODEL.name, "step_ms_of_audio": N * 1e3 / SR, "steps": args.steps,
                      "results": res,
                      "mlx_over_onnxruntime_p50": round(p50["mlx"] / p50["onnxruntime"], 2),
                      "machine": {"platform": platform.platform(), "mlx": mx.__version__,
                                  "device": str(mx.default_device())}}, indent=2))


if __name__ == "__main__":
    main()
