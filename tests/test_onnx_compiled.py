"""The MLX executor's repeated-call path: compiled segments, dead nodes, fused recurrences,
and chunked == full streaming bit for bit.

Oracles: the same runner op by op (``compile_after=None``), ONNX Runtime, and
ONNX's own node test cases run through the compiled plan.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm.converters.onnx_exec.node_suite import collect_cases, run_case
from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner
from edgelstm.fast import dispatch

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs,
                          [numpy_helper.from_array(v, k) for k, v in dict(inits).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name, shape=None, t=TP.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _ort(model, feeds):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in s.get_outputs()], s.run(None, feeds), strict=True))


def conv_rnn(op="LSTM", I=6, C=8, H=5, seed=0):
    """x (B, T, I) -> Conv1d(k=1) -> Relu -> ``op`` with state I/O -> Gemm head -> y (B, T, 2)."""
    rng = np.random.default_rng(seed)
    g = GATES[op]
    inits = {
        "cw": rng.normal(0, 0.5, (C, I, 1)).astype(np.float32),
        "cb": rng.normal(0, 0.5, C).astype(np.float32),
        "W": rng.normal(0, 0.5, (1, g * H, C)).astype(np.float32),
        "R": rng.normal(0, 0.5, (1, g * H, H)).astype(np.float32),
        "B": rng.normal(0, 0.5, (1, 2 * g * H)).astype(np.float32),
        "hw": rng.normal(0, 0.5, (H, 2)).astype(np.float32),
        "hb": rng.normal(0, 0.5, 2).astype(np.float32),
        "ax": np.array([1], np.int64),
    }
    states = ["h", "c"] if op == "LSTM" else ["h"]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("Conv", ["xt", "cw", "cb"], ["cv"]),
        helper.make_node("Relu", ["cv"], ["r"]),
        helper.make_node("Transpose", ["r"], ["seq"], perm=[2, 0, 1]),  # (T, B, C)
        helper.make_node(op, ["seq", "W", "R", "B", "", *states], ["Y", *[s + "n" for s in states]],
                         hidden_size=H),
        helper.make_node("Squeeze", ["Y", "ax"], ["Ys"]),  # (T, B, H)
        helper.make_node("Transpose", ["Ys"], ["Yb"], perm=[1, 0, 2]),
        helper.make_node("MatMul", ["Yb", "hw"], ["z"]),
        helper.make_node("Add", ["z", "hb"], ["y"]),
        helper.make_node("Neg", ["z"], ["unused"]),  # reaches no output: dropped
    ]
    inputs = [_vi("x", ["B", "T", I])] + [_vi(s, [1, "B", H]) for s in states]
    outputs = [_vi("y", ["B", "T", 2])] + [_vi(s + "n", [1, "B", H]) for s in states]
    return _model(nodes, inputs, outputs, inits), states, H


def _stream(runner, x, states, H, chunk):
    B = x.shape[0]
    st = {s: np.zeros((1, B, H), np.float32) for s in states}
    ys = []
    for i in range(0, x.shape[1], chunk):
        out = runner.run({"x": x[:, i:i + chunk], **st})
        st = {s: out[s + "n"] for s in states}
        ys.append(out["y"])
    return np.concatenate(ys, axis=1), st


@pytest.mark.parametrize("op", sorted(GATES))
@pytest.mark.parametrize("B", [1, 2, 3])
@pytest.mark.parametrize("clip", [None, 0.5])  # fused kernels / pure-MLX path (no clip fused)
def test_chunked_streaming_equals_the_full_pass_bit_for_bit(op, B, clip):
    model, states, H = conv_rnn(op)
    if clip is not None:
        next(n for n in model.graph.node if n.op_type == op).attribute.append(
            helper.make_attribute("clip", clip))
    x = np.random.default_rng(B).standard_normal((B, 29, 6)).astype(np.float32)
    full, st_full = _stream(OnnxMLXRunner(model), x, states, H, 29)
    want = _ort(model, {"x": x, **{s: np.zeros((1, B, H), np.float32) for s in states}})
    np.testing.assert_allclose(full, want["y"], rtol=1e-5, atol=1e-5)
    for chunk in (1, 2, 3, 5, 7, 8, 13):
        runner = OnnxMLXRunner(model)  # first call of each shape op by op, then compiled
        got, st = _stream(runner, x, states, H, chunk)
        np.testing.assert_array_equal(got, full, err_msg=f"chunk {chunk}")
        for s in states:
            np.testing.assert_array_equal(st[s], st_full[s])
        assert runner._compiled.num_compiled >= 1


def _rnn_graph(op, T, B, direction, layout, with_lens, seed=0):
    rng = np.random.default_rng(seed)
    I, H, g = 3, 4, GATES[op]
    dirs = 2 if direction == "bidirectional" else 1
    inits = {"W": rng.normal(0, 0.6, (dirs, g * H, I)).astype(np.float32),
             "R": rng.normal(0, 0.6, (dirs, g * H, H)).astype(np.float32),
             "B": rng.normal(0, 0.6, (dirs, 2 * g * H)).astype(np.float32)}
    xs = (B, T, I) if layout else (T, B, I)
    ins = ["x", "W", "R", "B", "lens" if with_lens else ""]
    outs = ["Y", "Yh"] + (["Yc"] if op == "LSTM" else [])
    node = helper.make_node(op, ins, outs, hidden_size=H, direction=direction, layout=layout)
    inputs = [_vi("x", list(xs))] + ([_vi("lens", [B], TP.INT32)] if with_lens else [])
    model = _model([node], inputs, [_vi(o) for o in outs], inits)
    feeds = {"x": rng.standard_normal(xs).astype(np.float32)}
    if with_lens:
        feeds["lens"] = rng.integers(0, T + 1, B).astype(np.int32)
    return model, feeds


@pytest.mark.parametrize("op", sorted(GATES))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize(("T", "B"), [(1, 1), (3, 2), (7, 1), (2, 3)])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("with_lens", [False, True])
def test_short_calls_match_ort(op, direction, T, B, layout, with_lens):
    """Calls of < 8 rows (the kernels' small-matrix paths): outputs as ONNX Runtime's."""
    model, feeds = _rnn_graph(op, T, B, direction, layout, with_lens)
    runner = OnnxMLXRunner(model)
    if layout == 0:
        want = _ort(model, feeds)
    else:  # ONNX Runtime has no layout=1: its layout-0 twin on transposed data
        twin, _ = _rnn_graph(op, T, B, direction, 0, with_lens)
        want = _ort(twin, {**feeds, "x": feeds["x"].transpose(1, 0, 2)})
        want = {k: v.transpose(2, 0, 1, 3) if k == "Y" else v.transpose(1, 0, 2)
                for k, v in want.items()}
    for _ in range(2):  # op by op, then compiled
        got = runner.run(feeds)
        for k, w in want.items():
            np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("op", sorted(GATES))
@pytest.mark.parametrize("B", [1, 3])
def test_wide_long_input_streams_bit_for_bit(op, B):
    """600 features (BLAS would split the projection's K) over 2 x 300 rows (past the
    kernels' short-input bound): the full pass and any chunking still round alike."""
    rng = np.random.default_rng(B)
    I, H, T, g = 600, 16, 300, GATES[op]
    states = ["h", "c"] if op == "LSTM" else ["h"]
    inits = {n: rng.normal(0, 0.1, a).astype(np.float32)
             for n, a in (("W", (1, g * H, I)), ("R", (1, g * H, H)), ("B", (1, 2 * g * H)))}
    node = helper.make_node(op, ["x", "W", "R", "B", "", *states],
                            ["Y", *[s + "n" for s in states]], hidden_size=H, layout=1)
    model = _model([node], [_vi("x", ["B", "T", I])] + [_vi(s, ["B", 1, H]) for s in states],
                   [_vi("Y")] + [_vi(s + "n") for s in states], inits)
    x = rng.standard_normal((B, T, I)).astype(np.float32)

    def stream(chunk):
        runner, st, ys = OnnxMLXRunner(model), {s: np.zeros((B, 1, H), np.float32)
                                                for s in states}, []
        for i in range(0, T, chunk):
            out = runner.run({"x": x[:, i:i + chunk], **st})
            st = {s: out[s + "n"] for s in states}
            ys.append(out["Y"])
        return np.concatenate(ys, axis=1), st

    full, st_full = stream(T)
    for chunk in (1, 7, 10):
        got, st = stream(chunk)
        np.testing.assert_array_equal(got, full, err_msg=f"chunk {chunk}")
        for s in states:
            np.testing.assert_array_equal(st[s], st_full[s])


@pytest.mark.parametrize("op", sorted(GATES))
def test_recurrent_nodes_run_on_the_fused_kernels(monkeypatch, op):
    if not dispatch.available():
        pytest.skip(f"fused kernels unavailable: {dispatch.reason()}")
    calls = []
    real = getattr(dispatch, op.lower())

    def spy(*args, **kw):
        calls.append(args[0].shape)
        return real(*args, **kw)

    monkeypatch.setattr(dispatch, op.lower(), spy)  # a spy: the real kernel still runs
    model, states, H = conv_rnn(op)
    x = np.random.default_rng(0).standard_normal((1, 10, 6)).astype(np.float32)
    runner = OnnxMLXRunner(model)
    feeds = {"x": x, **{s: np.zeros((1, 1, H), np.float32) for s in states}}
    first = runner.run(feeds)
    assert [c[1:] for c in calls] == [(10, 8)]  # (B, T, C) into the kernel
    runner.run(feeds)  # the trace of the compiled plan goes through it too
    assert len(calls) == 2
    np.testing.assert_array_equal(runner.run(feeds)["y"], first["y"])


def test_static_graph_is_one_compiled_segment_and_dead_nodes_are_dropped():
    model, states, H = conv_rnn("GRU")
    runner = OnnxMLXRunner(model)
    assert "Neg" not in [ctx.node.op_type for ctx, _ in runner._graph.plan]
    assert [s.eager for s in runner._compiled.segments] == [False]
    eager = OnnxMLXRunner(model, compile_after=None)
    rng = np.random.default_rng(5)
    for T in (4, 4, 4, 9, 9, 4):
        feeds = {"x": rng.standard_normal((2, T, 6)).astype(np.float32),
                 "h": rng.standard_normal((1, 2, H)).astype(np.float32)}
        got, want = runner.run(feeds), eager.run(feeds)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert runner._compiled.num_compiled == 2  # one per shape seen twice


def test_host_reads_of_data_split_the_plan():
    """NonZero's output shape is data: that node runs op by op, the rest compiled."""
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["sq"]),
        helper.make_node("NonZero", ["sq"], ["nz"]),
        helper.make_node("Cast", ["nz"], ["nzf"], to=TP.FLOAT),
        helper.make_node("ReduceSum", ["nzf"], ["s"], keepdims=0),
        helper.make_node("Add", ["s", "x"], ["y"]),
    ]
    model = _model(nodes, [_vi("x", [5])], [_vi("y")])
    runner = OnnxMLXRunner(model)
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = np.where(rng.random(5) < 0.5, 0, rng.standard_normal(5)).astype(np.float32)
        np.testing.assert_allclose(runner.run({"x": x})["y"], _ort(model, {"x": x})["y"],
                                   rtol=1e-6)
    segs = runner._compiled.segments
    assert [s.eager for s in segs] == [False, True, False]
    assert segs[1].nodes[0][0].node.op_type == "NonZero"


# ops real exporters emit for recurrent and audio models
COMPILED_OPS = {"Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Conv",
                "ConvTranspose", "CumSum", "Gather", "Gemm", "GRU", "LayerNormalization",
                "LeakyRelu", "LSTM", "MatMul", "MaxPool", "Mul", "Pad", "ReduceMean", "Relu",
                "Reshape", "Resize", "RNN", "Sigmoid", "Slice", "Softmax", "Split", "Squeeze",
                "Tanh", "Transpose", "Unsqueeze", "Where"}


def test_node_cases_pass_through_the_compiled_plan():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = [run_case(c, op, compile_after=0) for c, op in collect_cases()
                   if op in COMPILED_OPS]
    bad = [f"{r.status} {r.name}: {r.detail}" for r in results if r.status in ("wrong", "crash")]
    assert not bad, "\n".join(bad)
    assert sum(r.status == "pass" for r in results) >= 300


def test_overridable_initializers_compile_as_defaults_and_can_be_overridden():
    """A graph input with an initializer (old exporters' weights) keeps working compiled."""
    model, feeds = _rnn_graph("GRU", 6, 2, "forward", 0, False)
    model.graph.input.append(_vi("W", [1, 12, 3]))  # W becomes an overridable input
    runner = OnnxMLXRunner(model)
    assert runner.optional_input_names == ["W"]
    want = _ort(model, feeds)
    W2 = np.random.default_rng(9).normal(0, 0.6, (1, 12, 3)).astype(np.float32)
    want2 = _ort(model, {**feeds, "W": W2})
    for _ in range(3):
        got = runner.run(feeds)
        np.testing.assert_allclose(got["Y"], want["Y"], rtol=1e-5, atol=1e-5)
        got2 = runner.run({**feeds, "W": W2})
        np.testing.assert_allclose(got2["Y"], want2["Y"], rtol=1e-5, atol=1e-5)


def test_signature_cache_is_bounded(monkeypatch):
    from edgelstm.converters.onnx_exec import compiled

    monkeypatch.setattr(compiled, "MAX_SIGNATURES", 3)
    model, states, H = conv_rnn("RNN")
    runner = OnnxMLXRunner(model)
    eager = OnnxMLXRunner(model, compile_after=None)
    rng = np.random.default_rng(0)
    for T in (2, 2, 3, 3, 4, 4, 5, 5, 2, 2):
        feeds = {"x": rng.standard_normal((1, T, 6)).astype(np.float32),
                 "h": np.zeros((1, 1, H), np.float32)}
        np.testing.assert_array_equal(runner.run(feeds)["y"], eager.run(feeds)["y"])
    (seg,) = runner._compiled.segments
    assert len(seg.cache) == 3


def _scan_rnn_cell(H=6, I=3, seed=0):
    """A tanh RNN cell written out (MatMul/Add/Tanh) in a Scan body, weights outer-scope."""
    rng = np.random.default_rng(seed)
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "Wx"], ["a"]),
         helper.make_node("MatMul", ["h_in", "Wh"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["s"]),
         helper.make_node("Add", ["s", "bias"], ["s2"]),
         helper.make_node("Tanh", ["s2"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["y_t"])],
        "body", [_vi("h_in", [1, H]), _vi("x_t", [1, I])], [_vi("h_out", [1, H]), _vi("y_t", [1, H])])
    scan = helper.make_node("Scan", ["h0", "x"], ["hn", "y"], body=body, num_scan_inputs=1)
    inits = {"Wx": rng.normal(0, 0.5, (I, H)).astype(np.float32),
             "Wh": rng.normal(0, 0.5, (H, H)).astype(np.float32),
             "bias": rng.normal(0, 0.5, H).astype(np.float32)}
    return _model([scan], [_vi("h0", [1, H]), _vi("x", ["T", 1, I])], [_vi("hn"), _vi("y")], inits)


def test_scan_is_traced_with_its_body_unrolled():
    model = _scan_rnn_cell()
    runner = OnnxMLXRunner(model)
    rng = np.random.default_rng(1)
    for T in (5, 5, 5, 3, 3):
        feeds = {"h0": rng.standard_normal((1, 6)).astype(np.float32),
                 "x": rng.standard_normal((T, 1, 3)).astype(np.float32)}
        got, want = runner.run(feeds), _ort(model, feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert [s.eager for s in runner._compiled.segments] == [False]
    assert runner._compiled.num_compiled == 2  # T = 5 and T = 3, each one function


def test_loop_body_is_compiled_once_and_reused_every_iteration():
    """Loop reads its condition on the host: it stays eager, its body is compiled."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=TP.FLOAT),
         helper.make_node("Mul", ["s_in", "two"], ["s2"]),
         helper.make_node("Add", ["s2", "fi"], ["s_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Tanh", ["s_out"], ["scan_out"])],
        "body", [_vi("i", [], TP.INT64), _vi("cond", [], TP.BOOL), _vi("s_in", [3])],
        [_vi("cond_out", [], TP.BOOL), _vi("s_out", [3]), _vi("scan_out", [3])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    loop = helper.make_node("Loop", ["M", "", "s0"], ["s", "ys"], body=body)
    model = _model([loop], [_vi("M", [], TP.INT64), _vi("s0", [3])], [_vi("s"), _vi("ys")])
    runner = OnnxMLXRunner(model)
    for m in (4, 4, 6):
        feeds = {"M": np.array(m, np.int64), "s0": np.array([0.1, -0.2, 0.3], np.float32)}
        got, want = runner.run(feeds), _ort(model, feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
    assert runner._compiled.eager_nodes == {0}
    assert runner._graph.plan[0][0].graphs["body"].compiled.num_compiled == 1


@pytest.mark.parametrize("dims", [[2, 3], ["N", 3]])
def test_shapes_static_at_load_are_folded_and_feeds_held_to_them(dims):
    """Shape of a tensor whose dims inference proves static becomes a constant at load."""
    from edgelstm.errors import DataError

    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Shape", ["r"], ["s"]),
             helper.make_node("Cast", ["s"], ["sf"], to=TP.FLOAT),
             helper.make_node("ReduceSum", ["sf"], ["n"], keepdims=0),
             helper.make_node("Add", ["r", "n"], ["y"])]
    model = _model(nodes, [_vi("x", dims)], [_vi("y")])
    runner = OnnxMLXRunner(model)
    static = isinstance(dims[0], int)
    assert ("Shape" in [c.node.op_type for c, _ in runner._graph.plan]) != static
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for _ in range(2):
        np.testing.assert_allclose(runner.run({"x": x})["y"], _ort(model, {"x": x})["y"])
    x4 = np.ones((4, 3), np.float32)
    if static:
        with pytest.raises(DataError, match=r"input 'x' must have shape \(2, 3\), got \(4, 3\)"):
            runner.run({"x": x4})
    else:
        np.testing.assert_allclose(runner.run({"x": x4})["y"], 1 + 7)


def test_static_weights_are_copied_into_mlx_once():
    """Initializers are frozen; each has one MLX twin shared by every call and trace."""
    from edgelstm.converters.onnx_exec.ops import to_mx

    w = np.random.default_rng(0).standard_normal((32, 16)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_vi("x", ["N", 32])],
                   [_vi("y")], {"w": w})
    runner = OnnxMLXRunner(model)
    const = runner._graph.consts["w"]
    assert not const.flags.writeable
    assert to_mx(const) is to_mx(const)
    assert to_mx(w) is not to_mx(w)  # a writeable array is copied every time
    for n in (1, 1, 4, 4):
        x = np.ones((n, 32), np.float32)
        np.testing.assert_allclose(runner.run({"x": x})["y"], x @ w, rtol=1e-5)


def test_for_loop_over_time_is_traced_whole():
    """tf2onnx's shape: trip count = Shape(x)[0], condition passed through, x[i] gathered."""
    H, I = 4, 3
    rng = np.random.default_rng(3)
    body = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["x_t"]),  # outer-scope x, (1, I)
         helper.make_node("MatMul", ["x_t", "Wx"], ["a"]),
         helper.make_node("MatMul", ["h_in", "Wh"], ["b"]),
         helper.make_node("Add", ["a", "b"], ["s"]),
         helper.make_node("Tanh", ["s"], ["h_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Identity", ["h_out"], ["y_t"])],
        "body", [_vi("i", [], TP.INT64), _vi("cond", [], TP.BOOL), _vi("h_in", [1, H])],
        [_vi("cond_out", [], TP.BOOL), _vi("h_out", [1, H]), _vi("y_t", [1, H])])
    nodes = [helper.make_node("Shape", ["x"], ["shp"]),
             helper.make_node("Gather", ["shp", "zero"], ["T"]),
             helper.make_node("Loop", ["T", "true", "h0"], ["hn", "ys"], body=body)]
    inits = {"zero": np.array(0, np.int64), "true": np.array(True),
             "Wx": rng.normal(0, 0.5, (I, H)).astype(np.float32),
             "Wh": rng.normal(0, 0.5, (H, H)).astype(np.float32)}
    model = _model(nodes, [_vi("x", ["T", 1, I]), _vi("h0", [1, H])], [_vi("hn"), _vi("ys")],
                   inits)
    runner = OnnxMLXRunner(model)
    for T in (6, 6, 6):
        feeds = {"x": rng.standard_normal((T, 1, I)).astype(np.float32),
                 "h0": rng.standard_normal((1, H)).astype(np.float32)}
        got, want = runner.run(feeds), _ort(model, feeds)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert runner._compiled.eager_nodes == set()
    assert runner._compiled.num_compiled == 1
