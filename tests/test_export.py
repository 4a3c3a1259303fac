"""ONNX export: parity with onnxruntime and onnx.reference, graph form, streaming, round trips."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import onnx
import pytest
from mlx.utils import tree_flatten
from onnx.reference import ReferenceEvaluator

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm import GRU, LSTM, RNN, SequenceModel
from edgelstm.converters import from_onnx, onnx_io_names, run_onnx, to_onnx
from edgelstm.converters.onnx_export import build_onnx
from edgelstm.errors import ConversionError, UnsupportedError

ATOL = 1e-5
B, T, I, H, C = 3, 7, 4, 5, 3

# (name, class, options, onnx.reference applies)
CELLS = [
    ("lstm", LSTM, {}, True),
    ("lstm-peephole", LSTM, {"peephole": True}, True),
    ("lstm-clip", LSTM, {"clip": 0.5}, False),  # the reference ignores clip
    ("lstm-input-forget", LSTM, {"input_forget": True}, False),  # ... and input_forget
    ("gru-lbr1", GRU, {"linear_before_reset": True}, True),
    ("gru-lbr0", GRU, {"linear_before_reset": False}, True),
    ("gru-clip", GRU, {"clip": 0.5}, False),
    ("rnn-tanh", RNN, {}, True),
    ("rnn-relu", RNN, {"nonlinearity": "relu"}, False),  # the reference knows Tanh only
]
HEADS = ["frame", "sequence", None]


def _make(cls, opts, layers, bidir, head, normalize, seed=0):
    mx.random.seed(seed)
    rnn = cls(I, H, num_layers=layers, bidirectional=bidir, **opts)
    if head is None and not normalize:
        model = rnn
    else:
        model = SequenceModel(rnn, C, head=head, normalize=normalize)
        if normalize:
            model.norm.mean = mx.random.normal((I,))
            model.norm.std = mx.random.uniform(0.5, 2.0, (I,))
    model.eval()
    return model


def _native(model, x, state=None):
    if isinstance(model, SequenceModel):
        y, final = model(mx.array(x), state=state, return_state=True)
    else:
        y, final = model(mx.array(x), state)
    final = final if isinstance(final, tuple) else (final,)
    return np.array(y), [np.array(s) for s in final]


def _x(seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(np.float32)


@pytest.mark.parametrize("name,cls,opts,ref_ok", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("bidir", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("layers", [1, 2])
def test_parity_every_config(name, cls, opts, ref_ok, bidir, layers):
    x = _x()
    for head in HEADS:
        for normalize in (False, True):
            model = _make(cls, opts, layers, bidir, head, normalize)
            proto = build_onnx(model)
            onnx.checker.check_model(proto, full_check=True)
            want, _ = _native(model, x)
            feeds = {proto.graph.input[0].name: x}
            got = run_onnx(proto, feeds)
            out = next(iter(got.values()))
            assert out.shape == want.shape
            np.testing.assert_allclose(out, want, atol=ATOL, rtol=0,
                                       err_msg=f"onnxruntime {head=} {normalize=}")
            if ref_ok:
                ref = ReferenceEvaluator(proto).run(None, feeds)[0]
                np.testing.assert_allclose(ref, want, atol=ATOL, rtol=0,
                                           err_msg=f"onnx.reference {head=} {normalize=}")


@pytest.mark.parametrize("name,cls,opts,ref_ok", CELLS, ids=[c[0] for c in CELLS])
def test_streaming_states_match(name, cls, opts, ref_ok):
    model = _make(cls, opts, 2, False, "frame", False)
    rnn = model.rnn
    proto = build_onnx(model, streaming=True)
    onnx.checker.check_model(proto, full_check=True)
    is_lstm = rnn.cell_type == "lstm"
    ins = [i.name for i in proto.graph.input]
    outs = [o.name for o in proto.graph.output]
    assert ins == ["input", "h0", "c0"] if is_lstm else ["input", "h0"]
    assert outs == ["output", "h_n", "c_n"] if is_lstm else ["output", "h_n"]
    rng = np.random.default_rng(2)
    state = [rng.standard_normal((2, B, H)).astype(np.float32) for _ in range(2 if is_lstm else 1)]
    x = _x()
    want_y, want_state = _native(model, x, tuple(mx.array(s) for s in state) if is_lstm
                                 else mx.array(state[0]))
    feeds = {"input": x, "h0": state[0], **({"c0": state[1]} if is_lstm else {})}
    got = run_onnx(proto, feeds)
    np.testing.assert_allclose(got["output"], want_y, atol=ATOL, rtol=0)
    for name_, want in zip(["h_n", "c_n"], want_state, strict=False):
        assert got[name_].shape == (2, B, H)
        np.testing.assert_allclose(got[name_], want, atol=ATOL, rtol=0)
    # chunked through ONNX == one pass
    a = run_onnx(proto, {**feeds, "input": x[:, :3]})
    b = run_onnx(proto, {"input": x[:, 3:], "h0": a["h_n"], **({"c0": a["c_n"]} if is_lstm else {})})
    np.testing.assert_allclose(np.concatenate([a["output"], b["output"]], 1), want_y, atol=ATOL)


def test_graph_form_and_metadata(tmp_path):
    model = _make(LSTM, {"peephole": True}, 2, True, "sequence", True)
    path = to_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version == 17
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("LSTM") == 2
    for n in proto.graph.node:
        if n.op_type == "LSTM":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
            assert attrs.get("layout", 0) == 0
            assert attrs["direction"] == b"bidirectional"
            assert len(n.input) == 8 and n.input[7]  # peepholes present
    dims = [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[:2]]
    assert dims == ["batch", "time"]
    meta = {p.key: p.value for p in proto.metadata_props}
    config = json.loads(meta["edgelstm_config"])
    assert config["rnn"]["peephole"] is True and config["head"] == "sequence"
    assert (meta["model_type"], meta["num_layers"], meta["hidden_size"]) == ("lstm", "2", "5")
    assert onnx_io_names(path) == (["input"], ["output"])
    # IR version is the minimum for the opset, not the newest
    assert proto.ir_version == onnx.helper.find_min_ir_version_for([proto.opset_import[0]])


@pytest.mark.parametrize("opset", [14, 19, 21])
def test_other_opsets(opset):
    model = _make(GRU, {}, 1, False, "frame", False)
    proto = build_onnx(model, opset=opset)
    onnx.checker.check_model(proto, full_check=True)
    out = run_onnx(proto, {"input": _x()})["output"]
    np.testing.assert_allclose(out, _native(model, _x())[0], atol=ATOL)


def test_refusals(tmp_path):
    bi = _make(LSTM, {}, 1, True, "frame", False)
    with pytest.raises(UnsupportedError, match="bidirectional model cannot stream"):
        build_onnx(bi, streaming=True)
    with pytest.raises(ConversionError, match="opset must be 14 or newer"):
        build_onnx(bi, opset=13)
    path = tmp_path / "m.onnx"
    to_onnx(bi, path)
    with pytest.raises(edgelstm.EdgeLSTMError, match="already exists"):
        to_onnx(bi, path)
    to_onnx(bi, path, force=True)


def test_custom_activations_exported():
    model = _make(LSTM, {"activations": ["hardsigmoid", ["leakyrelu", 0.1], "softsign"]}, 1, True,
                  "frame", False)
    proto = build_onnx(model)
    out = run_onnx(proto, {"input": _x()})["output"]
    np.testing.assert_allclose(out, _native(model, _x())[0], atol=ATOL)


@pytest.mark.parametrize("name,cls,opts,ref_ok", CELLS, ids=[c[0] for c in CELLS])
@pytest.mark.parametrize("streaming", [False, True])
def test_round_trip_exact_weights(tmp_path, name, cls, opts, ref_ok, streaming):
    for bidir, head, normalize in ((False, "frame", True), (not streaming, "sequence", False),
                                   (False, None, False)):
        model = _make(cls, opts, 2, bidir, head, normalize)
        path = to_onnx(model, tmp_path / f"m{bidir}{head}.onnx", streaming=streaming)
        back = from_onnx(path)
        assert back.config()["rnn" if "rnn" in back.config() else "model_type"] is not None
        src = dict(tree_flatten(model.parameters()))
        dst = dict(tree_flatten(back.parameters()))
        prefix = "" if isinstance(model, SequenceModel) else "rnn."
        for k, v in src.items():
            np.testing.assert_array_equal(np.array(dst[prefix + k]), np.array(v), err_msg=k)
        rnn_src = getattr(model, "rnn", model)
        assert back.rnn.config() == rnn_src.config()


@pytest.mark.parametrize("head", ["frame", "sequence"])
def test_time_major_model(head, tmp_path):
    mx.random.seed(3)
    model = SequenceModel(LSTM(I, H, num_layers=2, batch_first=False), C, head=head)
    model.eval()
    x = _x().transpose(1, 0, 2).copy()  # (T, B, I)
    path = to_onnx(model, tmp_path / "tm.onnx")
    got = run_onnx(path, {"input": x})["output"]
    np.testing.assert_allclose(got, np.array(model(mx.array(x))), atol=ATOL, rtol=0)
    back = from_onnx(path)
    assert back.rnn.batch_first is False
    np.testing.assert_allclose(np.array(back(mx.array(x))), got, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name,cls,opts,ref_ok", CELLS, ids=[c[0] for c in CELLS])
def test_mlx_runner_executes_exports(name, cls, opts, ref_ok):
    """edgelstm run --backend mlx on exported graphs (plain and streaming)."""
    x = _x()
    for bidir, head, streaming in ((True, "sequence", False), (False, "frame", True)):
        model = _make(cls, opts, 2, bidir, head, True)
        proto = build_onnx(model, streaming=streaming)
        feeds = {"input": x}
        if streaming:
            z = np.zeros((2, B, H), np.float32)
            feeds.update({"h0": z, **({"c0": z} if cls is LSTM else {})})
        got = run_onnx(proto, feeds, backend="mlx")
        ort_out = run_onnx(proto, feeds)
        assert list(got) == list(ort_out)
        for k in got:
            np.testing.assert_allclose(got[k], ort_out[k], atol=ATOL, rtol=0, err_msg=k)
        np.testing.assert_allclose(got["output"], _native(model, x)[0], atol=ATOL, rtol=0)
