"""The LSTM training forward that saves its activations for the gradient.

With ``train`` (a module in training mode) and autodiff tracing the call, the
fused LSTM forward also outputs the gate activations and the states each step
read, and the backward reads them instead of recomputing the forward. Both
paths run the same gate arithmetic on the same projected input, so with the
projection outside the kernel the gradients are the same bits as the
recomputing path's (which test_kernel_grad.py checks against pure-MLX autodiff
and PyTorch). With the projection inside, the recompute projects with another
matmul (last-bit differences from ~8 input features), so there the two agree to
float32 rounding. ``grad_counts`` shows which path a backward took.
"""

from __future__ import annotations

import io
import itertools
import re

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gradient_checks import distinct_loss as _loss
from mlx.utils import tree_flatten

from edgelstm.fast import dispatch as kernels
from edgelstm.fast import stacks
from edgelstm.nn.layers import LSTM

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}")

T, I, H = 7, 5, 20  # H not a multiple of the 16-unit packing: partial blocks too
# Saved vs recomputed activations one rounding apart, through T steps of BPTT.
RTOL, ATOL = 1e-4, 1e-6


def _arr(rng, shape, scale=0.5):
    return mx.array(rng.normal(0, scale, shape).astype(np.float32))


def _counts():
    """(saved, recomputed) backward runs so far."""
    return kernels._ext.grad_counts()


def _assert_same_bits(got, want):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_array_equal(np.array(g), np.array(w), err_msg=f"array {k}")


def _assert_close(got, want):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=RTOL, atol=ATOL,
                                   err_msg=f"array {k}")


def _seq_grads(args, lengths, reverse, batch_first, project, train):
    """Loss, outputs and gradients of one lstm_seq call over every float input."""
    x, Wx, Wh, b, h0, c0 = args

    def f(x, Wh, Wx, b, h0, c0):
        xin = x if project else x @ Wx.T + b  # xp given: the projection outside
        y, (h, c) = kernels.lstm_seq(
            xin, Wh, h0, c0, lengths, reverse=reverse, batch_first=batch_first,
            Wx=Wx if project else None, bias=b if project else None, train=train)
        return _loss([y, h, c]), (y, h, c)

    (loss, outs), grads = mx.value_and_grad(f, argnums=(0, 1, 2, 3, 4, 5))(
        x, Wh, Wx, b, h0, c0)
    mx.eval(loss, outs, grads)
    return [loss, *outs, *grads]


@pytest.mark.parametrize("B", [1, 4, 9])  # one-row tiles, 3-row tiles, the blocked step
@pytest.mark.parametrize(("reverse", "lengths", "batch_first", "project"), [
    (False, False, True, False), (True, False, True, False), (False, True, True, False),
    (True, True, False, False), (False, False, False, False), (True, True, True, True),
    (False, True, False, True),
])
def test_saved_gradients_match_recomputed(B, reverse, lengths, batch_first, project, rng):
    """Same bits on a projected input; with Wx, the forward is unchanged to the bit
    and the gradients agree to float32 rounding."""
    I = 24  # wide enough that the two projections round differently
    x = _arr(rng, (B, T, I) if batch_first else (T, B, I), 1.0)
    args = [x, _arr(rng, (4 * H, I)), _arr(rng, (4 * H, H)), _arr(rng, (4 * H,)),
            _arr(rng, (B, H)), _arr(rng, (B, H))]
    lens = mx.array(([T, 2, 0] * B)[:B], dtype=mx.int32) if lengths else None
    before = _counts()
    want = _seq_grads(args, lens, reverse, batch_first, project, train=False)
    mid = _counts()
    got = _seq_grads(args, lens, reverse, batch_first, project, train=True)
    after = _counts()
    assert mid[0] == before[0] and mid[1] == before[1] + 1  # recomputed
    assert after[0] == mid[0] + 1 and after[1] == mid[1]  # read the saved activations
    _assert_same_bits(got[:4], want[:4])  # loss, y, h_n, c_n: the forward is unchanged
    if project:
        _assert_close(got[4:], want[4:])
    else:
        _assert_same_bits(got[4:], want[4:])  # all six gradients


def _model_grads(model, x, state, lengths):
    def loss(m, x, state):
        y, s = m(x, state, lengths=lengths)
        return _loss([y, *s])

    mx.random.seed(1)  # the same dropout masks for every call
    v, g = nn.value_and_grad(model, loss)(model, x, state)
    gs = [] if state is None else mx.grad(lambda s: loss(model, x, s))(state)
    mx.eval(v, g, gs)
    return [v, *(a for _, a in sorted(tree_flatten(g))), *gs]


@pytest.mark.parametrize(("layers", "bidirectional", "batch_first"), [
    (1, False, True), (3, False, False), (2, True, True),
])
def test_module_in_training_saves_and_matches_eval(layers, bidirectional, batch_first, rng):
    """A module in training mode takes the saving path (the stack primitive, or one
    fused call per layer and direction when bidirectional); in eval mode it
    recomputes. Without dropout both agree to float32 rounding."""
    B = 4
    model = LSTM(I, H, num_layers=layers, bidirectional=bidirectional,
                 batch_first=batch_first)
    mx.eval(model.parameters())
    x = _arr(rng, (B, T, I) if batch_first else (T, B, I), 1.0)
    shape = (layers * model.num_directions, B, H)
    state = (_arr(rng, shape), _arr(rng, shape))
    lengths = mx.array([T, 3, 1, 0], dtype=mx.int32)
    cells = layers * model.num_directions
    model.eval()
    before = _counts()
    want = _model_grads(model, x, state, lengths)
    mid = _counts()
    model.train()
    if not bidirectional:
        assert isinstance(stacks.plan_stack(model, x, state, None), list)
    got = _model_grads(model, x, state, lengths)
    after = _counts()
    assert (mid[0] - before[0], mid[1] - before[1]) == (0, 2 * cells)  # two grads each
    assert (after[0] - mid[0], after[1] - mid[1]) == (2 * cells, 0)
    _assert_close(got, want)


def test_legacy_switch_restores_the_recomputing_backward(rng, monkeypatch):
    """EDGELSTM_GRAD_LEGACY=1: training recomputes the forward again (and the weight
    gradients go through sgemm), as the backward did before the saving forward;
    the default backward agrees with it to float32 rounding."""
    model = LSTM(I, H, num_layers=2)
    mx.eval(model.parameters())
    x = _arr(rng, (3, T, I), 1.0)
    model.train()
    default = _model_grads(model, x, None, None)
    monkeypatch.setenv("EDGELSTM_GRAD_LEGACY", "1")
    model.eval()
    want = _model_grads(model, x, None, None)
    model.train()
    before = _counts()
    got = _model_grads(model, x, None, None)
    after = _counts()
    assert after[0] == before[0] and after[1] == before[1] + 2
    _assert_same_bits(got, want)
    _assert_close(default, got)


def test_dropout_between_layers_saves_per_layer(rng):
    """Dropout in training runs one fused call per layer; each saves, and the
    gradients match pure-MLX autodiff with the same dropout masks."""
    model = LSTM(I, H, num_layers=3, dropout=0.3)
    model.train()
    mx.eval(model.parameters())
    x = _arr(rng, (3, T, I), 1.0)

    def grads(fast):
        mx.random.seed(1)
        _, g = nn.value_and_grad(model, lambda m, x: _loss([m(x, fast=fast)[0]]))(model, x)
        mx.eval(g)
        return dict(tree_flatten(g))

    before = _counts()
    got = grads(None)
    after = _counts()
    assert (after[0] - before[0], after[1] - before[1]) == (3, 0)
    want = grads(False)
    assert got.keys() == want.keys()
    for k in sorted(want):
        np.testing.assert_allclose(np.array(got[k]), np.array(want[k]), rtol=1e-4, atol=1e-5,
                                   err_msg=k)


@pytest.mark.parametrize("B", [2, 12])
def test_threaded_training_forward_saves_the_same_bits(B, rng):
    """Step threads each save their own hidden units: any count gives the same bits."""
    ext = kernels._ext
    default_min = ext.step_min_macs()
    ext.set_step_backoff(False)
    args = [_arr(rng, (B, T, I), 1.0), _arr(rng, (4 * H, I)), _arr(rng, (4 * H, H)),
            _arr(rng, (4 * H,)), _arr(rng, (B, H)), _arr(rng, (B, H))]
    lens = mx.array(([T, 4] * B)[:B], dtype=mx.int32)
    try:
        kernels.set_recurrent_threads(1)
        want = _seq_grads(args, lens, False, True, True, train=True)
        kernels.set_recurrent_threads(2)
        ext.set_step_min_macs(1)  # a team even for this small step
        got = _seq_grads(args, lens, False, True, True, train=True)
        assert kernels._ext.last_step_threads() == 2
    finally:
        kernels.set_recurrent_threads(0)
        ext.set_step_min_macs(default_min)
        ext.set_step_backoff(True)
    _assert_same_bits(got, want)


def _stack_outputs(dot: str) -> int:
    """Outputs of the (one) EdgeLSTMRecurrentStack node in an export_to_dot graph."""
    node = re.search(r'(\d+) \[label ="EdgeLSTMRecurrentStack"', dot).group(1)
    return len(re.findall(rf"^{node} -> ", dot, flags=re.M))


def test_inference_and_eval_save_nothing(rng):
    """Only a training forward under autodiff has the saved outputs: a module in
    training mode called without autodiff, and one in eval mode under autodiff,
    build the plain three-output primitive (no extra memory or time)."""
    model = LSTM(I, H, num_layers=1)
    mx.eval(model.parameters())
    x = _arr(rng, (16 + 1, T, I), 1.0)  # past the eager batch: the graph stays lazy

    def dot_of(train, traced):
        model.train(train)
        if traced:
            outs, vjps = mx.vjp(lambda x: model(x)[0], [x], [mx.ones((17, T, H))])
            arrays = [*outs, *vjps]
        else:
            arrays = [model(x)[0]]
        buf = io.StringIO()
        mx.export_to_dot(buf, *arrays)
        return buf.getvalue()

    assert _stack_outputs(dot_of(True, True)) == 3 + 4  # y, h_n, c_n + saved
    assert _stack_outputs(dot_of(False, True)) == 3
    assert _stack_outputs(dot_of(True, False)) == 3
    # Training mode without autodiff: the same outputs as eval mode.
    model.train()
    y_train = model(x)[0]
    model.eval()
    _assert_same_bits([y_train], [model(x)[0]])


def test_compiled_training_step_saves(rng):
    """mx.compile over value_and_grad: the traced forward saves too."""
    model = LSTM(I, H, num_layers=2)
    model.train()
    mx.eval(model.parameters())
    x = _arr(rng, (3, T, I), 1.0)
    params = model.trainable_parameters()

    def loss(params, x):
        model.update(params)
        return _loss([model(x)[0]])

    before = _counts()
    _, got = mx.compile(mx.value_and_grad(loss))(params, x)
    mx.eval(got)
    after = _counts()
    assert after[0] - before[0] == 2 and after[1] == before[1]
    model.update(params)
    _, want = mx.value_and_grad(loss)(params, x)  # not compiled: the same bits
    got, want = dict(tree_flatten(got)), dict(tree_flatten(want))
    _assert_same_bits([got[k] for k in sorted(got)], [want[k] for k in sorted(want)])


@pytest.mark.parametrize(("grad_x", "layers"), list(itertools.product([False, True], [1, 2])))
def test_input_gradient_only_when_asked(grad_x, layers, rng):
    """The backward skips the input's gradient unless autodiff asks for it; the
    weights' gradients are the same bits either way."""
    model = LSTM(I, H, num_layers=layers)
    model.train()
    mx.eval(model.parameters())
    x = _arr(rng, (3, T, I), 1.0)

    def loss(m, x):
        return _loss([m(x)[0]])

    _, gw = nn.value_and_grad(model, loss)(model, x)  # x not differentiated
    want = dict(tree_flatten(gw))
    if grad_x:
        gx = mx.grad(lambda x: loss(model, x))(x)
        ref = mx.grad(lambda x: _loss([model(x, fast=False)[0]]))(x)
        np.testing.assert_allclose(np.array(gx), np.array(ref), rtol=1e-4, atol=1e-5)

        def both(params, x):
            model.update(params)
            return loss(model, x)

        gw2, _ = mx.grad(both, argnums=(0, 1))(model.trainable_parameters(), x)
        got = dict(tree_flatten(gw2))
        _assert_same_bits([got[k] for k in sorted(got)], [want[k] for k in sorted(want)])
