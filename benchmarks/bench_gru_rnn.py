"""GRU and RNN forward passes: edgelstm's kernels against ONNX Runtime and PyTorch.

Same process, same weights, rounds interleaved (each round times every runner once,
in turn), medians reported. Runners:

* ``edgelstm``: the fused kernel (``R.gru`` / ``R.rnn`` with ``fast=True``): the
  step multiplies by a packed ``Wh`` (``gemm_packed``);
* ``edgelstm sgemm step``: the same kernel with ``EDGELSTM_FUSED=0``, one sgemm
  call per step (how GRU/RNN ran before the packed step);
* ``edgelstm int8``: the kernel fed int8 ``Wx``/``Wh`` with per-row scales (what
  ``edgelstm quantize`` stores), checked against its own float expansion;
* ``onnxruntime``: one ONNX ``GRU`` (``linear_before_reset`` as the row says) or
  ``RNN`` node;
* ``torch``: ``torch.nn.GRU`` (PyTorch's form, ``linear_before_reset=1`` only) or
  ``torch.nn.RNN``, when PyTorch is installed.

Every runner's output is checked against edgelstm's before timing.

Usage: ``.venv/bin/python benchmarks/bench_gru_rnn.py [--threads 1] [--repeat 21]``
(``--threads 0``: each library's default). ``--no-spin`` stops ONNX Runtime's and
PyTorch's thread pools from spinning between calls (``allow_spinning=0``,
``OMP_WAIT_POLICY=PASSIVE``): interleaved on a 2-core machine, a pool left spinning
holds a core through the next runner's call. ``--scaling`` times edgelstm alone at one
thread against its default count instead (the two settings interleaved).
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
from edgelstm.nn import activations as A
from edgelstm.nn import recurrent as R
from edgelstm.quantize.mlx_quant import dequantize_rows, quantize_rows

I_SIZE, T = 40, 100
CASES = [(cell, H, B) for cell in ("gru-onnx", "gru-torch", "rnn")
         for H in (128, 512) for B in (1, 8, 32)]


def _weights(cell: str, H: int) -> dict:
    rng = np.random.default_rng(0)
    G = (3 if cell.startswith("gru") else 1) * H
    s = 1 / np.sqrt(H)
    return {"Wx": rng.uniform(-s, s, (G, I_SIZE)).astype(np.float32),
            "Wh": rng.uniform(-s, s, (G, H)).astype(np.float32),
            "b": rng.uniform(-s, s, (G,)).astype(np.float32),
            "bhn": rng.uniform(-s, s, (H,)).astype(np.float32)}


def _edgelstm(cell: str, w: dict, x: mx.array):
    m = {k: mx.array(v) for k, v in w.items()}

    def run():
        if cell == "rnn":
            y, _ = R.rnn(x, m["Wx"], m["Wh"], m["b"], fast=True)
        else:
            y, _ = R.gru(x, m["Wx"], m["Wh"], m["b"], m["bhn"], fast=True,
                         linear_before_reset=cell == "gru-torch")
        mx.eval(y)
        return np.array(y)

    return run


def _int8(cell: str, w: dict, x: mx.array):
    """The kernel on int8 weights; also returns the float run of their expansion."""
    (qx, sx), (qh, sh) = (quantize_rows(mx.array(w[k])) for k in ("Wx", "Wh"))
    mx.eval(qx, sx, qh, sh)
    expanded = {**w, "Wx": np.array(dequantize_rows(qx, sx)),
                "Wh": np.array(dequantize_rows(qh, sh))}
    b, bhn = mx.array(w["b"]), mx.array(w["bhn"])

    def run():
        if cell == "rnn":
            y, _ = kernels.rnn(x, qx, qh, b, None, None, False, (A.spec("tanh"),),
                               Wx_scales=sx, Wh_scales=sh)
        else:
            y, _ = kernels.gru(x, qx, qh, b, bhn, None, None, False, cell == "gru-torch",
                               Wx_scales=sx, Wh_scales=sh)
        mx.eval(y)
        return np.array(y)

    return run, _edgelstm(cell, expanded, x)


def _sgemm_step(run):
    def timed():
        os.environ["EDGELSTM_FUSED"] = "0"  # read per call by the kernels
        try:
            return run()
        finally:
            del os.environ["EDGELSTM_FUSED"]

    return timed


def _onnxruntime(cell: str, w: dict, x_np: np.ndarray, threads: int, spin: bool = True):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    H = w["Wh"].shape[1]
    if cell == "rnn":
        W, Rw = w["Wx"], w["Wh"]
        bias = np.concatenate([w["b"], np.zeros(H, np.float32)])
        attrs = {}
    else:  # edgelstm r, z, n -> ONNX z, r, h; b holds r, z's summed biases and n's input one
        def zrh(a):
            r, z, n = np.split(a, 3, axis=0)
            return np.concatenate([z, r, n], axis=0)

        W, Rw = zrh(w["Wx"]), zrh(w["Wh"])
        bias = np.concatenate([zrh(w["b"]), np.zeros(2 * H, np.float32), w["bhn"]])
        attrs = {"linear_before_reset": int(cell == "gru-torch")}
    B = x_np.shape[0]
    inits = [numpy_helper.from_array(a[None], n) for a, n in ((W, "W"), (Rw, "R"), (bias, "B"))]
    # time-major (layout 0): ONNX Runtime's CPU GRU refuses batch-first
    node = helper.make_node("RNN" if cell == "rnn" else "GRU", ["x", "W", "R", "B"], ["y"],
                            hidden_size=H, **attrs)
    graph = helper.make_graph(
        [node], cell, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, B, I_SIZE])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, 1, B, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)], ir_version=8)
    opts = ort.SessionOptions()
    if threads > 0:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    x_tm = np.ascontiguousarray(x_np.transpose(1, 0, 2))  # its input layout, made once
    return lambda: sess.run(None, {"x": x_tm})[0]


def _torch(cell: str, w: dict, x_np: np.ndarray):
    try:
        import torch
    except ImportError:
        return None
    if cell == "gru-onnx":
        return None  # PyTorch has the linear_before_reset=1 form only
    H = w["Wh"].shape[1]
    if cell == "rnn":
        net = torch.nn.RNN(I_SIZE, H, batch_first=True)
        biases = (w["b"], np.zeros(H, np.float32))
    else:
        net = torch.nn.GRU(I_SIZE, H, batch_first=True)
        b = w["b"].copy()
        bh = np.concatenate([np.zeros(2 * H, np.float32), w["bhn"]])
        biases = (b, bh)
    with torch.no_grad():
        net.weight_ih_l0.copy_(torch.from_numpy(w["Wx"]))
        net.weight_hh_l0.copy_(torch.from_numpy(w["Wh"]))
        net.bias_ih_l0.copy_(torch.from_numpy(biases[0]))
        net.bias_hh_l0.copy_(torch.from_numpy(biases[1]))
    x = torch.from_numpy(x_np)

    def run():
        with torch.inference_mode():
            return net(x)[0].numpy()

    return run


def scaling(repeat: int) -> None:
    """edgelstm's fp32 kernel at one step thread against the default count, interleaved."""
    print(f"T={T} I={I_SIZE}, edgelstm alone; kernels: {kernels.reason()}")
    print("| cell | H | B | one thread | default threads | gain |")
    print("|---|---:|---:|---:|---:|---:|")
    for cell, H, B in CASES:
        x = mx.array(np.random.default_rng(1).normal(0, 1, (B, T, I_SIZE)).astype(np.float32))
        run = _edgelstm(cell, _weights(cell, H), x)
        times = {1: [], 0: []}
        run()
        for _ in range(repeat):
            for n in times:
                kernels.set_recurrent_threads(n)
                t0 = time.perf_counter()
                run()
                times[n].append(time.perf_counter() - t0)
        kernels.set_recurrent_threads(0)
        one, default = (statistics.median(times[n]) * 1e3 for n in (1, 0))
        print(f"| {cell} | {H} | {B} | {one:.3f} | {default:.3f} | {one / default:.2f}x |",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="0: each library's default")
    ap.add_argument("--repeat", type=int, default=21, help="interleaved timed rounds")
    ap.add_argument("--no-spin", action="store_true",
                    help="ONNX Runtime and PyTorch thread pools sleep between calls")
    ap.add_argument("--scaling", action="store_true",
                    help="edgelstm alone: one step thread against the default count")
    args = ap.parse_args(argv)
    if args.scaling:
        scaling(args.repeat)
        return 0
    if args.no_spin:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # read when torch loads its OpenMP
    if args.threads > 0:
        kernels.set_blas_threads(args.threads)
        try:
            import torch

            torch.set_num_threads(args.threads)
        except ImportError:
            pass
    print(f"T={T} I={I_SIZE}, threads {args.threads or 'default'}"
          f"{', pools not spinning' if args.no_spin else ''}; kernels: {kernels.reason()}")
    print("| cell | H | B | edgelstm | edgelstm sgemm step | edgelstm int8 | onnxruntime "
          "| torch | vs sgemm step | int8 vs fp32 | vs ORT | vs PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cell, H, B in CASES:
        w = _weights(cell, H)
        x_np = np.random.default_rng(1).normal(0, 1, (B, T, I_SIZE)).astype(np.float32)
        ours = _edgelstm(cell, w, mx.array(x_np))
        int8, int8_float = _int8(cell, w, mx.array(x_np))
        np.testing.assert_allclose(int8(), int8_float(), rtol=1e-4, atol=1e-5)
        runners = {"edgelstm": ours, "sgemm": _sgemm_step(ours), "int8": int8,
                   "ort": _onnxruntime(cell, w, x_np, args.threads, spin=not args.no_spin),
                   "torch": _torch(cell, w, x_np)}
        runners = {k: v for k, v in runners.items() if v is not None}
        want = ours()
        for name, run in runners.items():  # same weights, same answer, before timing
            got = run()
            if name == "ort":  # (T, 1, B, H) -> (B, T, H)
                got = got[:, 0].transpose(1, 0, 2)
            if name != "int8":  # checked against its own expansion above
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)
            run()
        times = {k: [] for k in runners}
        for _ in range(args.repeat):
            for name, run in runners.items():
                t0 = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t0)
        ms = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        cols = [f"{ms[k]:.3f}" if k in ms else "-"
                for k in ("edgelstm", "sgemm", "int8", "ort", "torch")]
        ratios = [ms["sgemm"] / ms["edgelstm"], ms["edgelstm"] / ms["int8"]]
        ratios += [ms[k] / ms["edgelstm"] if k in ms else None for k in ("ort", "torch")]
        cols += [f"{r:.2f}x" if r is not None else "-" for r in ratios]
        print(f"| {cell} | {H} | {B} | " + " | ".join(cols) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
