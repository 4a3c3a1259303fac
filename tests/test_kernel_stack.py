"""The fused multi-layer stack (one kernel primitive per model call) against the
per-layer kernel path and the pure-MLX core (fast=False)."""

from __future__ import annotations

import itertools

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from edgelstm.fast import dispatch as kernels
from edgelstm.fast import stacks
from edgelstm.nn.layers import GRU, LSTM, RNN
from edgelstm.quantize import QuantConfig, quantize_mlx

pytestmark = pytest.mark.skipif(
    not kernels.available() or not hasattr(kernels._ext, "lstm_stack"),
    reason=f"fused stack kernels unavailable: {kernels.reason()}",
)

I, H, T = 5, 8, 7
SAME = 1e-6  # the stack runs the per-layer kernel's own routine
ATOL = 1e-5  # against pure MLX (another summation order)
KINDS = {
    "lstm": (LSTM, {}),
    "gru_lbr": (GRU, {}),
    "gru_onnx": (GRU, {"linear_before_reset": False}),
    "rnn_tanh": (RNN, {}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
}


def _model(kind, layers, **kw):
    cls, opts = KINDS[kind]
    m = cls(I, H, num_layers=layers, **opts, **kw)
    m.eval()
    mx.eval(m.parameters())
    return m


def _state(model, B, rng):
    shape = (model.num_layers * model.num_directions, B, H)
    s = [mx.array(rng.normal(0, 0.5, shape).astype(np.float32)) for _ in range(2)]
    return tuple(s) if model.cell_type == "lstm" else s[0]


def _flat(out):
    y, s = out
    return [y, *s] if isinstance(s, tuple) else [y, s]


def _close(got, want, atol):
    got, want = _flat(got), _flat(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=0, atol=atol)


PER_LAYER = {name: getattr(kernels, name) for name in ("lstm_seq", "gru_seq", "rnn_seq")}


@pytest.fixture
def per_layer(monkeypatch):
    """Run ``fn`` with the stack disabled: the per-layer kernel path."""

    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(stacks, "plan_stack", lambda *a, **k: "disabled for the test")
            for name, real in PER_LAYER.items():  # undo stack_only's patches
                m.setattr(kernels, name, real)
            return fn()

    return run


@pytest.fixture
def stack_only(monkeypatch):
    """Make every per-layer kernel call fail: passing tests prove the stack ran."""

    def boom(*a, **k):
        raise AssertionError("per-layer kernel called")

    for name in ("lstm_seq", "gru_seq", "rnn_seq"):
        monkeypatch.setattr(kernels, name, boom)


@pytest.mark.parametrize(
    "kind, layers, with_state, with_lengths, B",
    [
        (k, n, s, ln, b)
        for k, n, s, ln, b in itertools.product(
            KINDS, (1, 2, 3), (False, True), (False, True), (1, 3)
        )
        if not (ln and b == 1)
    ],
)
def test_parity_with_per_layer_kernel_and_pure_mlx(
    kind, layers, with_state, with_lengths, B, rng, per_layer, monkeypatch
):
    model = _model(kind, layers)
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    state = _state(model, B, rng) if with_state else None
    lengths = mx.array([T, 2, 5][:B], dtype=mx.int32) if with_lengths else None
    want = per_layer(lambda: model(x, state, lengths=lengths))
    ref = model(x, state, lengths=lengths, fast=False)
    assert isinstance(stacks.plan_stack(model, x, state, None), list)
    for name in ("lstm_seq", "gru_seq", "rnn_seq"):
        monkeypatch.setattr(kernels, name, None)  # the stack must not need them
    got = model(x, state, lengths=lengths)
    _close(got, want, SAME)
    _close(got, ref, ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_time_major_and_unbatched(kind, rng, per_layer, stack_only):
    model = _model(kind, 2, batch_first=False)
    B = 3
    x = mx.array(rng.normal(0, 1, (T, B, I)).astype(np.float32))
    state = _state(model, B, rng)
    lengths = [T, 3, 6]
    got = model(x, state, lengths=lengths)
    assert got[0].shape == (T, B, H)
    _close(got, per_layer(lambda: model(x, state, lengths=lengths)), SAME)
    _close(got, model(x, state, lengths=lengths, fast=False), ATOL)

    xu = x[:, 0]  # unbatched (T, I); state (L, H)
    su = tuple(s[:, 0] for s in state) if isinstance(state, tuple) else state[:, 0]
    got = model(xu, su)
    assert got[0].shape == (T, H)
    _close(got, per_layer(lambda: model(xu, su)), SAME)
    _close(got, model(xu, su, fast=False), ATOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("B", [1, 3])
def test_int8_quantized_stack(kind, B, rng, per_layer, stack_only):
    model = quantize_mlx(_model(kind, 3))
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    state = _state(model, B, rng)
    lengths = mx.array([T, 4, 1][:B], dtype=mx.int32)
    plan = stacks.plan_stack(model, x, state, None)
    assert isinstance(plan, list) and all(a["Wh"].dtype == mx.int8 for a in plan)
    got = model(x, state, lengths=lengths)
    _close(got, per_layer(lambda: model(x, state, lengths=lengths)), SAME)
    _close(got, model(x, state, lengths=lengths, fast=False), ATOL)


def test_int8_recurrent_weights_only(rng, per_layer, stack_only):
    model = quantize_mlx(_model("lstm", 2), QuantConfig(targets=("Wh",)))
    plan = stacks.plan_stack(model, mx.zeros((1, T, I)), None, None)
    assert [a["Wx_scales"] is None and a["Wh_scales"] is not None for a in plan] == [True] * 2
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    _close(model(x), per_layer(lambda: model(x)), SAME)


def test_4bit_falls_back(rng):
    model = LSTM(32, 32, num_layers=2)  # group-wise 4-bit needs widths divisible by 32
    model = quantize_mlx(model, QuantConfig(bits=4))
    x = mx.array(rng.normal(0, 1, (2, T, 32)).astype(np.float32))
    assert "no fused-kernel weights" in stacks.plan_stack(model, x, None, None)
    _close(model(x), model(x, fast=False), ATOL)


@pytest.mark.parametrize(
    "kind, kw, why",
    [
        ("lstm", {"bidirectional": True}, "unidirectional"),
        ("gru_lbr", {"bidirectional": True}, "unidirectional"),
        ("lstm", {"peephole": True}, "peephole"),
        ("lstm", {"clip": 3.0}, "clip"),
        ("rnn_tanh", {"activations": ["hardsigmoid"]}, "tanh or relu"),
    ],
)
def test_unsupported_configs_fall_back_identically(kind, kw, why, rng, per_layer, monkeypatch):
    model = _model(kind, 2, **kw)
    B = 2
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    state = _state(model, B, rng)
    reason = stacks.plan_stack(model, x, state, None)
    assert isinstance(reason, str) and why in reason
    want = per_layer(lambda: model(x, state, lengths=[T, 3]))
    monkeypatch.setattr(kernels._ext, "lstm_stack", None)  # never reached
    _close(model(x, state, lengths=[T, 3]), want, 0)


def test_fast_false_and_dropout_in_training_never_fuse(rng, monkeypatch):
    model = _model("lstm", 2, dropout=0.5)
    x = mx.array(rng.normal(0, 1, (1, T, I)).astype(np.float32))
    assert stacks.plan_stack(model, x, None, False) == "fast=False"
    model.train()
    assert "dropout" in stacks.plan_stack(model, x, None, True)
    monkeypatch.setattr(stacks, "run_stack", None)
    model(x, fast=False)
    model.eval()
    model(x, fast=False)


def test_training_without_dropout_fuses_with_fast_true(rng, stack_only):
    model = _model("gru_lbr", 2)
    model.train()
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    _close(model(x, fast=True), model(x, fast=False), ATOL)


def test_state_not_whole_arrays_falls_back(rng, per_layer):
    model = _model("lstm", 2)
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    h, c = _state(model, 2, rng)
    per_layer_state = ([h[0], h[1]], [c[0], c[1]])
    assert "whole (L, B, H)" in stacks.plan_stack(model, x, per_layer_state, None)
    _close(model(x, per_layer_state), model(x, (h, c)), SAME)


def test_state_carried_across_chunks_and_compiled(rng, stack_only):
    model = _model("lstm", 2)
    x = mx.array(rng.normal(0, 1, (1, 4 * T, I)).astype(np.float32))
    whole = model(x)
    step = mx.compile(lambda xc, h, c: (lambda y, s: (y, *s))(*model(xc, (h, c))))
    state, ys = model.zero_state(1), []
    for k in range(4):
        y, *state = step(x[:, k * T : (k + 1) * T], *state)
        ys.append(y)
    _close((mx.concatenate(ys, axis=1), tuple(state)), whole, SAME)


def test_stack_gradient_matches_pure(rng):
    """The stack primitive's vjp (per-layer BPTT) against pure-MLX autodiff."""
    model = _model("lstm", 2)
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))

    def loss(m, x, fast):
        y, (h, c) = m(x, fast=fast)
        return (y * y).sum() + h.sum() + c.sum()

    _, fused = nn.value_and_grad(model, lambda m, x: loss(m, x, True))(model, x)
    _, pure = nn.value_and_grad(model, lambda m, x: loss(m, x, False))(model, x)
    for (name, a), (_, b) in zip(tree_flatten(fused), tree_flatten(pure), strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-5, err_msg=name)


def test_low_level_checks(rng):
    w = [mx.zeros((4 * H, I)), mx.zeros((4 * H, H))]
    x = mx.zeros((2, T, I))
    with pytest.raises(ValueError, match="one entry per layer"):
        kernels._ext.lstm_stack(x, w[:1], [w[1], w[1]])
    with pytest.raises(ValueError, match="layer 1: Wx must be"):
        kernels._ext.lstm_stack(x, [w[0], w[0]], [w[1], w[1]], batch_first=True)
    with pytest.raises(ValueError, match=r"h0 must be \(1, 2, 8\)"):
        kernels._ext.lstm_stack(x, w[:1], w[1:], h0=mx.zeros((2, 2, H)), batch_first=True)
