"""int8 weights straight into the fused kernels against the expand-then-float path."""

from __future__ import annotations

import itertools

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest

from edgelstm.fast import dispatch as kernels
from edgelstm.fast import stacks
from edgelstm.nn import activations as A
from edgelstm.nn import recurrent as R
from edgelstm.nn.layers import RECURRENT
from edgelstm.nn.model import SequenceModel
from edgelstm.quantize import QuantConfig, quantize_mlx
from edgelstm.quantize.mlx_quant import (
    QuantizedGRUCell,
    QuantizedLSTMCell,
    QuantizedRNNCell,
    dequantize_rows,
    quantize_rows,
)

pytestmark = pytest.mark.skipif(
    not kernels.available() or not getattr(kernels._ext, "int8_weights", False),
    reason=f"fused int8 kernels unavailable: {kernels.reason()}",
)

ATOL = 1e-5
I, H, T = 5, 8, 7
CELLS = ["lstm", "gru_lbr", "gru_onnx", "rnn_tanh", "rnn_relu"]
GATES = {"lstm": 4, "gru_lbr": 3, "gru_onnx": 3, "rnn_tanh": 1, "rnn_relu": 1}
ACTS = {"rnn_tanh": (A.spec("tanh"),), "rnn_relu": (A.spec("relu"),)}


def _weights(cell, rng, bias=True, hidden=H):
    """Float weights already on the int8 grid: ``(q, s)`` pairs plus their expansion."""
    g = GATES[cell]
    w = {}
    for name, cols in (("Wx", I), ("Wh", hidden)):
        q, s = quantize_rows(mx.array(rng.normal(0, 0.4, (g * hidden, cols)).astype(np.float32)))
        w[name], w[name + "_scales"], w[name + "_f"] = q, s, dequantize_rows(q, s)
    w["b"] = mx.array(rng.normal(0, 0.2, (g * hidden,)).astype(np.float32)) if bias else None
    w["bhn"] = mx.array(rng.normal(0, 0.2, (hidden,)).astype(np.float32)) if g == 3 else None
    mx.eval(w)
    return w


def _expanded(cell, x, w, *, h0=None, c0=None, lengths=None, reverse=False, fast=False):
    """The reference: float (expanded) weights through ``edgelstm.nn.recurrent``."""
    kw = dict(h0=h0, lengths=lengths, reverse=reverse, fast=fast)
    if cell == "lstm":
        y, (h, c) = R.lstm(x, w["Wx_f"], w["Wh_f"], w["b"], c0=c0, **kw)
        return [y, h, c]
    if cell.startswith("gru"):
        y, h = R.gru(x, w["Wx_f"], w["Wh_f"], w["b"], w["bhn"],
                     linear_before_reset=cell == "gru_lbr", **kw)
        return [y, h]
    y, h = R.rnn(x, w["Wx_f"], w["Wh_f"], w["b"], activations=ACTS[cell], **kw)
    return [y, h]


def _int8(cell, x, w, *, h0=None, c0=None, lengths=None, reverse=False, quantized=("Wx", "Wh")):
    """The fused kernel fed the int8 weights named in ``quantized`` (others float)."""
    Wx, Wh = (w[n] if n in quantized else w[n + "_f"] for n in ("Wx", "Wh"))
    sx, sh = (w[n + "_scales"] if n in quantized else None for n in ("Wx", "Wh"))
    kw = dict(Wx_scales=sx, Wh_scales=sh)
    if cell == "lstm":
        assert kernels.why_not_lstm(x, Wx, Wh, w["b"], h0, c0, None, None, False,
                                    R.LSTM_ACTIVATIONS, **kw) is None
        y, (h, c) = kernels.lstm(x, Wx, Wh, w["b"], h0, c0, lengths, reverse, **kw)
        return [y, h, c]
    if cell.startswith("gru"):
        assert kernels.why_not_gru(x, Wx, Wh, w["b"], w["bhn"], h0, None,
                                   R.GRU_ACTIVATIONS, **kw) is None
        y, h = kernels.gru(x, Wx, Wh, w["b"], w["bhn"], h0, lengths, reverse,
                           cell == "gru_lbr", **kw)
        return [y, h]
    assert kernels.why_not_rnn(x, Wx, Wh, w["b"], h0, None, ACTS[cell], **kw) is None
    y, h = kernels.rnn(x, Wx, Wh, w["b"], h0, lengths, reverse, ACTS[cell], **kw)
    return [y, h]


def _assert_close(got, want, atol=ATOL):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=0, atol=atol)


def _case(cell, B, seed, steps=T):
    rng = np.random.default_rng(seed)
    x = mx.array(rng.normal(0, 1, (B, steps, I)).astype(np.float32))
    return x, _weights(cell, rng), rng


@pytest.mark.parametrize(
    "cell,B,reverse,use_lengths,use_state",
    [(c, b, r, ln, st) for c, b, r, ln, st in itertools.product(
        CELLS, (1, 3, 6), (False, True), (False, True), (False, True))
     if not (b == 1 and ln and st)],
)
def test_int8_kernel_matches_expand_path(cell, B, reverse, use_lengths, use_state):
    # GRU/RNN: the cached float expansion on the packed step (B=1 too: this Wh is small).
    x, w, rng = _case(cell, B, seed=B * 7 + reverse)
    kw = {"reverse": reverse}
    if use_lengths:
        kw["lengths"] = mx.array([4, T, 3, 5, 1, T][:B], dtype=mx.int32)
    if use_state:
        kw["h0"] = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))
        if cell == "lstm":
            kw["c0"] = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))
    want = _expanded(cell, x, w, **kw)
    _assert_close(_int8(cell, x, w, **kw), want)
    _assert_close(_expanded(cell, x, w, fast=True, **kw), want)  # float kernel, same weights


@pytest.mark.parametrize("cell", ["gru_lbr", "gru_onnx", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("B", [2, 3, 6])
def test_batched_int8_recurrent_weight_runs_as_its_float_expansion(cell, B):
    # From two rows on, a GRU/RNN int8 Wh is expanded once (cached per buffer) and
    # runs the float path: the same bits as the float kernel on the expanded
    # weight, on the first call, from the cache, and for new scales of the same
    # int8 buffer (the cache keys the scales too, so it never serves stale values).
    x, w, _ = _case(cell, B, seed=11)
    want = _int8(cell, x, w, quantized=())
    for _ in range(2):
        for got, ref in zip(_int8(cell, x, w, quantized=("Wh",)), want, strict=True):
            np.testing.assert_array_equal(np.array(got), np.array(ref))
    rescaled = dict(w, Wh_scales=w["Wh_scales"] * 0.5)
    rescaled["Wh_f"] = dequantize_rows(w["Wh"], rescaled["Wh_scales"])
    mx.eval(rescaled)
    want = _int8(cell, x, rescaled, quantized=())
    assert not np.array_equal(np.array(want[0]), np.array(_int8(cell, x, w, quantized=())[0]))
    for got, ref in zip(_int8(cell, x, rescaled, quantized=("Wh",)), want, strict=True):
        np.testing.assert_array_equal(np.array(got), np.array(ref))


@pytest.mark.parametrize("cell", ["gru_lbr", "gru_onnx", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("hidden", [8, 520])
def test_single_row_int8_step_by_weight_size(cell, hidden):
    # One row: while Wh's float form fits in 1 MiB it runs the packed float step on its
    # cached expansion, bit for bit the float kernel on the expanded weight; a larger Wh
    # keeps the int8 matvec (a quarter of the bytes), close to it but not the same bits.
    rng = np.random.default_rng(21)
    x = mx.array(rng.normal(0, 1, (1, 3, I)).astype(np.float32))
    w = _weights(cell, rng, hidden=hidden)
    got = [np.array(a) for a in _int8(cell, x, w, quantized=("Wh",))]
    ref = [np.array(a) for a in _int8(cell, x, w, quantized=())]
    if GATES[cell] * hidden * hidden * 4 <= 1 << 20:
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_array_equal(g, r)
    else:
        for g, r in zip(got, ref, strict=True):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=ATOL)
        assert not all(np.array_equal(g, r) for g, r in zip(got, ref, strict=True))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("quantized", [("Wh",), ("Wx",)])
@pytest.mark.parametrize("B", [1, 2])
def test_one_int8_weight_the_other_float(cell, quantized, B):
    x, w, _ = _case(cell, B, seed=3)
    _assert_close(_int8(cell, x, w, quantized=quantized), _expanded(cell, x, w))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("steps", [1, 3])
def test_few_frames_project_with_int8_matvec(cell, bias, steps):
    # <= 4 rows: the input projection runs int8 matvecs, bias accumulated.
    rng = np.random.default_rng(5)
    x = mx.array(rng.normal(0, 1, (1, steps, I)).astype(np.float32))
    w = _weights(cell, rng, bias=bias)
    _assert_close(_int8(cell, x, w), _expanded(cell, x, w))


def test_odd_widths_and_strided_weights():
    # Widths not a multiple of the 8-lane loop, and a transposed (strided) int8 Wh.
    rng = np.random.default_rng(11)
    h, i = 13, 11
    qx, sx = quantize_rows(mx.array(rng.normal(0, 0.3, (4 * h, i)).astype(np.float32)))
    qh, sh = quantize_rows(mx.array(rng.normal(0, 0.3, (4 * h, h)).astype(np.float32)))
    b = mx.array(rng.normal(0, 0.1, (4 * h,)).astype(np.float32))
    qh_strided = mx.array(np.ascontiguousarray(np.array(qh).T)).T
    x = mx.array(rng.normal(0, 1, (1, 9, i)).astype(np.float32))
    want = R.lstm(x, dequantize_rows(qx, sx), dequantize_rows(qh, sh), b, fast=False)
    got = kernels.lstm(x, qx, qh_strided, b, None, None, None, False, Wx_scales=sx, Wh_scales=sh)
    _assert_close([got[0], *got[1]], [want[0], *want[1]])


def test_kernel_rejects_bad_int8_arguments():
    rng = np.random.default_rng(0)
    w = _weights("lstm", rng)
    x = mx.zeros((1, 2, I))
    ext = kernels._ext
    with pytest.raises(ValueError, match="Wh must be float32"):
        ext.lstm_seq(x, w["Wh"], batch_first=True, Wx=w["Wx_f"])
    with pytest.raises(ValueError, match="Wh must be int8 when Wh_scales"):
        ext.lstm_seq(x, w["Wh_f"], batch_first=True, Wx=w["Wx_f"], Wh_scales=w["Wh_scales"])
    with pytest.raises(ValueError, match=r"Wh_scales must be \(32,\)"):
        ext.lstm_seq(x, w["Wh"], batch_first=True, Wx=w["Wx_f"], Wh_scales=w["Wh_scales"][:4])
    with pytest.raises(ValueError, match="Wx_scales is only used together with Wx"):
        ext.lstm_seq(mx.zeros((1, 2, 32)), w["Wh_f"], batch_first=True, Wx_scales=w["Wx_scales"])
    # The dispatch check says no (and the cell falls back) instead of raising.
    why = kernels.why_not_lstm(x, w["Wx"], w["Wh"], None, None, None, None, None, False,
                               R.LSTM_ACTIVATIONS, Wh_scales=w["Wh_scales"])
    assert "float32 only" in why
    why = kernels.why_not_lstm(x, w["Wx_f"], w["Wh"], None, None, None, None, None, False,
                               R.LSTM_ACTIVATIONS, Wh_scales=w["Wh_scales"].astype(mx.float16))
    assert "per-row scales" in why


# --- quantized cells and models ---------------------------------------------------


def _model(kind, I_=6, H_=16, layers=2, bidirectional=False, **opts):
    mx.random.seed(0)
    m = SequenceModel(RECURRENT[kind](I_, H_, num_layers=layers, bidirectional=bidirectional,
                                      **opts), num_outputs=4, head="frame")
    m.eval()
    return m


def _no_expansion(monkeypatch):
    """Make any int8 -> float expansion in the quantized cells fail loudly."""
    def boom(self, name):
        raise AssertionError(f"{name} was expanded; the int8 kernel path was not taken")

    for cls in (QuantizedLSTMCell, QuantizedGRUCell, QuantizedRNNCell):
        monkeypatch.setattr(cls, "dense", boom)


@pytest.mark.parametrize("kind,opts", [
    ("lstm", {}), ("gru", {}), ("gru", {"linear_before_reset": False}),
    ("rnn", {}), ("rnn", {"nonlinearity": "relu"}),
])
@pytest.mark.parametrize("B", [1, 3])
def test_quantized_model_end_to_end(kind, opts, B, monkeypatch):
    model = quantize_mlx(_model(kind, bidirectional=True, **opts))
    x = mx.array(np.random.default_rng(B).standard_normal((B, 12, 6)).astype(np.float32))
    lengths = mx.array([12, 5, 9][:B], dtype=mx.int32)
    want = model(x, lengths=lengths, fast=False)  # expand + pure-MLX core
    mx.eval(want)
    _no_expansion(monkeypatch)
    got = model(x, lengths=lengths)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=ATOL)


def test_quantized_streaming_chunks_carry_state(monkeypatch):
    # The 10-frame-chunk benchmark shape: state carried across kernel calls.
    model = quantize_mlx(_model("lstm"))
    rnn = model.rnn
    x = mx.array(np.random.default_rng(2).standard_normal((1, 30, 6)).astype(np.float32))
    want, _ = rnn(x, fast=False)
    mx.eval(want)
    _no_expansion(monkeypatch)
    state, ys = None, []
    for t in range(0, 30, 10):
        y, state = rnn(x[:, t:t + 10], state)
        ys.append(y)
    np.testing.assert_allclose(np.array(mx.concatenate(ys, axis=1)), np.array(want),
                               rtol=0, atol=ATOL)


def test_partial_targets_use_the_kernel(monkeypatch):
    model = quantize_mlx(_model("gru"), QuantConfig(targets=["Wh"]))
    x = mx.array(np.random.default_rng(4).standard_normal((1, 8, 6)).astype(np.float32))
    want = model(x, fast=False)
    mx.eval(want)
    calls = []
    real = kernels.gru
    monkeypatch.setattr(kernels, "gru", lambda *a, **k: calls.append(k) or real(*a, **k))
    # The per-layer path (a one-primitive stack is the default; test_kernel_stack.py).
    monkeypatch.setattr(stacks, "plan_stack", lambda *a, **k: "per-layer path under test")
    got = model(x)
    assert calls and all(k["Wx_scales"] is None and k["Wh_scales"] is not None for k in calls)
    np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind,opts,config", [
    ("lstm", {"clip": 3.0}, QuantConfig()),       # unsupported by the kernel
    ("lstm", {"peephole": True}, QuantConfig()),
    ("lstm", {}, QuantConfig(bits=4)),            # 4-bit: always expanded
])
def test_unsupported_configs_fall_back_to_expansion(kind, opts, config):
    model = quantize_mlx(_model(kind, I_=32, H_=32, **opts), config)
    x = mx.array(np.random.default_rng(6).standard_normal((1, 8, 32)).astype(np.float32))
    np.testing.assert_allclose(np.array(model(x)), np.array(model(x, fast=False)),
                               rtol=0, atol=ATOL)


def test_fast_false_never_reaches_the_int8_kernel(monkeypatch):
    model = quantize_mlx(_model("rnn"))
    monkeypatch.setattr(kernels, "rnn", lambda *a, **k: pytest.fail("kernel called"))
    x = mx.zeros((1, 4, 6))
    mx.eval(model(x, fast=False))
