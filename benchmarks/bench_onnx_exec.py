"""One streaming step of a conv front end + LSTM ONNX graph: MLX executor vs ONNX Runtime.

The model is built here with ``onnx.helper`` (no PyTorch needed) in the shape a
PyTorch export of a small streaming audio model takes: features ``x (1, T, F)``
-> Transpose -> Conv1d(k=3) -> Relu -> Conv1d(k=3) -> Relu -> Transpose ->
LSTM (state inputs ``h``, ``c`` ``(1, 1, H)``; outputs ``hn``, ``cn``) ->
Shape/Gather/Concat/Reshape glue -> MatMul + Add -> Sigmoid -> ``y (1, T, 1)``.

One step is one call on a chunk of ``--chunk`` frames at batch 1 with the
state of the previous call fed back, as the streaming engine does. The
peers run interleaved in one process (one call of each per round, so load
changes hit all of them alike):

* ``mlx``: :class:`edgelstm.converters.onnx_exec.runner.OnnxMLXRunner` ``.run``
  (numpy in, numpy out);
* ``ort-1``: ONNX Runtime CPU provider, ``intra_op_num_threads=1``;
* ``ort-default``: ONNX Runtime with its default thread count.

Usage: ``python benchmarks/bench_onnx_exec.py [--chunk 10] [--rounds 2000] [--no-conv] [--json]``
(``--no-conv``: the same graph without the convolutions).
Prints p50/p90 per peer (µs) and the MLX / ORT ratios of the p50s.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner


def build_model(features: int = 40, channels: int = 64, hidden: int = 64,
                seed: int = 0, conv: bool = True) -> onnx.ModelProto:
    """The conv front end + LSTM graph described in the module docstring.

    ``conv=False`` drops the two convolutions (the LSTM reads the features).
    """
    rng = np.random.default_rng(seed)
    F, C, H = features, channels, hidden

    def w(*shape, scale=0.2):
        return rng.normal(0, scale, shape).astype(np.float32)

    inits = {
        "conv1.w": w(C, F, 3), "conv1.b": w(C), "conv2.w": w(C, C, 3), "conv2.b": w(C),
        "lstm.W": w(1, 4 * H, C if conv else F), "lstm.R": w(1, 4 * H, H), "lstm.B": w(1, 8 * H),
        "head.w": w(H, 1), "head.b": w(1),
        "idx0": np.array(0, np.int64), "idx1": np.array(1, np.int64),
        "minus1": np.array([-1], np.int64), "ax0": np.array([0], np.int64),
        "ax1": np.array([1], np.int64),
    }
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),  # (1, F, T)
        helper.make_node("Conv", ["xt", "conv1.w", "conv1.b"], ["c1"], kernel_shape=[3],
                         pads=[1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "conv2.w", "conv2.b"], ["c2"], kernel_shape=[3],
                         pads=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Transpose", ["r2"], ["seq"], perm=[2, 0, 1]),  # (T, 1, C)
        helper.make_node("LSTM", ["seq", "lstm.W", "lstm.R", "lstm.B", "", "h", "c"],
                         ["Y", "hn", "cn"], hidden_size=H),
        helper.make_node("Squeeze", ["Y", "ax1"], ["Ys"]),  # (T, 1, H)
        helper.make_node("Transpose", ["Ys"], ["Yb"], perm=[1, 0, 2]),  # (1, T, H)
        # exporter-style glue: reshape to (B*T, H) from the runtime shape
        helper.make_node("Shape", ["Yb"], ["shp"]),
        helper.make_node("Gather", ["shp", "idx0"], ["b"]),
        helper.make_node("Gather", ["shp", "idx1"], ["t"]),
        helper.make_node("Mul", ["b", "t"], ["bt"]),
        helper.make_node("Unsqueeze", ["bt", "ax0"], ["bt1"]),
        helper.make_node("Concat", ["bt1", "minus1"], ["flat_shape"], axis=0),
        helper.make_node("Reshape", ["Yb", "flat_shape"], ["Yf"]),
        helper.make_node("MatMul", ["Yf", "head.w"], ["logit0"]),
        helper.make_node("Add", ["logit0", "head.b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["p"]),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Unsqueeze", ["t", "ax0"], ["t1"]),
        helper.make_node("Concat", ["b1", "t1", "minus1"], ["out_shape"], axis=0),
        helper.make_node("Reshape", ["p", "out_shape"], ["y"]),
    ]
    if not conv:
        nodes = [helper.make_node("Transpose", ["x"], ["seq"], perm=[1, 0, 2]), *nodes[6:]]
        for k in ("conv1.w", "conv1.b", "conv2.w", "conv2.b"):
            del inits[k]
    graph = helper.make_graph(
        nodes, "conv_lstm_stream",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "T", F]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 1, H]),
         helper.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1, H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "T", 1]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [1, 1, H]),
         helper.make_tensor_value_info("cn", TensorProto.FLOAT, [1, 1, H])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ort(model: onnx.ModelProto, threads: int | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return lambda feeds: dict(zip(["y", "hn", "cn"], sess.run(["y", "hn", "cn"], feeds),
                                  strict=True))


def run(chunk: int = 10, rounds: int = 2000, warmup: int = 50, features: int = 40,
        hidden: int = 64, conv: bool = True) -> dict:
    """Time the peers interleaved; returns ``{peer: {"p50_us", "p90_us"}, "ratios": ...}``."""
    model = build_model(features=features, hidden=hidden, conv=conv)
    mlx_runner = OnnxMLXRunner(model)
    peers = {"mlx": mlx_runner.run, "ort-1": _ort(model, 1), "ort-default": _ort(model, None)}
    rng = np.random.default_rng(1)
    frames = rng.standard_normal((rounds + warmup, 1, chunk, features)).astype(np.float32)
    zero = np.zeros((1, 1, hidden), np.float32)
    state = {k: (zero, zero) for k in peers}
    times: dict[str, list[float]] = {k: [] for k in peers}
    for i in range(rounds + warmup):
        for name, fn in peers.items():
            h, c = state[name]
            t0 = time.perf_counter()
            out = fn({"x": frames[i], "h": h, "c": c})
            dt = time.perf_counter() - t0
            state[name] = (out["hn"], out["cn"])
            if i >= warmup:
                times[name].append(dt * 1e6)
    # the peers carried their own state through the same frames: they must agree
    for name in peers:
        np.testing.assert_allclose(state[name][0], state["ort-1"][0], atol=1e-3, err_msg=name)
    result: dict = {}
    for name, ts in times.items():
        result[name] = {"p50_us": float(np.percentile(ts, 50)),
                        "p90_us": float(np.percentile(ts, 90))}
    result["ratios"] = {
        f"mlx/{k}": {q: result["mlx"][q] / result[k][q] for q in ("p50_us", "p90_us")}
        for k in ("ort-1", "ort-default")
    }
    result["config"] = {"chunk": chunk, "rounds": rounds, "features": features,
                        "hidden": hidden, "batch": 1, "conv": conv}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--no-conv", action="store_true", help="LSTM and head only")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    res = run(chunk=args.chunk, rounds=args.rounds, conv=not args.no_conv)
    if args.json:
        print(json.dumps(res, indent=2))  # noqa: T201
        return
    cfg = res["config"]
    front = "conv front end + " if cfg["conv"] else ""
    print(f"streaming step ({front}LSTM): batch 1, chunk {cfg['chunk']} frames, "  # noqa: T201
          f"F={cfg['features']}, H={cfg['hidden']}, {cfg['rounds']} interleaved rounds")
    for name in ("mlx", "ort-1", "ort-default"):
        r = res[name]
        print(f"  {name:12} p50 {r['p50_us']:8.1f} us   p90 {r['p90_us']:8.1f} us")  # noqa: T201
    for k, r in res["ratios"].items():
        print(f"  {k:16} p50 x{r['p50_us']:.2f}   p90 x{r['p90_us']:.2f}")  # noqa: T201


if __name__ == "__main__":
    main()
