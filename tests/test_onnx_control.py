"""If/Loop/Scan with nested subgraphs and outer-scope names, against onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner, run_onnx
from edgelstm.errors import ConversionError, EdgeLSTMError, UnsupportedError


def _vi(name, t=TP.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, t, shape)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _check(model, feeds):
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)
    got = run_onnx(model, feeds)
    for out, w in zip(model.graph.output, want, strict=True):
        assert got[out.name].dtype == w.dtype
        np.testing.assert_allclose(got[out.name], w, rtol=1e-5, atol=1e-6)


def _loop_with_nested_if():
    """Loop over M steps: acc += x * scale (outer) if i is even else acc -= bias (outer)."""
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["t0"]),
         helper.make_node("Add", ["acc_in", "t0"], ["then_out"])],
        "then", [], [_vi("then_out")])
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["acc_in", "bias"], ["else_out"])],
        "else", [], [_vi("else_out")])
    body = helper.make_graph(
        [
            helper.make_node("Mod", ["i", "two"], ["r"]),
            helper.make_node("Equal", ["r", "zero"], ["even"]),
            helper.make_node("If", ["even"], ["acc_out"], then_branch=then_g, else_branch=else_g),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("ReduceSum", ["acc_out"], ["step_sum"], keepdims=0),
        ],
        "body",
        [_vi("i", TP.INT64, []), _vi("cond_in", TP.BOOL, []), _vi("acc_in", TP.FLOAT, [3])],
        [_vi("cond_out", TP.BOOL, []), _vi("acc_out", TP.FLOAT, [3]), _vi("step_sum")],
    )
    inits = [
        numpy_helper.from_array(np.array(2, np.int64), "two"),
        numpy_helper.from_array(np.array(0, np.int64), "zero"),
        numpy_helper.from_array(np.array([0.5, 1.0, 2.0], np.float32), "bias"),
        numpy_helper.from_array(np.array(True), "cond"),
    ]
    nodes = [
        helper.make_node("Mul", ["s", "s"], ["scale"]),  # outer value computed at run time
        helper.make_node("Loop", ["M", "cond", "acc0"], ["acc", "sums"], body=body),
    ]
    inputs = [_vi("M", TP.INT64, []), _vi("s", TP.FLOAT, []), _vi("x", TP.FLOAT, [3]),
              _vi("acc0", TP.FLOAT, [3])]
    return _model(nodes, inputs, [_vi("acc"), _vi("sums")], inits)


def test_loop_with_nested_if_and_outer_scope():
    model = _loop_with_nested_if()
    rng = np.random.default_rng(0)
    for m in (1, 4, 5):
        feeds = {"M": np.array(m, np.int64), "s": np.array(1.5, np.float32),
                 "x": rng.normal(size=3).astype(np.float32),
                 "acc0": rng.normal(size=3).astype(np.float32)}
        _check(model, feeds)


def test_scan_cumulative_with_outer_weight():
    """Scan over time: h = tanh(h @ W + x_t), W from the outer graph; both scan directions."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "W"], ["hw"]),
         helper.make_node("Add", ["hw", "x_t"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]),
         helper.make_node("Identity", ["h_out"], ["y_t"])],
        "body", [_vi("h_in", shape=[1, 4]), _vi("x_t", shape=[1, 4])],
        [_vi("h_out", shape=[1, 4]), _vi("y_t", shape=[1, 4])],
    )
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 4)).astype(np.float32), "W")
    for direction in (0, 1):
        node = helper.make_node(
            "Scan", ["h0", "x"], ["h", "ys"], body=body, num_scan_inputs=1,
            scan_input_axes=[1], scan_input_directions=[direction], scan_output_axes=[1],
        )
        model = _model([node], [_vi("h0", shape=[1, 4]), _vi("x", shape=[1, 6, 4])],
                       [_vi("h"), _vi("ys")], [w])
        _check(model, {"h0": np.zeros((1, 4), np.float32),
                       "x": rng.normal(size=(1, 6, 4)).astype(np.float32)})


def test_if_output_from_outer_scope():
    then_g = helper.make_graph([], "then", [], [_vi("a")])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["n"])], "else", [], [_vi("n")])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    model = _model([node], [_vi("c", TP.BOOL, []), _vi("a", shape=[2])], [_vi("y")])
    runner = OnnxMLXRunner(model)
    a = np.array([1.0, -2.0], np.float32)
    np.testing.assert_array_equal(runner.run({"c": np.array(True), "a": a})["y"], a)
    np.testing.assert_array_equal(runner.run({"c": np.array(False), "a": a})["y"], -a)


def test_subgraph_unknown_name_is_clear():
    then_g = helper.make_graph([helper.make_node("Neg", ["nope"], ["n"])], "then", [], [_vi("n")])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=then_g)
    model = _model([node], [_vi("c", TP.BOOL, [])], [_vi("y")])
    with pytest.raises(ConversionError, match="input 'nope' is not produced before use"):
        OnnxMLXRunner(model)


def test_graph_output_no_node_produces():
    node = helper.make_node("Relu", ["x"], ["y"])
    model = _model([node], [_vi("x", shape=[2])], [_vi("y"), _vi("ghost")])
    with pytest.raises(EdgeLSTMError, match="graph output 'ghost' is not produced"):
        run_onnx(model, {"x": np.zeros(2, np.float32)})


@pytest.mark.parametrize("t", [TP.FLOAT8E4M3FN, TP.INT4, TP.STRING, TP.COMPLEX64])
def test_exotic_input_type_refused_at_load(t):
    node = helper.make_node("Identity", ["x"], ["y"])
    model = _model([node], [_vi("x", t, [2])], [_vi("y", t, [2])])
    name = helper.tensor_dtype_to_string(t).removeprefix("TensorProto.")
    with pytest.raises(UnsupportedError, match=f"input 'x': tensor type {name} is not supported"):
        OnnxMLXRunner(model)


@pytest.mark.parametrize("dt", [np.float16, "bfloat16", np.float64])
def test_half_and_double_graphs_run(dt):
    import ml_dtypes

    dt = np.dtype(ml_dtypes.bfloat16) if dt == "bfloat16" else np.dtype(dt)
    t = helper.np_dtype_to_tensor_dtype(dt)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1], group=2),
             helper.make_node("Relu", ["c"], ["y"])]
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.normal(size=(4, 1, 3)).astype(dt), "w")
    model = _model(nodes, [_vi("x", t, [1, 2, 8])], [_vi("y", t)], [w])
    x = rng.normal(size=(1, 2, 8)).astype(dt)
    got = run_onnx(model, {"x": x})["y"]
    assert got.dtype == dt
    ref = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got.astype(np.float64), ref.astype(np.float64), rtol=2e-2,
                               atol=2e-2)
