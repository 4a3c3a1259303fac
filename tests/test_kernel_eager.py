"""Eager kernel calls: small batches whose inputs are already computed run before
the call returns (no hand-off to MLX's CPU stream), with exactly the lazy
primitive's results; traced, uncomputed or large-batch calls stay lazy."""

from __future__ import annotations

import io

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from edgelstm.fast import dispatch as kernels
from edgelstm.nn.layers import GRU, LSTM, RNN
from edgelstm.quantize import QuantConfig, quantize_mlx

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}"
)

I, H, T = 6, 16, 9
ATOL = 1e-5  # against pure MLX (another summation order)


def _is_lazy(a: mx.array) -> bool:
    """True while ``a`` is still the output of an unevaluated kernel primitive."""
    dot = io.StringIO()
    mx.export_to_dot(dot, a)
    return "EdgeLSTM" in dot.getvalue()


def _computed(*arrays):
    mx.eval(*arrays)
    return arrays


def _weights(rng, gates, in_width, int8):
    """Wx, Wh and bias of one layer (int8 with per-row scales when ``int8``)."""
    def w(cols):
        if int8:
            q = mx.array(rng.integers(-127, 128, (gates * H, cols)).astype(np.int8))
            s = mx.array(rng.uniform(0.002, 0.01, gates * H).astype(np.float32))
            return q, s
        return mx.array(rng.normal(0, 0.3, (gates * H, cols)).astype(np.float32)), None

    (wx, sx), (wh, sh) = w(in_width), w(H)
    bias = mx.array(rng.normal(0, 0.1, gates * H).astype(np.float32))
    mx.eval(wx, wh, bias, *(s for s in (sx, sh) if s is not None))
    return wx, sx, wh, sh, bias


CELLS = {"lstm": 4, "gru": 3, "rnn": 1}


def _seq_call(kind, x, wts, eager):
    wx, sx, wh, sh, bias = wts
    fn = getattr(kernels._ext, f"{kind}_seq")
    kw = {"Wx": wx, "bias": bias, "Wx_scales": sx, "Wh_scales": sh, "batch_first": True,
          "eager": eager}
    return fn(x, wh, **kw)


def _stack_call(kind, x, layers, eager):
    fn = getattr(kernels._ext, f"{kind}_stack")
    wx, sx, wh, sh, bias = (list(v) for v in zip(*layers, strict=True))
    if all(s is None for s in sx):
        sx, sh = [], []
    return fn(x, wx, wh, bias, Wx_scales=sx, Wh_scales=sh, batch_first=True, eager=eager)


@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("kind", list(CELLS))
def test_eager_equals_lazy_bit_for_bit(kind, int8, rng):
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    mx.eval(x)
    one = _weights(rng, CELLS[kind], I, int8)
    two = [one, _weights(rng, CELLS[kind], H, int8)]
    for call, arg in ((_seq_call, one), (_stack_call, two)):
        now = call(kind, x, arg, True)
        later = call(kind, x, arg, False)
        assert not any(_is_lazy(a) for a in now), "computed inputs: eager outputs expected"
        assert all(_is_lazy(a) for a in later)
        for a, b in zip(now, later, strict=True):
            np.testing.assert_array_equal(np.array(a), np.array(b))


def _lstm():
    m = LSTM(I, H, num_layers=2)
    m.eval()
    mx.eval(m.parameters())
    return m


def test_module_streams_eagerly_and_matches_pure_mlx(rng):
    m = _lstm()
    state = None
    for _ in range(3):  # state carried chunk to chunk, as a stream does
        x = mx.array(rng.normal(0, 1, (1, 4, I)).astype(np.float32))
        mx.eval(x)
        y, new = m(x, state)
        want_y, want_s = m(x, state, fast=False)
        assert not _is_lazy(y) and not _is_lazy(new[0]) and not _is_lazy(new[1])
        np.testing.assert_allclose(np.array(y), np.array(want_y), rtol=0, atol=ATOL)
        for a, b in zip(new, want_s, strict=True):
            np.testing.assert_allclose(np.array(a), np.array(b), rtol=0, atol=ATOL)
        state = new


def test_uncomputed_input_large_batch_and_bidirectional(rng):
    m = _lstm()
    base = mx.array(rng.normal(0, 1, (1, T, I)).astype(np.float32))
    mx.eval(base)
    y, _ = m(base * 1.0)  # x not computed yet: the primitive stays lazy
    assert _is_lazy(y)
    np.testing.assert_array_equal(np.array(y), np.array(m(base)[0]))

    big = mx.array(rng.normal(0, 1, (kernels.EAGER_MAX_BATCH + 1, T, I)).astype(np.float32))
    small = big[: kernels.EAGER_MAX_BATCH]
    mx.eval(big, small)
    assert _is_lazy(m(big)[0])  # beyond EAGER_MAX_BATCH: lazy (async_eval can overlap it)
    assert not _is_lazy(m(small)[0])

    bi = GRU(I, H, bidirectional=True)  # per-direction kernels, then a concatenate
    bi.eval()
    mx.eval(bi.parameters())
    y, h = bi(small)
    y_ref, h_ref = bi(small, fast=False)
    np.testing.assert_allclose(np.array(y), np.array(y_ref), rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.array(h), np.array(h_ref), rtol=0, atol=ATOL)


def test_traced_calls_stay_lazy_and_differentiate(rng):
    """Under grad and compile the inputs are tracers: the kernel must stay in the graph."""
    m = RNN(I, H, num_layers=2)
    m.train()
    mx.eval(m.parameters())
    x = mx.array(rng.normal(0, 1, (1, T, I)).astype(np.float32))
    mx.eval(x)

    def loss(params, fast):
        m.update(params)
        y, _ = m(x, fast=fast)
        return (y * y).sum()

    params = m.trainable_parameters()
    g_fast = mx.grad(loss)(params, None)
    g_pure = mx.grad(loss)(params, False)
    flat_f = dict(tree_flatten(g_fast))
    flat_p = dict(tree_flatten(g_pure))
    assert flat_f.keys() == flat_p.keys()
    for k in flat_f:
        assert float(mx.abs(flat_f[k]).max()) > 0, k  # gradients really flowed
        np.testing.assert_allclose(np.array(flat_f[k]), np.array(flat_p[k]), rtol=1e-4, atol=1e-5)

    lstm = _lstm()
    f = mx.compile(lambda a: lstm(a)[0])
    np.testing.assert_array_equal(np.array(f(x)), np.array(lstm(x)[0]))
    x2 = x + 1.0
    mx.eval(x2)
    np.testing.assert_array_equal(np.array(f(x2)), np.array(lstm(x2)[0]))


def test_int8_model_streams_eagerly(rng):
    m = quantize_mlx(_lstm(), QuantConfig())
    mx.eval(m.parameters())  # int8 weights are lazy until first computed
    x = mx.array(rng.normal(0, 1, (1, T, I)).astype(np.float32))
    mx.eval(x)
    y, _ = m(x)
    assert not _is_lazy(y)
    np.testing.assert_allclose(np.array(y), np.array(m(x, fast=False)[0]), rtol=0, atol=1e-4)



def test_streaming_backend_steps_eagerly_even_when_compiled(rng):
    """A small-batch chunk skips the compiled step: a compiled step always waits on
    MLX's stream thread, the eager kernels do not. Both give the same bits."""
    from edgelstm.nn.model import SequenceModel
    from edgelstm.streaming.backends import MLXBackend

    model = SequenceModel(LSTM(I, H, num_layers=2), num_outputs=3, head="frame")
    model.eval()
    mx.eval(model.parameters())
    x = rng.normal(0, 1, (1, 4, I)).astype(np.float32)
    compiled = MLXBackend(model, compile=True)
    y, state = compiled.run(x, compiled.zero_state(1))
    assert not any(_is_lazy(s) for s in state)
    y2, state2 = compiled.run(x, state)
    plain = MLXBackend(model, compile=False)
    y_ref, state_ref = plain.run(x, plain.zero_state(1))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(y2, plain.run(x, state_ref)[0])
    big = rng.normal(0, 1, (kernels.EAGER_MAX_BATCH + 1, 4, I)).astype(np.float32)
    y_big, _ = compiled.run(big, compiled.zero_state(len(big)))  # the compiled step
    y_big_ref, _ = plain.run(big, plain.zero_state(len(big)))
    np.testing.assert_array_equal(y_big, y_big_ref)
