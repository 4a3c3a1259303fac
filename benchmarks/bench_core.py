"""Benchmark the LSTM core: mlx.nn, edgelstm (pure MLX and fused kernel), PyTorch, ORT.

Same process, same weights. The kernels use their linked BLAS (scipy-openblas32 on
Linux); ``EDGELSTM_BLAS=openblas`` also moves MLX's own matmuls to a system OpenBLAS.
Workloads (see shared/docs/platform-notes.md):

* ``B=32 T=100 I=40 H=256`` forward, one layer;
* ``B=1 T=100 I=40 H=128`` forward, one layer;
* a 2-layer ``H=128`` LSTM fed 10-frame chunks with its state carried (p50 per chunk);
* a training step, ``B=32 T=100 I=40 H=128``, forward + backward + Adam
  (``train_step.py``; the kernel row is the module in train mode, fused BPTT).

Usage: ``.venv/bin/python benchmarks/bench_core.py [--repeat N] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import edgelstm  # noqa: F401  (applies EDGELSTM_BLAS before mlx.core)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np

from edgelstm.fast import blas as _blas
from edgelstm.fast import dispatch as kernels
from edgelstm.nn import recurrent as R

sys.path.insert(0, str(Path(__file__).parent))
from train_step import TrainWorkload  # noqa: E402  (sibling module)
from train_step import impls as train_impls  # noqa: E402

I_SIZE = 40
CHUNK, STREAM_FRAMES = 10, 200


def _onnx_lstm(weights, B, T):
    """An ONNX Runtime session for stacked one-node LSTMs (ONNX gate order i, o, f, c)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    def reorder(w):  # MLX/PyTorch i, f, g, o -> ONNX i, o, f, c
        i, f, g, o = np.split(w, 4, axis=0)
        return np.concatenate([i, o, f, g], axis=0)

    H = weights[0]["Wh"].shape[1]
    nodes, inits, inputs, outputs = [], [], [], []
    inputs.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I_SIZE]))
    prev = "x"
    for n, w in enumerate(weights):
        bias = np.concatenate([reorder(w["bias"]), np.zeros(4 * H, np.float32)])
        for name, arr in ((f"W{n}", reorder(w["Wx"])[None]), (f"R{n}", reorder(w["Wh"])[None])):
            inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        inits.append(numpy_helper.from_array(bias[None].astype(np.float32), f"B{n}"))
        for s in ("h", "c"):
            inputs.append(helper.make_tensor_value_info(f"{s}{n}", TensorProto.FLOAT, [1, B, H]))
            outputs.append(
                helper.make_tensor_value_info(f"{s}{n}_out", TensorProto.FLOAT, [1, B, H])
            )
        nodes.append(
            helper.make_node(
                "LSTM",
                [prev, f"W{n}", f"R{n}", f"B{n}", "", f"h{n}", f"c{n}"],
                [f"y{n}", f"h{n}_out", f"c{n}_out"],
                hidden_size=H,
            )
        )
        inits.append(numpy_helper.from_array(np.array([1], np.int64), f"ax{n}"))
        nodes.append(helper.make_node("Squeeze", [f"y{n}", f"ax{n}"], [f"y{n}_sq"]))
        prev = f"y{n}_sq"
    outputs.insert(0, helper.make_tensor_value_info(prev, TensorProto.FLOAT, [T, B, H]))
    graph = helper.make_graph(nodes, "lstm", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    if THREADS > 0:
        opts.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess, prev


class Workload:
    """One benchmark case: weights, an input stream and per-framework runners."""

    def __init__(self, name, B, T, H, layers, chunked):
        self.name, self.B, self.T, self.H = name, B, T, H
        self.layers, self.chunked = layers, chunked
        mx.random.seed(0)
        self.mlx_layers = [nn.LSTM(I_SIZE if n == 0 else H, H) for n in range(layers)]
        mx.eval([m.parameters() for m in self.mlx_layers])
        self.w = [
            {k: np.array(getattr(m, k)) for k in ("Wx", "Wh", "bias")} for m in self.mlx_layers
        ]
        rng = np.random.default_rng(0)
        steps = STREAM_FRAMES if chunked else T
        self.x_np = rng.normal(0, 1, (B, steps, I_SIZE)).astype(np.float32)
        self.x = mx.array(self.x_np)
        self.chunks = [self.x[:, t : t + T] for t in range(0, steps, T)] if chunked else [self.x]
        mx.eval(self.chunks)

    # Each runner takes (chunk index, carried state) and returns (y as numpy-able, state).
    def mlx_nn(self):
        def run(k, state):
            x, new = self.chunks[k], []
            for n, m in enumerate(self.mlx_layers):
                h0, c0 = state[n] if state else (None, None)
                hs, cs = m(x, hidden=h0, cell=c0)
                new.append((hs[:, -1], cs[:, -1]))
                x = hs
            mx.eval(x, new)
            return x, new

        return run

    def edgelstm(self, fast):
        w = [{k: getattr(m, k) for k in ("Wx", "Wh", "bias")} for m in self.mlx_layers]

        def run(k, state):
            x, new = self.chunks[k], []
            for n, p in enumerate(w):
                h0, c0 = state[n] if state else (None, None)
                x, hc = R.lstm(x, p["Wx"], p["Wh"], p["bias"], h0=h0, c0=c0, fast=fast)
                new.append(hc)
            mx.eval(x, new)
            return x, new

        return run

    def edgelstm_stack(self):
        # The layer API: Recurrent.__call__ with whole (L, B, H) states carried.
        net = edgelstm.LSTM(I_SIZE, self.H, num_layers=self.layers)
        for n, m in enumerate(self.mlx_layers):
            cell = net.layers[n].forward
            cell.Wx, cell.Wh, cell.bias = m.Wx, m.Wh, m.bias
        net.eval()

        def run(k, state):
            y, new = net(self.chunks[k], state)
            mx.eval(y, new)
            return y, new

        return run

    def torch(self):
        import torch

        net = torch.nn.LSTM(I_SIZE, self.H, num_layers=self.layers, batch_first=True)
        with torch.no_grad():
            for n, w in enumerate(self.w):
                getattr(net, f"weight_ih_l{n}").copy_(torch.from_numpy(w["Wx"]))
                getattr(net, f"weight_hh_l{n}").copy_(torch.from_numpy(w["Wh"]))
                getattr(net, f"bias_ih_l{n}").copy_(torch.from_numpy(w["bias"]))
                getattr(net, f"bias_hh_l{n}").zero_()
        net.eval()
        xs = [torch.from_numpy(np.ascontiguousarray(np.array(c))) for c in self.chunks]

        def run(k, state):
            with torch.inference_mode():
                y, (h, c) = net(xs[k], state)
            return y, (h, c)

        return run

    def ort(self):
        T = self.chunks[0].shape[1]
        sess, y_name = _onnx_lstm(self.w, self.B, T)
        xs = [np.ascontiguousarray(np.array(c).transpose(1, 0, 2)) for c in self.chunks]
        zero = np.zeros((1, self.B, self.H), np.float32)
        names = [y_name] + [f"{s}{n}_out" for n in range(self.layers) for s in "hc"]

        def run(k, state):
            feed = {"x": xs[k]}
            for n in range(self.layers):
                feed[f"h{n}"], feed[f"c{n}"] = state[2 * n : 2 * n + 2] if state else (zero, zero)
            y, *st = sess.run(names, feed)
            return y.transpose(1, 0, 2), st

        return run


def _pass(run: Callable, wl) -> tuple[list[float], np.ndarray]:
    """One pass over ``wl.chunks`` (state carried); ms per call and last y."""
    times, state, y = [], None, None
    for k in range(len(wl.chunks)):
        t0 = time.perf_counter()
        y, state = run(k, state)
        times.append((time.perf_counter() - t0) * 1e3)
    return times, np.asarray(y)


def _bench(runners: dict[str, Callable], wl, repeat: int) -> dict[str, dict]:
    """Interleave implementations pass by pass so background load hits all alike.

    Args:
        runners: name -> ``run(chunk index, state) -> (y, state)``.
        wl: a workload with ``chunks`` (the input chunks of one pass).
        repeat: timed passes (after two warm-up passes).

    Returns:
        name -> ``{"ms": median, "min_ms": min, "y": last output as numpy}``.
    """
    times = {name: [] for name in runners}
    ys = {}
    for r in range(repeat + 2):  # two warm-up passes
        for name, run in runners.items():
            t, ys[name] = _pass(run, wl)
            if r >= 2:
                times[name].extend(t)
    return {
        name: {"ms": statistics.median(t), "min_ms": min(t), "y": ys[name]}
        for name, t in times.items()
    }


def _print_env(threads: int) -> None:
    """Print the BLAS, MLX and kernel build and the thread cap (the table preamble)."""
    print(f"MLX BLAS: {_blas.MLX_BLAS}; mlx {mx.__version__}; kernels: {kernels.reason()}")
    step = ""
    if kernels.available():
        n, source = kernels.recurrent_threads()
        step = f"; fused LSTM step: up to {n} ({source})"
    print(f"threads: {threads if threads > 0 else 'library defaults'}{step}")


def _print_table(title: str, columns: list[tuple[str, int]], rows: list[list[str]]) -> None:
    """Print ``title`` and a Markdown table: first column left-aligned, the rest right-aligned.

    Args:
        title: printed after a blank line.
        columns: ``(header, width)`` per column.
        rows: formatted cells, one list per row, in column order.
    """

    def line(cells):
        (first, w0), *rest = zip(cells, (w for _, w in columns), strict=True)
        return "| " + " | ".join([f"{first:<{w0}}"] + [f"{c:>{w}}" for c, w in rest]) + " |"

    print(f"\n{title}")
    print(line([h for h, _ in columns]))
    widths = [w for _, w in columns]
    print("|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]]) + "|")
    for r in rows:
        print(line(r))


def _write_json(path: str | None, results: list[dict]) -> None:
    """Write the per-workload results with the BLAS and MLX versions to ``path`` (if given)."""
    if path:
        with open(path, "w") as fh:
            json.dump(
                {"mlx_blas": _blas.MLX_BLAS, "kernels": kernels.reason(), "mlx": mx.__version__,
                 "workloads": results}, fh, indent=2
            )


THREADS = 0


def _set_threads(n: int) -> None:
    """Cap every library's thread pool at ``n`` (steadier timings on a busy box)."""
    global THREADS
    THREADS = n
    if n <= 0:
        return
    if kernels.available():
        kernels.set_blas_threads(n)  # the kernels' own (scipy-openblas) pool
    if _blas.MLX_BLAS.startswith("OpenBLAS ("):  # opt-in EDGELSTM_BLAS=openblas
        import ctypes

        path = _blas.MLX_BLAS[len("OpenBLAS (") :].split(",")[0]
        ctypes.CDLL(path).openblas_set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=30, help="timed passes per workload")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="cap OpenBLAS, PyTorch and ORT intra-op threads (0: library defaults)",
    )
    ap.add_argument(
        "--workload", default="", metavar="TEXT", help="run only workloads whose name has TEXT"
    )
    ap.add_argument(
        "--impl", action="append", default=[], metavar="TEXT",
        help="run only implementations whose name has TEXT (repeatable; the first kept is "
             "the max|dy| reference)",
    )
    args = ap.parse_args(argv)
    _set_threads(args.threads)

    workloads = [
        Workload("B=32 T=100 I=40 H=256 forward", 32, 100, 256, 1, False),
        Workload("B=1 T=100 I=40 H=128 forward", 1, 100, 128, 1, False),
        Workload("2x128 LSTM, 10-frame chunk, state carried (p50)", 1, CHUNK, 128, 2, True),
    ]
    workloads = [wl for wl in workloads if args.workload in wl.name]
    train_wl = TrainWorkload("training step B=32 T=100 I=40 H=128 (fwd+bwd+Adam)", 32, 100,
                             128, I_SIZE)
    impls = {
        "mlx.nn.LSTM": lambda wl: wl.mlx_nn(),
        "edgelstm pure MLX (fast=False)": lambda wl: wl.edgelstm(False),
        "edgelstm kernel (fast=True)": lambda wl: wl.edgelstm(True),
        "edgelstm.LSTM module (auto)": lambda wl: wl.edgelstm_stack(),
    }
    torch_version = None
    try:
        import torch

        torch_version = torch.__version__
        impls[f"torch.nn.LSTM {torch.__version__}"] = lambda wl: wl.torch()
    except ImportError:
        print("torch not importable: skipped", file=sys.stderr)
    try:
        import onnxruntime

        impls[f"onnxruntime {onnxruntime.__version__}"] = lambda wl: wl.ort()
    except ImportError:
        print("onnxruntime not importable: skipped", file=sys.stderr)
    if not kernels.available():
        print(f"fused kernels unavailable: {kernels.reason()}", file=sys.stderr)
        del impls["edgelstm kernel (fast=True)"]

    cases = [(wl, impls) for wl in workloads]
    if args.workload in train_wl.name:
        cases.append((train_wl, train_impls(kernels.available(), torch_version)))
    if args.impl:
        cases = [(wl, {n: m for n, m in makers.items() if any(t in n for t in args.impl)})
                 for wl, makers in cases]
        cases = [(wl, makers) for wl, makers in cases if makers]

    _print_env(args.threads)
    results = []
    for wl, makers in cases:
        out = _bench({name: make(wl) for name, make in makers.items()}, wl, args.repeat)
        ref = next(iter(out.values()))["y"]
        rows = [
            {
                "impl": n,
                "ms": o["ms"],
                "min_ms": o["min_ms"],
                "max_abs_diff": float(np.abs(o["y"] - ref).max()),
            }
            for n, o in out.items()
        ]
        base = next((r["ms"] for r in rows if "kernel" in r["impl"]), None)
        for r in rows:
            r["vs_kernel"] = r["ms"] / base if base else None
        _print_table(
            wl.name,
            [
                ("implementation", 34),
                ("median ms", 9),
                ("min ms", 8),
                ("x kernel", 8),
                ("max|dy|", 8),
            ],
            [
                [
                    r["impl"],
                    f"{r['ms']:.3f}",
                    f"{r['min_ms']:.3f}",
                    f"{r['vs_kernel']:.2f}" if base else "-",
                    f"{r['max_abs_diff']:.1e}",
                ]
                for r in rows
            ],
        )
        results.append({"workload": wl.name, "results": rows})
    _write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
