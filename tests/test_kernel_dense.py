"""A model's normalisation and head on the kernels' dense ops, and the stack plan
remembered per model: results against MLX's own ops, gradients, and when each path
(and each remembered plan) applies."""

from __future__ import annotations

import io

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from edgelstm.fast import dispatch as kernels
from edgelstm.fast import stacks
from edgelstm.nn.layers import LSTM
from edgelstm.nn.model import SequenceModel

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}"
)

I, H, C, T = 7, 20, 5, 11
ATOL = 1e-5  # another summation order than MLX's matmul


def _is_lazy(a: mx.array) -> bool:
    dot = io.StringIO()
    mx.export_to_dot(dot, a)
    return "EdgeLSTM" in dot.getvalue()


def _arr(rng, *shape, scale=1.0):
    a = mx.array(rng.normal(0, scale, shape).astype(np.float32))
    mx.eval(a)
    return a


def test_linear_matches_mlx_and_reads_a_state_row(rng):
    W, b = _arr(rng, C, H), _arr(rng, C)
    for shape in [(3, H), (2, T, H), (H,)]:
        x = _arr(rng, *shape)
        want = x @ W.T + b
        for eager in (True, False):
            got = kernels._ext.linear(x, W, b, eager=eager)
            assert got.shape == want.shape
            np.testing.assert_allclose(np.array(got), np.array(want), rtol=0, atol=ATOL)
        np.testing.assert_allclose(np.array(kernels._ext.linear(x, W)), np.array(x @ W.T),
                                   rtol=0, atol=ATOL)
    state = _arr(rng, 3, 4, H)  # (L, B, H): row -1 is the last layer
    got = kernels._ext.linear(state, W, b, row=-1, eager=True)
    np.testing.assert_array_equal(np.array(got),
                                  np.array(kernels._ext.linear(state[2], W, b, eager=True)))
    strided = _arr(rng, H, 6).T  # a transposed view: copied to row-major inside
    np.testing.assert_allclose(np.array(kernels._ext.linear(strided, W, b)),
                               np.array(strided @ W.T + b), rtol=0, atol=ATOL)
    with pytest.raises(Exception, match="row 3 is out of range"):
        kernels._ext.linear(state, W, b, row=3)
    with pytest.raises(Exception, match="W must be"):
        kernels._ext.linear(state, W.T)


def test_rows_round_alike_whatever_their_number(rng):
    """A streamed frame head equals the full pass bit for bit: a row's sums do not
    depend on how many rows come with it."""
    W, b = _arr(rng, C, H), _arr(rng, C)
    x = _arr(rng, 1, 300, H)
    full = np.array(kernels._ext.linear(x, W, b))
    parts = [np.array(kernels._ext.linear(x[:, t:t + 7], W, b, eager=True))
             for t in range(0, 300, 7)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=1), full)


def test_normalize_is_mlx_bit_for_bit(rng):
    x, mean = _arr(rng, 2, T, I), _arr(rng, I)
    std = mx.abs(_arr(rng, I)) + 0.1
    mx.eval(std)
    want = (x - mean) / std
    for eager in (True, False):
        got = kernels._ext.normalize(x, mean, std, eager=eager)
        np.testing.assert_array_equal(np.array(got), np.array(want))


def _model(head="frame", normalize=True, layers=1, hidden=H):
    m = SequenceModel(LSTM(I, hidden, num_layers=layers), num_outputs=C, head=head,
                      normalize=normalize)
    rng = np.random.default_rng(3)
    m.norm.mean = mx.array(rng.normal(0, 1, I).astype(np.float32))
    m.norm.std = mx.array(rng.uniform(0.5, 2, I).astype(np.float32))
    m.eval()
    mx.eval(m.parameters())
    return m


@pytest.mark.parametrize("head", ["frame", "sequence"])
def test_model_streams_eagerly_and_agrees_with_mlx_ops(head, rng):
    m = _model(head, layers=2)
    x = _arr(rng, 1, T, I)
    y, state = m(x, return_state=True)
    assert not _is_lazy(y) and not _is_lazy(state[0])  # norm, stack and head all eager
    y_ref, state_ref = m(x, return_state=True, fast=False)
    np.testing.assert_allclose(np.array(y), np.array(y_ref), rtol=0, atol=ATOL)
    # Unbatched (T, I) input, and a batch too large to run eagerly.
    np.testing.assert_allclose(np.array(m(x[0])), np.array(y_ref[0]), rtol=0, atol=ATOL)
    big = _arr(rng, kernels.EAGER_MAX_BATCH + 1, T, I)
    got = m(big)
    assert _is_lazy(got)
    np.testing.assert_allclose(np.array(got), np.array(m(big, fast=False)), rtol=0, atol=ATOL)


def test_gradients_flow_through_an_evaluation_mode_model(rng):
    """The dense ops have a vjp: saliency-style gradients of an eval-mode model."""
    m = _model("sequence")
    x = _arr(rng, 2, T, I)

    def loss(params, inp, fast):
        m.update(params)
        return (m(inp, fast=fast) ** 2).sum()

    params = m.trainable_parameters()
    g_x = mx.grad(loss, argnums=1)(params, x, None)
    g_x_ref = mx.grad(loss, argnums=1)(params, x, False)
    np.testing.assert_allclose(np.array(g_x), np.array(g_x_ref), rtol=1e-4, atol=1e-5)
    g_p = dict(tree_flatten(mx.grad(loss)(params, x, None)))
    g_p_ref = dict(tree_flatten(mx.grad(loss)(params, x, False)))
    assert g_p.keys() == g_p_ref.keys() and "head.weight" in g_p
    for k, v in g_p.items():
        np.testing.assert_allclose(np.array(v), np.array(g_p_ref[k]), rtol=1e-4, atol=1e-5)

    w, mean, std = _arr(rng, C, I), _arr(rng, I), mx.abs(_arr(rng, I)) + 0.5

    def f(mean, std):
        z = kernels._ext.normalize(x, mean, std)
        return (kernels._ext.linear(z, w) ** 2).sum()

    def f_ref(mean, std):
        return ((((x - mean) / std) @ w.T) ** 2).sum()

    for a, b in zip(mx.grad(f, argnums=(0, 1))(mean, std),
                    mx.grad(f_ref, argnums=(0, 1))(mean, std), strict=True):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-4, atol=1e-4)


def test_training_and_quantized_heads_keep_mlx_ops(rng):
    m = _model("sequence", hidden=32)  # MLX quantizes groups of 32 and up
    x = _arr(rng, 1, T, I)

    def on_kernel(fast):
        return m._dense_on_kernel(x, 1, m.get("head"), fast)

    m.train()
    assert not on_kernel(None)
    m.eval()
    assert on_kernel(None) and not on_kernel(False)
    nn.quantize(m, class_predicate=lambda _, mod: isinstance(mod, nn.Linear), bits=8,
                group_size=32)
    assert not on_kernel(None)
    assert m(x).shape == (1, C)


def test_stack_plan_is_remembered_until_what_it_reads_changes(rng):
    m = LSTM(I, H, num_layers=2)
    m.eval()
    mx.eval(m.parameters())
    x = _arr(rng, 1, T, I)
    first = stacks.plan_stack(m, x, None, None)
    assert isinstance(first, list)
    assert stacks.plan_stack(m, x, None, None) is first
    assert stacks.plan_stack(m, _arr(rng, 1, 3, I), None, None) is first  # T is not read
    state = (_arr(rng, 2, 1, H), _arr(rng, 2, 1, H))
    assert stacks.plan_stack(m, x, state, None) is not first
    assert isinstance(stacks.plan_stack(m, x, state[0], None), str)  # LSTM state must be a pair
    # New weights (an optimiser step, a load) give a new plan holding them.
    new_wh = mx.zeros_like(m.layers[1].forward.Wh)
    m.layers[1].forward.Wh = new_wh
    plan = stacks.plan_stack(m, x, None, None)
    assert plan is not first and plan[1]["Wh"] is new_wh
    y, _ = m(x)
    np.testing.assert_allclose(np.array(y), np.array(m(x, fast=False)[0]), rtol=0, atol=ATOL)
    assert stacks.plan_stack(m, x, None, False) == "fast=False"
    m.train()
    m.dropout, m._drop = 0.5, nn.Dropout(0.5)
    assert "dropout" in stacks.plan_stack(m, x, None, None)
