"""Streaming targets: a 2-layer 128-unit LSTM on 10 ms frames, 100 ms chunks.

Measures, per backend, the per-chunk latency (p50/p99) and the real-time
factor (processing time / signal time) over a stream of feature frames, the
same with the speech front end (16 kHz audio -> 40 log-mel -> model), and
RSS over a simulated one-hour stream (360,000 frames, run as fast as it goes)
to show memory stays flat.

    .venv/bin/python benchmarks/bench_stream.py                # all, JSON to stdout
    .venv/bin/python benchmarks/bench_stream.py --hour-backends mlx-compiled --chunks 2000
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

from edgelstm.frontend.features import FeatureConfig
from edgelstm.nn.layers import LSTM
from edgelstm.nn.model import SequenceModel
from edgelstm.streaming.session import StreamingSession

FRAME_MS = 10.0
CHUNK = 10  # frames: 100 ms
HOUR_FRAMES = 360_000
FC = FeatureConfig(kind="fbank", sample_rate=16000, n_mels=40)


def rss_mb() -> float:
    """Resident set size now (Linux /proc; falls back to peak RSS elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        import os

        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build(tmp: Path):
    mx.random.seed(0)
    model = SequenceModel(LSTM(40, 128, num_layers=2), labels=[f"k{i}" for i in range(12)],
                          features=FC.to_dict())
    model.eval()
    from edgelstm.converters import to_onnx

    to_onnx(model, tmp / "m.onnx", streaming=True)
    return model, tmp / "m.onnx"


def sessions(model, onnx_path, which):
    out = {}
    if "mlx" in which:
        out["mlx"] = StreamingSession.from_model(model, CHUNK, compile=False)
    if "mlx-compiled" in which:
        out["mlx-compiled"] = StreamingSession.from_model(model, CHUNK, compile=True)
    if "onnxruntime" in which:
        out["onnxruntime"] = StreamingSession.from_onnx(onnx_path, CHUNK)
    return out


def latency_run(session, n_chunks: int, audio: bool, seed: int = 0) -> dict:
    """Stream ``n_chunks`` chunks through one stream; per-chunk latency incl. front end."""
    rng = np.random.default_rng(seed)
    session.warmup()
    s = session.create_stream()
    lat = []
    hop = FC.hop_length
    t_all = time.perf_counter()
    for _ in range(n_chunks):
        if audio:
            chunk = (rng.standard_normal(CHUNK * hop) * 0.1).astype(np.float32)
            t0 = time.perf_counter()
            s.accept_waveform(chunk)
        else:
            chunk = rng.standard_normal((CHUNK, 40)).astype(np.float32)
            t0 = time.perf_counter()
            s.accept_frames(chunk)
        while session.is_ready(s):
            session.step(s)
        lat.append((time.perf_counter() - t0) * 1000.0)
    wall = time.perf_counter() - t_all
    lat = np.array(lat)
    signal_s = n_chunks * CHUNK * FRAME_MS / 1000.0
    return {"chunks": n_chunks, "p50_ms": round(float(np.percentile(lat, 50)), 4),
            "p99_ms": round(float(np.percentile(lat, 99)), 4),
            "mean_ms": round(float(lat.mean()), 4),
            "rtf": round(float(lat.sum()) / 1000.0 / signal_s, 5),
            "rtf_wall": round(wall / signal_s, 5)}


def hour_run(session, samples: int = 36) -> dict:
    """RSS over 360,000 frames (one hour of 10 ms frames), sampled ``samples`` times."""
    rng = np.random.default_rng(1)
    block = rng.standard_normal((CHUNK, 40)).astype(np.float32)
    session.warmup()
    s = session.create_stream()
    n_chunks = HOUR_FRAMES // CHUNK
    every = n_chunks // samples
    trace = []
    t0 = time.perf_counter()
    for k in range(n_chunks):
        s.accept_frames(block + np.float32(k % 7) * 0.01)
        session.step(s)
        if k % every == 0 or k == n_chunks - 1:
            trace.append((k * CHUNK, round(rss_mb(), 2)))
    secs = time.perf_counter() - t0
    rss = [r for _, r in trace]
    settled = rss[len(rss) // 10:]  # ignore allocator warm-up in the first ~6 minutes
    return {"frames": HOUR_FRAMES, "seconds": round(secs, 1),
            "rss_start_mb": rss[0], "rss_end_mb": rss[-1], "rss_max_mb": max(rss),
            "growth_after_warmup_mb": round(settled[-1] - settled[0], 2),
            "trace": trace}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backends", default="mlx,mlx-compiled,onnxruntime")
    ap.add_argument("--hour-backends", default="mlx-compiled,onnxruntime",
                    help="backends for the one-hour memory run ('' to skip)")
    ap.add_argument("--chunks", type=int, default=3000, help="chunks per latency run")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    from edgelstm.fast import dispatch as kernels

    report = {"machine": platform.processor() or platform.machine(),
              "mlx": mx.__version__, "fused_kernel": kernels.available(),
              "model": "LSTM 2x128, 40 in, 12 out, 10 ms frames, 100 ms chunks",
              "latency": {}, "hour": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model, onnx_path = build(Path(tmp))
        which = [b for b in args.backends.split(",") if b]
        for name, ses in sessions(model, onnx_path, which).items():
            for audio in (False, True):
                key = f"{name}{'+fbank' if audio else ''}"
                report["latency"][key] = latency_run(ses, args.chunks, audio)
                print(key, report["latency"][key], flush=True)
        hour = [b for b in args.hour_backends.split(",") if b]
        for name, ses in sessions(model, onnx_path, hour).items():
            r = hour_run(ses)
            report["hour"][name] = r
            print(name, {k: v for k, v in r.items() if k != "trace"}, flush=True)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
