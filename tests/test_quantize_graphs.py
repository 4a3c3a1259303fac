"""``quantize`` on third-party ONNX graphs: the VAD fixture (If, Pad, Conv, LSTM with state
I/O, from PyTorch) and a hand-built graph with its LSTMs inside ``If`` branches.

Checked: int8 QDQ weights where asked (per output channel), every other node,
initializer, input and output protobuf-equal, the written file run on ONNX
Runtime and the MLX executor against PyTorch's outputs, and the refusals
(unknown domain, corrupt file, existing output, missing input value) leaving
no output behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgelstm.cli import cli
from edgelstm.converters import run_onnx
from edgelstm.errors import DataError, EdgeLSTMError, UnsupportedError
from edgelstm.quantize import QuantConfig, quantize_model
from edgelstm.quantize.config import WEIGHT_SETS
from edgelstm.quantize.report import output_error

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "vad" / "vad_stream.onnx"
REF = np.load(ROOT / "tests" / "fixtures" / "vad" / "vad_stream.npz")
QDQ_HELPERS = {"DequantizeLinear", "Cast", "Reshape", "ConstantOfShape", "Concat"}


def _quantize(dst, weights="recurrent", **kw):
    kw.setdefault("consts", {"sr": 8000})
    kw.setdefault("dims", {"samples": 288})
    return quantize_model(MODEL, dst, QuantConfig(targets=WEIGHT_SETS[weights]), **kw)


def _inits(model) -> dict:
    return {t.name: t for t in model.graph.initializer}


@pytest.fixture(scope="module", params=["recurrent", "all"])
def quantized(request, tmp_path_factory):
    dst = tmp_path_factory.mktemp("q") / "vad.int8.onnx"
    report = _quantize(dst, request.param)
    return request.param, report, onnx.load(str(dst)), dst


def test_weights_become_int8_per_output_channel(quantized):
    weights, report, q, _ = quantized
    orig = onnx.load(str(MODEL))
    lstm = next(n for n in orig.graph.node if n.op_type == "LSTM")
    want = {lstm.input[1]: 1, lstm.input[2]: 1}  # W (1, 4H, I), R (1, 4H, H): per gate row
    if weights == "all":
        want.update({n.input[1]: 0 for n in orig.graph.node if n.op_type in ("Conv", "Gemm")})
    assert sorted(report.weights["quantized"]) == sorted(want)
    inits, o_inits = _inits(q), _inits(orig)
    deq = {n.output[0]: n for n in q.graph.node if n.op_type == "DequantizeLinear"}
    for name, axis in want.items():
        assert name not in inits and inits[f"{name}_quantized"].data_type == TensorProto.INT8
        node = deq[name]
        assert helper.get_attribute_value(node.attribute[0]) == axis
        # float16 scales, unless one is outside float16's normal range (DFT rows near zero)
        scales = numpy_helper.to_array(inits.get(f"{name}_scale_fp16") or inits[f"{name}_scale"])
        assert scales.shape == (o_inits[name].dims[axis],)  # one scale per output channel
        w = numpy_helper.to_array(o_inits[name])
        deq_w = numpy_helper.to_array(inits[f"{name}_quantized"]).astype(np.float32) * (
            scales.astype(np.float32).reshape([-1 if k == axis else 1 for k in range(w.ndim)]))
        step = np.abs(w).max(axis=tuple(k for k in range(w.ndim) if k != axis)) / 127
        err = np.abs(deq_w - w).max(axis=tuple(k for k in range(w.ndim) if k != axis))
        assert np.all(err <= step * 0.5 * 1.01 + 1e-12)


def test_everything_else_is_protobuf_equal(quantized):
    _, report, q, _ = quantized
    orig = onnx.load(str(MODEL))
    n_new = len(q.graph.node) - len(orig.graph.node)
    assert n_new > 0 and {n.op_type for n in q.graph.node[:n_new]} <= QDQ_HELPERS
    assert list(q.graph.node[n_new:]) == list(orig.graph.node)  # If subgraphs included
    assert list(q.graph.input) == list(orig.graph.input)
    assert list(q.graph.output) == list(orig.graph.output)
    changed = set(report.weights["quantized"]) | set(report.weights["compacted"])
    inits = _inits(q)
    for t in orig.graph.initializer:
        if t.name not in changed:
            assert inits[t.name] == t, t.name
    # opset 17 -> 19 changes no node of this graph: only the version number moves
    assert [(o.domain, o.version) for o in q.opset_import] == [("", 19)]
    assert not report.notes
    for field in ("ir_version", "producer_name", "producer_version", "doc_string"):
        assert getattr(q, field) == getattr(orig, field)


def test_report_has_error_per_output_on_both_runtimes(quantized):
    _, report, _, dst = quantized
    assert set(report.outputs) == {"output", "hn", "cn"}
    for o in report.outputs.values():
        assert o["cosine"] > 0.999 and o["mlx_max_abs_diff"] < 1e-4
    assert report.runtimes["mlx"]["max_abs_diff_vs_onnxruntime"] < 1e-4
    assert report.inputs == {"input": [4, 288], "sr": [], "h": [1, 4, 16], "c": [1, 4, 16]}
    assert report.bytes_after < report.bytes_before == MODEL.stat().st_size
    assert "hn" in report.summary() and "mlx" in report.summary()


@pytest.mark.parametrize("backend", ["onnxruntime", "mlx"])
@pytest.mark.parametrize("tag", ["8", "16"])
def test_quantized_file_tracks_pytorch(quantized, backend, tag):
    _, _, _, dst = quantized
    feeds = {"input": REF[f"x{tag}"], "sr": REF[f"sr{tag}"], "h": REF["h"], "c": REF["c"]}
    out = run_onnx(dst, feeds, backend=backend)
    for name, ref in (("output", "out"), ("hn", "hn"), ("cn", "cn")):
        max_abs, cos = output_error(REF[ref + tag], out[name])
        assert cos > 0.999 and max_abs < 0.1, (name, max_abs, cos)
    if backend == "mlx":
        ort_out = run_onnx(dst, feeds)
        for name in ort_out:
            np.testing.assert_allclose(out[name], ort_out[name], atol=2e-5)


# -- recurrent nodes inside subgraphs -------------------------------------------------------
I, H, T, B = 3, 4, 5, 2


def _if_lstm_model():
    """``If(cond)``: then an LSTM on outer-scope weights, else one on the branch's own."""
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def branch(name, W, R, inits):
        lstm = helper.make_node("LSTM", ["x", W, R], [f"{name}_y"], hidden_size=H,
                                name=f"{name}_lstm")
        sq = helper.make_node("Squeeze", [f"{name}_y", "one"], [f"{name}_out"])
        out = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [T, "batch", H])
        return helper.make_graph([lstm, sq], name, [], [out], initializer=inits)

    then_g = branch("then", "W_outer", "R_outer", [])
    else_g = branch("else", "W_inner", "R_inner", [w("W_inner", 1, 4 * H, I),
                                                   w("R_inner", 1, 4 * H, H)])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, "batch", I]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, "batch", H])],
        initializer=[w("W_outer", 1, 4 * H, I), w("R_outer", 1, 4 * H, H),
                     numpy_helper.from_array(np.array([1], np.int64), "one")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_lstms_inside_if_branches_are_quantized_where_their_weights_live(tmp_path):
    src, dst = tmp_path / "if.onnx", tmp_path / "if.int8.onnx"
    onnx.save(_if_lstm_model(), str(src))
    r = quantize_model(src, dst, consts={"cond": 1})
    assert sorted(r.weights["quantized"]) == ["R_inner", "R_outer", "W_inner", "W_outer"]
    q = onnx.load(str(dst))
    main_deq = {n.output[0] for n in q.graph.node if n.op_type == "DequantizeLinear"}
    else_g = next(n for n in q.graph.node if n.op_type == "If").attribute
    else_g = next(a.g for a in else_g if a.name == "else_branch")
    inner_deq = {n.output[0] for n in else_g.node if n.op_type == "DequantizeLinear"}
    assert main_deq == {"W_outer", "R_outer"} and inner_deq == {"W_inner", "R_inner"}
    assert q.opset_import[0].version == 19  # raising the opset changed no node here
    x = np.random.default_rng(1).standard_normal((T, B, I)).astype(np.float32)
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array(cond)}
        ref = run_onnx(src, feeds)["y"]
        for backend in ("onnxruntime", "mlx"):
            _, cos = output_error(ref, run_onnx(dst, feeds, backend=backend)["y"])
            assert cos > 0.999, (cond, backend)


# -- refusals -------------------------------------------------------------------------------
def test_unknown_domain_op_is_refused_by_name_before_writing(tmp_path):
    m = _if_lstm_model()
    sub = next(a.g for a in m.graph.node[0].attribute if a.name == "then_branch")
    sub.node.append(helper.make_node("Mystery", ["then_out"], ["unused"], domain="com.example",
                                     name="mystery"))
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    src, dst = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    onnx.save(m, str(src))
    with pytest.raises(UnsupportedError, match="com.example.Mystery"):
        quantize_model(src, dst, consts={"cond": 1})
    assert not dst.exists() and list(tmp_path.iterdir()) == [src]


def test_missing_input_value_and_failing_sizes_leave_no_output(tmp_path):
    dst = tmp_path / "o.onnx"
    with pytest.raises(UnsupportedError, match="--const sr=VALUE"):
        quantize_model(MODEL, dst)
    with pytest.raises(DataError, match="--dim"):  # reflection pad longer than the input
        _quantize(dst, dims={"samples": 8})
    assert list(tmp_path.iterdir()) == []


def _cli(*args):
    return CliRunner().invoke(cli, ["quantize", *map(str, args)])


def test_cli_json_report_per_output(tmp_path):
    dst = tmp_path / "v.onnx"
    r = _cli(MODEL, dst, "--weights", "all", "--const", "sr=8000", "--dim", "samples=288",
             "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert set(rep["outputs"]) == {"output", "hn", "cn"} and rep["ratio"] > 2
    assert all("mlx_max_abs_diff" in o for o in rep["outputs"].values())


@pytest.mark.parametrize("case", ["corrupt", "exists", "no-const", "bad-const", "ort-fails"])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, case):
    src, dst = MODEL, tmp_path / "o.onnx"
    args = ["--const", "sr=8000"]
    if case == "corrupt":
        src = tmp_path / "bad.onnx"
        src.write_bytes(MODEL.read_bytes()[:5000])
    elif case == "exists":
        dst.write_text("keep me")
    elif case == "no-const":
        args = []
    elif case == "ort-fails":  # reflection padding longer than the generated input
        args += ["--dim", "samples=8"]
    else:
        args = ["--const", "sr=eight"]
    before = sorted(tmp_path.iterdir())
    r = _cli(src, dst, *args)
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert r.exit_code != 0 and len(errors) == 1 and "Traceback" not in r.output, r.output
    if r.exit_code == 1:  # not a usage error: the Error line is all there is
        assert r.output.strip() == errors[0]
    assert sorted(tmp_path.iterdir()) == before
    if case == "exists":
        assert dst.read_text() == "keep me" and "--force" in errors[0]


def test_already_quantized_graph_is_refused(quantized, tmp_path):
    _, _, _, dst = quantized
    with pytest.raises(EdgeLSTMError, match="already quantized"):
        quantize_model(dst, tmp_path / "twice.onnx", consts={"sr": 8000})


def test_opset_is_kept_when_raising_it_would_rewrite_nodes(tmp_path):
    """ReduceMean's axes moved from attribute to input at opset 18: the graph keeps 17."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((1, 4 * H, I)).astype(np.float32),
                                     "W"),
             numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32),
                                     "R")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=H),
             helper.make_node("ReduceMean", ["y"], ["m"], axes=[0], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [T, B, I])], [helper.make_tensor_value_info(
            "m", TensorProto.FLOAT, [1, B, H])], initializer=inits)
    src, dst = tmp_path / "r.onnx", tmp_path / "r.int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    r = quantize_model(src, dst)
    q = onnx.load(str(dst))
    assert q.opset_import[0].version == 17 and any("kept opset 17" in n for n in r.notes)
    assert list(q.graph.node[-2:]) == nodes
    assert r.runtimes["mlx"]["max_abs_diff_vs_onnxruntime"] < 1e-5


def test_a_graph_the_mlx_executor_refuses_writes_nothing_unless_told(tmp_path):
    """The MLX check is on by default; --verify-on onnxruntime leaves it out."""
    m = onnx.load(str(MODEL))
    # a random op (which no executor can match bit for bit) on a side branch
    m.graph.node.append(helper.make_node("RandomUniformLike", ["output"], ["noise"],
                                         name="noise"))
    src, dst = tmp_path / "r.onnx", tmp_path / "r.int8.onnx"
    onnx.save(m, str(src))
    with pytest.raises(EdgeLSTMError, match="RandomUniformLike.*--verify-on onnxruntime"):
        quantize_model(src, dst, consts={"sr": 8000}, dims={"samples": 288})
    assert not dst.exists()
    r = quantize_model(src, dst, consts={"sr": 8000}, dims={"samples": 288},
                       verify_on="onnxruntime")
    assert dst.exists() and r.runtimes == {} and r.outputs["output"]["cosine"] > 0.999


def test_feeds_replace_generated_inputs_and_size_the_rest(tmp_path):
    """The README's feeds (batch 2, with states) replace generated inputs; --dim is not needed."""
    feeds = ROOT / "tests" / "fixtures" / "vad" / "vad_stream_feeds.npz"
    r = quantize_model(MODEL, tmp_path / "f.onnx", feeds=feeds)
    assert r.inputs == {"input": [2, 288], "sr": [], "h": [1, 2, 16], "c": [1, 2, 16]}
    given = dict(np.load(feeds))
    ref, q = run_onnx(MODEL, given), run_onnx(tmp_path / "f.onnx", given)
    assert r.outputs["hn"]["max_abs_error"] == pytest.approx(
        float(np.max(np.abs(q["hn"].astype(np.float64) - ref["hn"]))))
    with pytest.raises(EdgeLSTMError, match="not an input"):
        quantize_model(MODEL, tmp_path / "g.onnx", feeds={"audio": np.zeros(3)},
                       consts={"sr": 8000})


def test_generated_states_follow_a_given_batch(tmp_path):
    x = np.load(ROOT / "tests" / "fixtures" / "vad" / "vad_stream_feeds.npz")["input"][:1]
    r = quantize_model(MODEL, tmp_path / "b.onnx", feeds={"input": x}, consts={"sr": 8000})
    assert r.inputs["h"] == [1, 1, 16] and r.inputs["input"] == [1, 288]


def test_onnxruntime_failure_prints_only_the_error_line(tmp_path):
    """ORT's own log goes to the process's stderr (not sys.stderr): run a real process."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "edgelstm", "quantize", str(MODEL),
                        str(tmp_path / "o.onnx"), "--const", "sr=8000", "--dim", "samples=8"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip().startswith("Error: onnxruntime failed") and len(
        r.stderr.strip().splitlines()) == 1, r.stderr
    assert list(tmp_path.iterdir()) == []
