"""Quantization: config, MLX cells, checkpoints, QDQ and ORT ONNX, the report."""

from __future__ import annotations

import json

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)
from edgelstm.errors import UnsupportedError
from edgelstm.nn.layers import RECURRENT
from edgelstm.nn.model import SequenceModel
from edgelstm.quantize import (
    QuantConfig,
    QuantizedGRUCell,
    QuantizedLSTMCell,
    QuantizedRNNCell,
    quantize_mlx,
    quantize_model,
)
from edgelstm.quantize.mlx_quant import dequantize_rows, quantize_rows
from edgelstm.quantize.report import output_error

onnx = pytest.importorskip("onnx")


def _model(kind="lstm", I=12, H=32, layers=2, bidirectional=False, head="frame", seed=0):
    mx.random.seed(seed)
    m = SequenceModel(RECURRENT[kind](I, H, num_layers=layers, bidirectional=bidirectional),
                      num_outputs=5, head=head)
    m.eval()
    return m


def _x(I=12, B=3, T=20, seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(np.float32)


def _copy(model):
    twin = SequenceModel.from_config(model.config())
    twin.update(model.parameters())
    twin.eval()
    return twin


# --- config -----------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 3, 16, 0])
def test_unsupported_bits_are_refused(bits):
    with pytest.raises(UnsupportedError, match="supported: 8"):
        QuantConfig(bits=bits)


def test_config_refusals_name_the_valid_choices():
    with pytest.raises(UnsupportedError, match="valid: 'symmetric', 'affine'"):
        QuantConfig(mode="asymmetric")
    with pytest.raises(UnsupportedError, match="8-bit quantization supports mode=symmetric"):
        QuantConfig(bits=8, mode="affine")
    with pytest.raises(UnsupportedError, match="MLX-only"):
        QuantConfig(bits=4).check_format("onnx-qdq")
    with pytest.raises(UnsupportedError, match="group_size"):
        QuantConfig(bits=4, group_size=48)
    with pytest.raises(UnsupportedError, match="unknown quantization setting"):
        QuantConfig.from_dict({"bits": 8, "scale_dtype": "fp16"})


def test_config_dict_round_trip():
    cfg = QuantConfig(bits=4, group_size=32, targets=("Wh", "head"))
    assert QuantConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


# --- int8 math --------------------------------------------------------------------


def test_quantize_rows_error_is_half_a_step_per_row():
    w = mx.random.normal((64, 40)) * mx.linspace(0.01, 3.0, 64)[:, None]
    w[5] = 0.0  # an all-zero row must not divide by zero
    q, s = quantize_rows(w)
    assert q.dtype == mx.int8 and s.shape == (64,)
    assert int(mx.max(mx.abs(q.astype(mx.int32)))) <= 127
    err = mx.abs(dequantize_rows(q, s) - w)
    assert bool(mx.all(err <= s[:, None] / 2 + 1e-7))
    assert float(mx.max(mx.abs(dequantize_rows(q, s)[5]))) == 0.0


# --- MLX --------------------------------------------------------------------------


@pytest.mark.parametrize("kind,cell_cls", [("lstm", QuantizedLSTMCell),
                                           ("gru", QuantizedGRUCell),
                                           ("rnn", QuantizedRNNCell)])
def test_mlx_int8_keeps_int8_and_matches_float(kind, cell_cls):
    model = _model(kind, H=64, bidirectional=True)
    ref = _copy(model)
    quantize_mlx(model)
    cells = [c for _, c in model.named_modules() if isinstance(c, cell_cls)]
    assert len(cells) == 4  # 2 layers x 2 directions
    names = ("Wxh", "Whh") if kind == "rnn" else ("Wx", "Wh")
    for c in cells:
        for n in names:
            assert c[n].dtype == mx.int8 and c[n + "_scales"].dtype == mx.float32
    x = mx.array(_x())
    lengths = mx.array([20, 7, 13])
    max_abs, cos = output_error(np.array(ref(x, lengths=lengths)),
                                np.array(model(x, lengths=lengths)))
    assert cos >= 0.999 and max_abs < 0.05


def test_nn_quantize_protocol_swaps_cells():
    model = _model(head="frame")
    nn.quantize(model, class_predicate=lambda _, m: hasattr(m, "to_quantized")
                and not isinstance(m, nn.Linear))
    kinds = {type(m).__name__ for _, m in model.named_modules()}
    assert "QuantizedLSTMCell" in kinds and "Linear" in kinds and "LSTMCell" not in kinds
    with pytest.raises(UnsupportedError, match="mode"):
        _model().rnn.layers[0].forward.to_quantized(mode="mxfp4")


def test_mlx_checkpoint_round_trip(tmp_path):
    from edgelstm.runtime.info import describe

    model = quantize_mlx(_model(H=128, layers=1))
    model.save(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    stored = mx.load(str(tmp_path / "q" / "model.safetensors"))
    assert stored["rnn.layers.0.forward.Wh"].dtype == mx.int8
    back = edgelstm.load(tmp_path / "q")
    x = mx.array(_x())
    np.testing.assert_array_equal(np.array(model(x)), np.array(back(x)))
    info = describe(tmp_path / "q")
    assert info["quantization"]["bits"] == 8
    assert 8.0 < info["bits_per_weight"] < 9.5


def test_mlx_4bit_is_experimental_and_needs_divisible_widths(tmp_path):
    model = _model(I=32, H=64, layers=1)
    ref = _copy(model)
    quantize_mlx(model, QuantConfig(bits=4))
    assert model.rnn.layers[0].forward["Wx"].dtype == mx.uint32
    x = mx.array(_x(I=32))
    _, cos = output_error(np.array(ref(x)), np.array(model(x)))
    assert cos > 0.98
    model.save(tmp_path / "q4")
    np.testing.assert_allclose(np.array(edgelstm.load(tmp_path / "q4")(x)), np.array(model(x)),
                               atol=1e-6)
    with pytest.raises(UnsupportedError, match="divisible by the group size"):
        quantize_mlx(_model(I=12, H=64), QuantConfig(bits=4))


def test_head_quantization_and_refusal_to_quantize_twice():
    model = quantize_mlx(_model(H=64, layers=1), QuantConfig(targets=("Wx", "Wh", "head")))
    assert isinstance(model.head, nn.QuantizedLinear)
    with pytest.raises(UnsupportedError, match="already quantized"):
        quantize_mlx(model)


# --- files and the report ---------------------------------------------------------


@pytest.fixture(scope="module")
def lstm128(tmp_path_factory):
    # I=40 (speech features): at I=12 the fixed costs leave int8 at 3.4-3.5x.
    path = tmp_path_factory.mktemp("m") / "lstm128"
    _model(I=40, H=128, layers=1, head="frame").save(path)
    return path


def test_report_mlx_meets_size_and_error_targets(lstm128, tmp_path):
    r = quantize_model(lstm128, tmp_path / "q")
    assert r.format == "mlx" and r.ratio >= 3.5 and r.cosine >= 0.999
    assert "smaller" in r.summary() and r.to_dict()["ratio"] == round(r.ratio, 3)


def _run_all_backends(path, x):
    from onnx.reference import ReferenceEvaluator

    from edgelstm.converters import run_onnx

    ort = run_onnx(path, {"input": x})["output"]
    mlx_out = run_onnx(path, {"input": x}, backend="mlx")["output"]
    return ort, mlx_out, ReferenceEvaluator(str(path)).run(None, {"input": x})[0]


def test_qdq_onnx_runs_in_ort_mlx_and_reference(lstm128, tmp_path):
    from onnx import TensorProto

    r = quantize_model(lstm128, tmp_path / "q.onnx")
    assert r.format == "onnx-qdq" and r.ratio >= 3.5 and r.cosine >= 0.999
    m = onnx.load(str(tmp_path / "q.onnx"))
    assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {19}
    assert "DequantizeLinear" in {n.op_type for n in m.graph.node}
    types = {i.name: i.data_type for i in m.graph.initializer}
    assert types["layers.0.W_quantized"] == TensorProto.INT8 and "layers.0.W" not in types
    x = _x(I=40)
    ref = np.array(edgelstm.load(lstm128)(mx.array(x)))
    for out in _run_all_backends(tmp_path / "q.onnx", x):
        _, cos = output_error(ref, out)
        assert cos >= 0.999


def test_qdq_bidirectional_gru(tmp_path):
    src = tmp_path / "gru"
    _model("gru", H=32, bidirectional=True).save(src)
    r = quantize_model(src, tmp_path / "g.onnx")
    assert r.cosine >= 0.999
    ort, mlx_out, ref_eval = _run_all_backends(tmp_path / "g.onnx", _x())
    np.testing.assert_allclose(mlx_out, ort, atol=1e-4)
    np.testing.assert_allclose(ref_eval, ort, atol=1e-4)


def _uncompact(model):
    """The same graph with the scale Casts and the bias Concat folded into float32 initializers."""
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    vals = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    for node in [n for n in g.node if n.op_type in ("Cast", "ConstantOfShape", "Concat")]:
        if not all(i in vals for i in node.input):
            continue  # a data-path Concat
        ins = [vals[i] for i in node.input]
        if node.op_type == "Cast":
            v = ins[0].astype(np.float32)
        elif node.op_type == "ConstantOfShape":
            v = np.zeros(ins[0], np.float32)
        else:
            v = np.concatenate(ins, axis=1)
        vals[node.output[0]] = v
        g.node.remove(node)
        g.initializer.append(numpy_helper.from_array(v, node.output[0]))
    onnx.checker.check_model(out, full_check=True)
    return out


@pytest.mark.parametrize("kind,compact_b", [("lstm", True), ("rnn", True), ("gru", False)])
def test_qdq_float16_scales_and_compact_bias_compute_the_same(kind, compact_b, tmp_path):
    from onnx import TensorProto
    from onnx.reference import ReferenceEvaluator

    from edgelstm.converters import run_onnx
    from edgelstm.converters.onnx_export import build_onnx
    from edgelstm.quantize.onnx_qdq import qdq_quantize

    q = qdq_quantize(build_onnx(_model(kind, H=32, bidirectional=True)),
                     QuantConfig(targets=("Wx", "Wh", "head")))
    types = {i.name: i.data_type for i in q.graph.initializer}
    for k in (0, 1):
        for w in ("W", "R"):
            assert types[f"layers.{k}.{w}_scale_fp16"] == TensorProto.FLOAT16
            assert f"layers.{k}.{w}_scale" not in types  # made by Cast(to=FLOAT)
        # GRU's Rb holds bhn, so its B stays whole
        assert (f"layers.{k}.B_Wb" in types) == compact_b
        assert (f"layers.{k}.B" in types) != compact_b
    casts = [n for n in q.graph.node if n.op_type == "Cast"]
    assert casts and all(a.i == TensorProto.FLOAT for n in casts for a in n.attribute)
    onnx.save(q, str(tmp_path / "new.onnx"))
    onnx.save(_uncompact(q), str(tmp_path / "old.onnx"))
    assert (tmp_path / "new.onnx").stat().st_size < (tmp_path / "old.onnx").stat().st_size
    x = {"input": _x()}
    for backend in ("onnxruntime", "mlx"):
        new, old = (run_onnx(tmp_path / f, x, backend=backend)["output"]
                    for f in ("new.onnx", "old.onnx"))
        np.testing.assert_array_equal(new, old, err_msg=backend)
    new, old = (ReferenceEvaluator(str(tmp_path / f)).run(None, x)[0]
                for f in ("new.onnx", "old.onnx"))
    np.testing.assert_array_equal(new, old)


def test_qdq_rows_match_mlx_int8_and_keep_float32_scales_off_the_float16_range():
    from edgelstm.quantize.onnx_qdq import qdq_quantize, quantize_rows_np

    w = np.random.default_rng(0).standard_normal((64, 40)).astype(np.float32)
    w *= np.linspace(0.01, 3.0, 64, dtype=np.float32)[:, None]
    q, s = quantize_rows(mx.array(w))
    q_np, s_np = quantize_rows_np(w, 0)
    np.testing.assert_array_equal(q_np, np.array(q))
    np.testing.assert_array_equal(s_np, np.array(s))
    assert np.array_equal(s_np.astype(np.float16).astype(np.float32), s_np)
    # scales below float16 normals stay float32, no Cast; a -0.0 in Rb keeps B whole
    model = _model("rnn", H=8, layers=1)
    model.rnn.layers[0].forward.Whh = model.rnn.layers[0].forward.Whh * 1e-6
    from edgelstm.converters.onnx_export import build_onnx

    f = build_onnx(model)
    b = next(i for i in f.graph.initializer if i.name == "layers.0.B")
    b.CopyFrom(onnx.numpy_helper.from_array(
        np.concatenate([onnx.numpy_helper.to_array(b)[:, :8], np.full((1, 8), -0.0, np.float32)],
                       axis=1), "layers.0.B"))
    types = {i.name: i.data_type for i in qdq_quantize(f).graph.initializer}
    assert types["layers.0.R_scale"] == onnx.TensorProto.FLOAT
    assert types["layers.0.W_scale_fp16"] == onnx.TensorProto.FLOAT16
    assert types["layers.0.B"] == onnx.TensorProto.FLOAT


def test_ort_format_runs_in_ort_and_mlx(lstm128, tmp_path):
    from edgelstm.converters import run_onnx

    r = quantize_model(lstm128, tmp_path / "o.onnx", format="onnx-ort")
    assert r.ratio >= 3.3 and r.cosine >= 0.999
    m = onnx.load(str(tmp_path / "o.onnx"))
    assert ("com.microsoft", "DynamicQuantizeLSTM") in {(n.domain, n.op_type)
                                                        for n in m.graph.node}
    x = _x(I=40)
    ref = np.array(edgelstm.load(lstm128)(mx.array(x)))
    for backend in ("onnxruntime", "mlx"):
        _, cos = output_error(ref, run_onnx(tmp_path / "o.onnx", {"input": x},
                                            backend=backend)["output"])
        assert cos >= 0.999, backend


def test_ort_format_refuses_gru(tmp_path):
    _model("gru", H=16, layers=1).save(tmp_path / "g")
    with pytest.raises(UnsupportedError, match="no quantized GRU"):
        quantize_model(tmp_path / "g", tmp_path / "g.onnx", format="onnx-ort")
    assert not (tmp_path / "g.onnx").exists()  # nothing half-written


def test_eval_accuracy_in_report(tmp_path):
    src = tmp_path / "seq"
    _model(H=64, layers=1, head="sequence").save(src)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.standard_normal((16, 12, 12)).astype(np.float32),
             y=rng.integers(0, 5, 16), lengths=rng.integers(3, 13, 16))
    for dst in ("q", "q.onnx"):
        r = quantize_model(src, tmp_path / dst, eval_data=tmp_path / "d.npz")
        assert r.eval_samples == 16
        assert abs(r.accuracy_before - r.accuracy_after) <= 2 / 16
        assert "accuracy" in r.summary()
