"""The MLX ONNX runner and the gate table, against onnxruntime and onnx.reference."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as TP
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm.converters import gates
from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner, run_onnx
from edgelstm.errors import DataError, UnsupportedError
from edgelstm.nn import recurrent

RTOL, ATOL = 1e-5, 1e-5
N_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset), *extra_opsets]
    m = helper.make_model(g, opset_imports=opsets)
    m.ir_version = 8  # readable by every installed runtime
    return m


def _vi(name, dtype=TP.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def _ref(model, feeds):
    sess = ReferenceEvaluator(model)
    return dict(zip(sess.output_names, sess.run(None, feeds), strict=True))


def _close(got, want, rtol=RTOL, atol=ATOL):
    for k, w in want.items():
        assert got[k].shape == w.shape, k
        np.testing.assert_allclose(got[k], w, rtol=rtol, atol=atol, err_msg=k)


def recurrent_model(
    op,
    *,
    T=5,
    B=2,
    I=3,
    H=4,
    direction="forward",
    init=False,
    seq=False,
    peep=False,
    layout=0,
    seed=0,
    **attrs,
):
    """One LSTM/GRU/RNN node with random weights (initializers); returns (model, feeds)."""
    rng = np.random.default_rng(seed)
    dirs = 2 if direction == "bidirectional" else 1
    G = N_GATES[op]

    def r(*shape):
        return rng.normal(0, 0.6, shape).astype(np.float32)

    inits = [
        numpy_helper.from_array(r(dirs, G * H, I), "W"),
        numpy_helper.from_array(r(dirs, G * H, H), "R"),
        numpy_helper.from_array(r(dirs, 2 * G * H), "B"),
    ]
    xshape = (T, B, I) if layout == 0 else (B, T, I)
    sshape = (dirs, B, H) if layout == 0 else (B, dirs, H)
    feeds = {"X": r(*xshape)}
    inputs = [_vi("X", shape=list(xshape))]
    names = ["X", "W", "R", "B", "", "", ""]
    if seq:
        names[4] = "seq"
        feeds["seq"] = rng.integers(1, T + 1, B).astype(np.int32)
        inputs.append(_vi("seq", TP.INT32, [B]))
    if init:
        names[5] = "h0"
        feeds["h0"] = r(*sshape)
        inputs.append(_vi("h0", shape=list(sshape)))
        if op == "LSTM":
            names[6] = "c0"
            feeds["c0"] = r(*sshape)
            inputs.append(_vi("c0", shape=list(sshape)))
    if peep:
        names.append("P")
        inits.append(numpy_helper.from_array(r(dirs, 3 * H), "P"))
    names = names[: 7 if op == "LSTM" else 6] if not peep else names
    while names[-1] == "":
        names.pop()
    outs = ["Y", "Y_h", "Y_c"] if op == "LSTM" else ["Y", "Y_h"]
    if direction != "forward":
        attrs["direction"] = direction
    if layout:
        attrs["layout"] = layout
    node = helper.make_node(op, names, outs, name="rnn_0", hidden_size=H, **attrs)
    return _model([node], inputs, [_vi(o) for o in outs], inits), feeds


# --- gate table ---------------------------------------------------------------


def test_reorder_blocks():
    a = np.repeat(np.arange(4), 2)  # i i f f g g o o (H=2)
    np.testing.assert_array_equal(gates.reorder(a, "ifgo", "iofg"), [0, 0, 3, 3, 1, 1, 2, 2])


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("lead", [(), (2,)])
def test_lstm_round_trips(lead):
    H, I = 3, 5
    Wx, Wh, b, p = (
        _rand(*lead, 4 * H, I),
        _rand(*lead, 4 * H, H, seed=1),
        _rand(*lead, 4 * H, seed=2),
        _rand(*lead, 3 * H, seed=3),
    )
    for to, back in [
        (gates.lstm_to_onnx, gates.lstm_from_onnx),
        (gates.lstm_to_ort_dq, gates.lstm_from_ort_dq),
    ]:
        for got, want in zip(back(*to(Wx, Wh, b, p)), (Wx, Wh, b, p), strict=True):
            np.testing.assert_array_equal(got, want)
    for got, want in zip(
        gates.lstm_from_keras(*gates.lstm_to_keras(Wx, Wh, b)), (Wx, Wh, b), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(
        gates.lstm_from_torch(*gates.lstm_to_torch(Wx, Wh, b)), (Wx, Wh, b), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    W, _, B, P = gates.lstm_to_onnx(Wx, Wh, b, p)
    assert W.shape == Wx.shape and B.shape[-1] == 8 * H and P.shape[-1] == 3 * H
    assert gates.lstm_to_ort_dq(Wx, Wh)[0].shape == (*lead, I, 4 * H)


def test_lstm_onnx_bias_is_summed_and_reordered():
    H = 2
    Wb = np.repeat(np.arange(4.0), H)  # i o f c
    Rb = np.repeat(10 * np.arange(4.0), H)
    _, _, bias, _ = gates.lstm_from_onnx(
        np.zeros((4 * H, 1)), np.zeros((4 * H, H)), np.concatenate([Wb, Rb])
    )
    np.testing.assert_array_equal(bias, np.repeat([0.0, 22.0, 33.0, 11.0], H))  # i f g o


@pytest.mark.parametrize("lead", [(), (2,)])
def test_gru_and_rnn_round_trips(lead):
    H, I = 3, 4
    Wx, Wh = _rand(*lead, 3 * H, I), _rand(*lead, 3 * H, H, seed=1)
    b, bhn = _rand(*lead, 3 * H, seed=2), _rand(*lead, H, seed=3)
    for to, back in [
        (gates.gru_to_onnx, gates.gru_from_onnx),
        (gates.gru_to_torch, gates.gru_from_torch),
    ]:
        for got, want in zip(back(*to(Wx, Wh, b, bhn)), (Wx, Wh, b, bhn), strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    if not lead:
        k, rk, kb = gates.gru_to_keras(Wx, Wh, b, bhn)
        assert kb.shape == (2, 3 * H)
        got = gates.gru_from_keras(k, rk, kb)
        for g, w in zip(got[:4], (Wx, Wh, b, bhn), strict=True):
            np.testing.assert_allclose(g, w, atol=1e-6)
        assert got[4] is True
    Wr = _rand(*lead, H, I)
    Rr = _rand(*lead, H, H, seed=1)
    br = _rand(*lead, H, seed=2)
    for g, w in zip(gates.rnn_from_onnx(*gates.rnn_to_onnx(Wr, Rr, br)), (Wr, Rr, br), strict=True):
        np.testing.assert_array_equal(g, w)


def _keras_gru_ref(x, kernel, rk, bias, reset_after):
    """Keras GRU equations (z, r, h), numpy, x (B, T, I)."""
    H = rk.shape[0]
    h = np.zeros((x.shape[0], H), np.float32)
    bi, bh = (bias[0], bias[1]) if reset_after else (bias, np.zeros(3 * H, np.float32))
    for t in range(x.shape[1]):
        xz, xr, xh = np.split(x[:, t] @ kernel + bi, 3, axis=-1)
        if reset_after:
            rz, rr, rh = np.split(h @ rk + bh, 3, axis=-1)
            z, r = 1 / (1 + np.exp(-(xz + rz))), 1 / (1 + np.exp(-(xr + rr)))
            hh = np.tanh(xh + r * rh)
        else:
            z = 1 / (1 + np.exp(-(xz + h @ rk[:, :H])))
            r = 1 / (1 + np.exp(-(xr + h @ rk[:, H : 2 * H])))
            hh = np.tanh(xh + (r * h) @ rk[:, 2 * H :])
        h = z * h + (1 - z) * hh
    return h


@pytest.mark.parametrize("reset_after", [True, False])
def test_gru_from_keras_matches_keras_equations(reset_after):
    import mlx.core as mx

    I, H = 3, 4
    k, rk = _rand(I, 3 * H), _rand(H, 3 * H, seed=1)
    bias = _rand(2, 3 * H, seed=2) if reset_after else _rand(3 * H, seed=2)
    x = _rand(2, 5, I, seed=3)
    Wx, Wh, b, bhn, lbr = gates.gru_from_keras(k, rk, bias, reset_after=reset_after)
    _, h = recurrent.gru(
        mx.array(x),
        mx.array(Wx),
        mx.array(Wh),
        mx.array(b),
        None if bhn is None else mx.array(bhn),
        linear_before_reset=lbr,
    )
    np.testing.assert_allclose(np.array(h), _keras_gru_ref(x, k, rk, bias, reset_after), atol=1e-5)


def test_torch_weights_match_torch():
    torch = pytest.importorskip("torch")
    import mlx.core as mx

    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    lstm, gru = torch.nn.LSTM(3, 4, batch_first=True), torch.nn.GRU(3, 4, batch_first=True)
    with torch.no_grad():
        y_t, _ = lstm(x)
        g_t, _ = gru(x)

    def p(m, n):
        return getattr(m, n).detach().numpy()

    names = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")
    Wx, Wh, b = gates.lstm_from_torch(*(p(lstm, n) for n in names))
    y, _ = recurrent.lstm(mx.array(x.numpy()), mx.array(Wx), mx.array(Wh), mx.array(b))
    np.testing.assert_allclose(np.array(y), y_t.numpy(), atol=1e-5)
    Wx, Wh, b, bhn = gates.gru_from_torch(*(p(gru, n) for n in names))
    g, _ = recurrent.gru(*(mx.array(a) for a in (x.numpy(), Wx, Wh, b, bhn)))
    np.testing.assert_allclose(np.array(g), g_t.numpy(), atol=1e-5)


# --- recurrent parity grid ------------------------------------------------------

VARIANTS = [
    ("LSTM", {}),
    ("GRU", {}),
    ("GRU", {"linear_before_reset": 1}),
    ("RNN", {}),
    ("RNN", {"activations": ["Relu"]}),
]
GRID = list(
    itertools.product(
        range(len(VARIANTS)), ["forward", "reverse", "bidirectional"], [False, True], [False, True]
    )
)


@pytest.mark.parametrize(("variant", "direction", "init", "seq"), GRID)
def test_recurrent_parity(variant, direction, init, seq):
    op, attrs = VARIANTS[variant]
    if "activations" in attrs and direction == "bidirectional":
        attrs = {"activations": attrs["activations"] * 2}
    model, feeds = recurrent_model(
        op, T=6, B=3, I=3, H=5, direction=direction, init=init, seq=seq, seed=variant, **attrs
    )
    got = run_onnx(model, feeds)
    _close(got, _ort(model, feeds))
    # onnx.reference silently ignores sequence_lens (and clip, input_forget) and
    # knows no Relu for RNN, so ORT alone is the oracle there
    if not seq and "activations" not in attrs:
        _close(got, _ref(model, feeds))


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize(
    "extra",
    [
        {"peep": True},
        {"peep": True, "clip": 0.7},
        {"clip": 0.5, "seq": True},
        {"input_forget": 1, "peep": True},
        {"input_forget": 1, "clip": 0.6, "seq": True, "init": True, "peep": True},
    ],
)
def test_lstm_peephole_clip_input_forget_vs_ort(direction, extra):
    # ORT clips each gate pre-activation after adding the peephole term; so does recurrent.lstm
    model, feeds = recurrent_model("LSTM", T=7, B=3, H=6, direction=direction, **extra)
    _close(run_onnx(model, feeds), _ort(model, feeds))


@pytest.mark.parametrize(
    ("op", "attrs"),
    [("GRU", {"linear_before_reset": 0}), ("GRU", {"linear_before_reset": 1}), ("RNN", {})],
)
def test_gru_rnn_clip_vs_ort(op, attrs):
    model, feeds = recurrent_model(op, T=6, B=2, H=4, clip=0.4, init=True, seq=True, **attrs)
    _close(run_onnx(model, feeds), _ort(model, feeds))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_zero_length_sequence_vs_ort(op):
    # ORT returns zero final states (not initial_h) for a sequence of length 0
    model, feeds = recurrent_model(op, init=True, seq=True, direction="bidirectional")
    feeds["seq"] = np.array([0, 5], np.int32)
    _close(run_onnx(model, feeds), _ort(model, feeds))


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
def test_layout_1_vs_reference(op, direction):
    # ORT refuses layout=1, so onnx.reference is the oracle here
    model, feeds = recurrent_model(op, layout=1, direction=direction, init=True, peep=op == "LSTM")
    _close(run_onnx(model, feeds), _ref(model, feeds))


@pytest.mark.parametrize(
    ("acts", "alpha", "beta"),
    [
        (["Tanh", "LeakyRelu", "HardSigmoid"], [0.3, 0.4], [0.2]),
        (["HardSigmoid", "Tanh", "ScaledTanh"], [0.3, 0.8], [0.4, 1.5]),
        (["Sigmoid", "Softsign", "Elu"], [], []),
        (["HardSigmoid", "Softplus", "Affine"], [0.25, 0.9], [0.45, 0.1]),
    ],
)
def test_lstm_activations_vs_ort(acts, alpha, beta):
    # alpha/beta are consumed in order by the activations that take them (as in ORT)
    attrs = {"activations": acts}
    if alpha:
        attrs["activation_alpha"] = alpha
    if beta:
        attrs["activation_beta"] = beta
    model, feeds = recurrent_model("LSTM", init=True, **attrs)
    _close(run_onnx(model, feeds), _ort(model, feeds))


def test_optional_outputs_skipped_and_weights_as_inputs():
    model, feeds = recurrent_model("LSTM", direction="bidirectional", init=True)
    node = model.graph.node[0]
    node.output[:] = ["", "Y_h"]
    del model.graph.output[:]
    model.graph.output.append(_vi("Y_h"))
    # move the weights from initializers to graph inputs, as the conformance tests do
    for t in list(model.graph.initializer):
        feeds[t.name] = numpy_helper.to_array(t)
        model.graph.input.append(_vi(t.name, shape=list(t.dims)))
    del model.graph.initializer[:]
    runner = OnnxMLXRunner(model)
    assert runner.output_names == ["Y_h"] and "W" in runner.input_names
    got = runner.run(feeds)
    _close(got, _ort(model, feeds))
    _close(runner.run(feeds), got, rtol=0, atol=0)  # reusable


# --- DynamicQuantizeLSTM ----------------------------------------------------------


def _dq_model(per_channel, seed=0, direction="bidirectional"):
    """A hand-built com.microsoft.DynamicQuantizeLSTM plus its dequantized float LSTM twin."""
    rng = np.random.default_rng(seed)
    T, B, I, H = 5, 2, 3, 4
    dirs = 2 if direction == "bidirectional" else 1
    W = rng.normal(0, 0.5, (dirs, 4 * H, I)).astype(np.float32)
    R = rng.normal(0, 0.5, (dirs, 4 * H, H)).astype(np.float32)
    Bb = rng.normal(0, 0.5, (dirs, 8 * H)).astype(np.float32)

    def quant(w):  # w [dirs, K, 4H], symmetric int8
        axes = (1,) if per_channel else (1, 2)
        scale = (np.abs(w).max(axis=axes) / 127).astype(np.float32)
        s = scale[:, None, :] if per_channel else scale[:, None, None]
        return np.clip(np.round(w / s), -127, 127).astype(np.int8), scale

    Wq, ws = quant(gates.onnx_to_ort_dq(W))
    Rq, rs = quant(gates.onnx_to_ort_dq(R))
    zw, zr = np.zeros_like(ws, np.int8), np.zeros_like(rs, np.int8)
    names = ["W_q", "R_q", "B", "W_scale", "W_zp", "R_scale", "R_zp"]
    vals = [Wq, Rq, Bb, ws, zw, rs, zr]
    inits = [numpy_helper.from_array(v, n) for n, v in zip(names, vals, strict=True)]
    node = helper.make_node(
        "DynamicQuantizeLSTM",
        ["X", "W_q", "R_q", "B", "", "", "", "", "W_scale", "W_zp", "R_scale", "R_zp"],
        ["Y", "Y_h", "Y_c"],
        domain="com.microsoft",
        hidden_size=H,
        direction=direction,
    )
    outs = [_vi(o) for o in ("Y", "Y_h", "Y_c")]
    dq = _model(
        [node],
        [_vi("X", shape=[T, B, I])],
        outs,
        inits,
        extra_opsets=[helper.make_opsetid("com.microsoft", 1)],
    )

    def deq(q, s):
        return q.astype(np.float32) * (s[:, None, :] if per_channel else s[:, None, None])

    flt_inits = [
        numpy_helper.from_array(gates.ort_dq_to_onnx(deq(Wq, ws)), "W"),
        numpy_helper.from_array(gates.ort_dq_to_onnx(deq(Rq, rs)), "R"),
        numpy_helper.from_array(Bb, "B"),
    ]
    fnode = helper.make_node(
        "LSTM", ["X", "W", "R", "B"], ["Y", "Y_h", "Y_c"], hidden_size=H, direction=direction
    )
    flt = _model([fnode], [_vi("X", shape=[T, B, I])], outs, flt_inits)
    return dq, flt, {"X": rng.normal(0, 1, (T, B, I)).astype(np.float32)}


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_quantize_lstm(per_channel):
    dq, flt, feeds = _dq_model(per_channel)
    got = run_onnx(dq, feeds)
    # exact against the float LSTM with the same dequantized weights
    _close(got, _ort(flt, feeds))
    if not per_channel:
        # ORT also quantizes X and h at run time (u8), so only approximately equal
        want = _ort(dq, feeds)
        _close(got, want, rtol=0, atol=0.2)
        assert np.abs(got["Y"] - want["Y"]).mean() < 0.02


def test_dynamic_quantize_lstm_from_ort_quantizer(tmp_path):
    from onnxruntime.quantization import quantize_dynamic

    model, feeds = recurrent_model("LSTM", T=6, B=2, I=5, H=8, direction="bidirectional", init=True)
    onnx.save(model, tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx")
    q = onnx.load(tmp_path / "q.onnx")
    assert [n.op_type for n in q.graph.node] == ["DynamicQuantizeLSTM"]
    got, want = run_onnx(q, feeds), _ort(q, feeds)
    _close(got, want, rtol=0, atol=0.05)
    # and close to the float model: the weight-only error is small
    _close(got, _ort(model, feeds), rtol=0, atol=0.05)


# --- glue ops -----------------------------------------------------------------------


def _i64(*v):
    return np.array(v, np.int64)


_X = np.random.default_rng(7).normal(size=(2, 3, 4)).astype(np.float32)
_Q = np.random.default_rng(8).integers(-128, 127, (3, 4)).astype(np.int8)
# (op, inputs as (name, value), attrs, opset)
GLUE = [
    ("Transpose", [_X], {"perm": [1, 0, 2]}, 17),
    ("Transpose", [_X], {}, 17),
    ("Squeeze", [_X[:1], _i64(0)], {}, 17),
    ("Squeeze", [_X[:1]], {"axes": [0]}, 11),
    ("Unsqueeze", [_X, _i64(0, -1)], {}, 17),
    ("Unsqueeze", [_X], {"axes": [1]}, 11),
    ("Slice", [_X, _i64(0, 1), _i64(2, 100), _i64(0, 2), _i64(1, 2)], {}, 17),
    ("Slice", [_X, _i64(-1), _i64(-(2**62)), _i64(1), _i64(-1)], {}, 17),
    ("Gather", [_X, _i64(2, -1)], {"axis": 2}, 17),
    ("Shape", [_X], {}, 17),
    ("Shape", [_X], {"start": 1, "end": -1}, 17),
    ("Concat", [_X, _X], {"axis": -1}, 17),
    ("Reshape", [_X, _i64(0, -1)], {}, 17),
    ("Reshape", [_X, _i64(6, 4)], {"allowzero": 1}, 17),
    (
        "ConstantOfShape",
        [_i64(2, 3)],
        {"value": numpy_helper.from_array(np.array([1.5], np.float32))},
        17,
    ),
    ("Identity", [_X], {}, 17),
    ("Cast", [_X], {"to": TP.INT32}, 17),
    ("Gemm", [_X[0], _X[1].T, _X[0, 0, :3]], {"alpha": 0.5, "beta": 2.0}, 17),
    ("Gemm", [_X[0].T, _X[1], np.float32(1.0)], {"transA": 1, "transB": 1}, 17),
    ("MatMul", [_X, _X.transpose(0, 2, 1)], {}, 17),
    ("Add", [_X, _X[0, 0]], {}, 17),
    ("Sub", [_X, _X[:, :1]], {}, 17),
    ("Mul", [_X, _X], {}, 17),
    ("Div", [_X, _X + 3], {}, 17),
    ("Relu", [_X], {}, 17),
    ("Sigmoid", [_X], {}, 17),
    ("Tanh", [_X], {}, 17),
    ("Softmax", [_X], {}, 17),
    ("Softmax", [_X], {"axis": 1}, 11),
    ("LogSoftmax", [_X], {"axis": 1}, 17),
    ("Flatten", [_X], {"axis": 2}, 17),
    ("Expand", [_X[:, :1], _i64(2, 3, 4)], {}, 17),
    ("Where", [_X > 0, _X, -_X], {}, 17),
    ("Equal", [_i64(1, 2), _i64(1, 3)], {}, 17),
    ("Less", [_X, _X.mean()], {}, 17),
    ("Greater", [_X, _X.mean()], {}, 17),
    ("ReduceMean", [_X], {"axes": [1], "keepdims": 0}, 17),
    ("ReduceMean", [_X, _i64(-1)], {}, 18),
    ("Neg", [_X], {}, 17),
    ("Sqrt", [np.abs(_X)], {}, 17),
    ("Pow", [np.abs(_X), np.float32(1.5)], {}, 17),
    ("Split", [_X, _i64(1, 3)], {"axis": 2}, 17),
    ("Split", [_X], {"axis": 2, "num_outputs": 2}, 18),
    ("Dropout", [_X], {}, 17),
    ("DequantizeLinear", [_Q, np.float32(0.1), np.int8(3)], {}, 19),
    ("DequantizeLinear", [_Q, np.float32([0.1, 0.2, 0.3]), np.int8([1, 0, -1])], {"axis": 0}, 19),
    (
        "DequantizeLinear",
        [_Q.astype(np.uint8), np.float32([0.1, 0.2, 0.3, 0.4]), np.uint8([128] * 4)],
        {"axis": 1},
        19,
    ),
    ("QuantizeLinear", [_X * 30, np.float32(0.5), np.int8(2)], {}, 19),
    ("QuantizeLinear", [_X * 30, np.float32([0.5, 1, 2]), np.uint8([128, 0, 10])], {"axis": 1}, 19),
]


@pytest.mark.parametrize(
    ("op", "vals", "attrs", "opset"), GLUE, ids=[f"{g[0]}-{i}" for i, g in enumerate(GLUE)]
)
@pytest.mark.parametrize("as_input", [True, False], ids=["fed", "const"])
def test_glue_op_vs_reference(op, vals, attrs, opset, as_input):
    names = [f"in{i}" for i in range(len(vals))]
    vals = [np.asarray(v) for v in vals]
    n_out = 2 if op == "Split" else 1
    outs = [f"out{i}" for i in range(n_out)]
    node = helper.make_node(op, names, outs, **attrs)
    if as_input:  # first input fed (MLX path), the rest static (numpy path)
        inputs = [
            helper.make_tensor_value_info(
                names[0], helper.np_dtype_to_tensor_dtype(vals[0].dtype), vals[0].shape
            )
        ]
        inits = [numpy_helper.from_array(v, n) for n, v in zip(names[1:], vals[1:], strict=True)]
        feeds = {names[0]: vals[0]}
    else:  # everything static: folded at construction; outputs still come back
        inputs, feeds = [], {}
        inits = [numpy_helper.from_array(v, n) for n, v in zip(names, vals, strict=True)]
    model = _model(
        [node],
        inputs,
        [helper.make_value_info(o, onnx.TypeProto()) for o in outs],
        inits,
        opset=opset,
    )
    # onnx.reference runs opset-13 Softmax semantics for any opset; ORT knows the old 2-D form
    want = _ort(model, feeds) if op.endswith("Softmax") and opset < 13 else _ref(model, feeds)
    got = run_onnx(model, feeds)
    for o in outs:
        assert got[o].dtype == want[o].dtype, (o, got[o].dtype, want[o].dtype)
        np.testing.assert_allclose(got[o], want[o], rtol=1e-6, atol=1e-6)


def test_glue_graph_vs_ort():
    """Batch-first x -> Transpose -> LSTM (h0 from Shape/Gather/Concat/ConstantOfShape) -> heads."""
    rng = np.random.default_rng(3)
    I, H, C = 4, 6, 3
    W = rng.normal(0, 0.5, (1, 4 * H, I)).astype(np.float32)
    R = rng.normal(0, 0.5, (1, 4 * H, H)).astype(np.float32)
    Bb = rng.normal(0, 0.5, (1, 8 * H)).astype(np.float32)
    Wc = rng.normal(0, 0.5, (C, H)).astype(np.float32)
    bc = rng.normal(0, 0.5, (C,)).astype(np.float32)
    inits = [
        numpy_helper.from_array(a, n)
        for a, n in [(W, "W"), (R, "R"), (Bb, "B"), (Wc, "Wc"), (bc, "bc"), (Wc.T.copy(), "WcT")]
    ]
    inits += [
        numpy_helper.from_array(_i64(*v), n)
        for v, n in [((0,), "zero"), ((1,), "one"), ((H,), "hid"), ((1,), "ax1"), ((0,), "ax0")]
    ]
    n = helper.make_node
    nodes = [
        n("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        n("Shape", ["x"], ["shp"]),
        n("Gather", ["shp", "zero"], ["batch"], axis=0),
        n("Concat", ["one", "batch", "hid"], ["h0shape"], axis=0),
        n("ConstantOfShape", ["h0shape"], ["h0"]),
        n(
            "LSTM",
            ["xt", "W", "R", "B", "", "h0", "h0"],
            ["Y", "Y_h", ""],
            hidden_size=H,
            name="lstm_0",
        ),
        n("Squeeze", ["Y_h", "ax0"], ["last"]),
        n("Gemm", ["last", "Wc", "bc"], ["logits"], transB=1),
        n("Softmax", ["logits"], ["probs"], axis=-1),
        n("Squeeze", ["Y", "ax1"], ["ys"]),
        n("Transpose", ["ys"], ["yb"], perm=[1, 0, 2]),
        n("MatMul", ["yb", "WcT"], ["fl"]),
        n("Add", ["fl", "bc"], ["fl2"]),
        n("LogSoftmax", ["fl2"], ["frame_logp"], axis=-1),
    ]
    model = _model(
        nodes,
        [_vi("x", shape=["B", "T", I])],
        [_vi("probs", shape=["B", C]), _vi("frame_logp", shape=["B", "T", C])],
        inits,
    )
    onnx.checker.check_model(model)
    runner = OnnxMLXRunner(model)
    for B, T in [(1, 4), (3, 7)]:  # dynamic batch and time
        feeds = {"x": rng.normal(size=(B, T, I)).astype(np.float32)}
        _close(runner.run(feeds), _ort(model, feeds))


@pytest.mark.filterwarnings(
    "ignore::UserWarning", "ignore::DeprecationWarning", "ignore:Converting a tensor"
)
def test_torch_exported_lstm_vs_ort(tmp_path):
    torch = pytest.importorskip("torch")

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True)
            self.gru = torch.nn.GRU(12, 5, batch_first=True)
            self.head = torch.nn.Linear(5, 3)

        def forward(self, x):
            y, _ = self.rnn(x)
            y, h = self.gru(y)
            return torch.softmax(self.head(y[:, -1]), dim=-1)

    torch.manual_seed(0)
    x = torch.randn(2, 7, 4)
    path = tmp_path / "net.onnx"
    torch.onnx.export(
        Net().eval(),
        (x,),
        str(path),
        input_names=["x"],
        output_names=["p"],
        dynamic_axes={"x": {0: "B", 1: "T"}},
        opset_version=17,
        dynamo=False,
    )
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 5, 4)).astype(np.float32)}
    _close(run_onnx(path, feeds), _ort(onnx.load(path), feeds))


# --- errors ------------------------------------------------------------------------


def test_unsupported_attribute_message():
    model, feeds = recurrent_model("LSTM")
    model.graph.node[0].name = "lstm_0"
    model.graph.node[0].attribute.append(helper.make_attribute("foo", 1))
    with pytest.raises(UnsupportedError) as e:
        run_onnx(model, feeds)
    assert str(e.value) == "LSTM node 'lstm_0': attribute 'foo' is not supported"


def test_unsupported_op_message():
    node = helper.make_node("Gelu2", ["x"], ["y"], name="act")
    model = _model([node], [_vi("x", shape=[2])], [_vi("y")])
    with pytest.raises(UnsupportedError) as e:
        OnnxMLXRunner(model)
    assert str(e.value) == "Gelu2 node 'act': op 'Gelu2' is not supported"
    node = helper.make_node("QAttention", ["x"], ["y"], name="qa", domain="com.microsoft")
    model = _model([node], [_vi("x", shape=[2])], [_vi("y")])
    with pytest.raises(
        UnsupportedError,
        match=r"^QAttention node 'qa': op 'QAttention' \(domain 'com.microsoft'\) is not supported$",
    ):
        OnnxMLXRunner(model)


@pytest.mark.parametrize(
    ("op", "attrs", "message"),
    [
        (
            "LSTM",
            {"direction": "sideways"},
            "LSTM node 'rnn_0': attribute 'direction' = 'sideways' is not supported",
        ),
        (
            "GRU",
            {"linear_before_reset": 2},
            "GRU node 'rnn_0': attribute 'linear_before_reset' = 2 is not supported",
        ),
        (
            "RNN",
            {"activations": ["Gelu"]},
            "RNN node 'rnn_0': attribute 'activations' value 'Gelu' is not supported",
        ),
        ("RNN", {"layout": 2}, "RNN node 'rnn_0': attribute 'layout' = 2 is not supported"),
        (
            "LSTM",
            {"activations": ["Sigmoid", "Tanh", "Affine"]},
            "LSTM node 'rnn_0': attribute 'activations' value 'Affine' without explicit "
            "activation_alpha/beta is not supported",
        ),
        (
            "GRU",
            {"activations": ["Sigmoid"]},
            "GRU node 'rnn_0': attribute 'activations' with 1 names (need 2) is not supported",
        ),
    ],
)
def test_unsupported_attribute_values(op, attrs, message):
    model, feeds = recurrent_model(op, **attrs)
    with pytest.raises(UnsupportedError) as e:
        run_onnx(model, feeds)
    assert str(e.value) == message


def test_unsupported_glue_values():
    s = numpy_helper.from_array(np.full((3, 2), 0.1, np.float32), "s")
    node = helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="dq", axis=1, block_size=2)
    model = _model([node], [_vi("x", TP.INT8, [3, 4])], [_vi("y")], [s], opset=21)
    with pytest.raises(
        UnsupportedError,
        match=r"^DequantizeLinear node 'dq': attribute 'block_size' = 2 is not supported$",
    ):
        run_onnx(model, {"x": _Q})
    node = helper.make_node("Cast", ["x"], ["y"], name="c", to=TP.STRING)
    with pytest.raises(
        UnsupportedError,
        match=r"^Cast node 'c': attribute 'to': tensor type STRING is not supported$",
    ):
        run_onnx(_model([node], [_vi("x", shape=[2])], [_vi("y")]), {"x": np.zeros(2, np.float32)})


def test_feed_errors():
    model, feeds = recurrent_model("RNN")
    runner = OnnxMLXRunner(model)
    with pytest.raises(DataError, match="missing input"):
        runner.run({})
    with pytest.raises(DataError, match="unknown input"):
        runner.run({**feeds, "nope": np.zeros(1)})
    # float64 feeds are cast to the declared float32
    out = runner.run({"X": feeds["X"].astype(np.float64)})
    assert out["Y"].dtype == np.float32


@pytest.mark.parametrize("backend", ["mlx", "onnxruntime"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_converters_run_onnx_refuses_non_finite_input(tmp_path, backend, bad):
    """edgelstm.converters.run_onnx applies run_model's input policy itself."""
    from edgelstm.converters import run_onnx as run_any
    from edgelstm.errors import NonFiniteError

    m = _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", shape=[1, 3, 2])],
               [_vi("y", shape=[1, 3, 2])])
    onnx.save(m, tmp_path / "m.onnx")
    x = np.zeros((1, 3, 2), np.float32)
    np.testing.assert_array_equal(run_any(tmp_path / "m.onnx", {"x": x}, backend=backend)["y"], x)
    x[0, 2, 1] = bad
    what = "NaN" if np.isnan(bad) else "Inf"
    for model in (tmp_path / "m.onnx", m):
        with pytest.raises(NonFiniteError, match=rf"input 'x' has {what} at index \(0, 2, 1\)"):
            run_any(model, {"x": x}, backend=backend)


@pytest.mark.parametrize("n,lo,hi,mode,ok", [
    (4, 3, 3, "reflect", True), (4, -1, 2, "reflect", True), (3, -1, 2, "reflect", False),
    (3, 5, 5, "reflect", False),
    (1, 1, 0, "reflect", False), (0, 1, 1, "edge", False), (0, 0, 1, "wrap", False),
])
def test_pad_beyond_the_input_is_an_error_like_ort(n, lo, hi, mode, ok):
    """Pads a mode cannot fill (reflect past the edge, anything on an empty axis) fail
    on both runtimes; numpy would extend the signal periodically instead."""
    pads = numpy_helper.from_array(np.array([0, lo, 0, hi], np.int64), "p")
    m = _model([helper.make_node("Pad", ["x", "p"], ["y"], mode=mode)], [_vi("x", shape=[1, n])],
               [_vi("y")], [pads], opset=18)
    x = np.arange(1, n + 1, dtype=np.float32)[None]
    if ok:
        _close(OnnxMLXRunner(m).run({"x": x}), _ort(m, {"x": x}))
        return
    with pytest.raises(Exception):  # noqa: B017  (ORT raises its own types)
        _ort(m, {"x": x})
    with pytest.raises(DataError, match="Pad node"):
        OnnxMLXRunner(m).run({"x": x})
