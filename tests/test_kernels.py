"""The fused C++ kernels (edgelstm_kernels) against the pure-MLX core (fast=False)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import zlib

import mlx.core as mx
import numpy as np
import pytest

from edgelstm.errors import UnsupportedError
from edgelstm.fast import dispatch as kernels
from edgelstm.nn import activations as A
from edgelstm.nn import recurrent as R

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}"
)

ATOL = 1e-5
I, H, T = 5, 8, 7
CELLS = ["lstm", "gru_lbr", "gru_onnx", "rnn_tanh", "rnn_relu"]


def _weights(cell, rng):
    g = {"lstm": 4, "gru_lbr": 3, "gru_onnx": 3}.get(cell, 1)
    w = {
        "Wx": rng.normal(0, 0.4, (g * H, I)),
        "Wh": rng.normal(0, 0.4, (g * H, H)),
        "b": rng.normal(0, 0.2, (g * H,)),
    }
    if cell.startswith("gru"):
        w["bhn"] = rng.normal(0, 0.2, (H,))
    return {k: mx.array(v.astype(np.float32)) for k, v in w.items()}


def _call(cell, x, w, *, h0=None, c0=None, lengths=None, reverse=False, fast=None):
    """Run ``cell`` through edgelstm.nn.recurrent; returns a flat list of outputs."""
    kw = dict(h0=h0, lengths=lengths, reverse=reverse, fast=fast)
    if cell == "lstm":
        y, (h, c) = R.lstm(x, w["Wx"], w["Wh"], w["b"], c0=c0, **kw)
        return [y, h, c]
    if cell.startswith("gru"):
        lbr = cell == "gru_lbr"
        y, h = R.gru(x, w["Wx"], w["Wh"], w["b"], w["bhn"], linear_before_reset=lbr, **kw)
        return [y, h]
    acts = (A.spec("relu"),) if cell == "rnn_relu" else (A.spec("tanh"),)
    y, h = R.rnn(x, w["Wx"], w["Wh"], w["b"], activations=acts, **kw)
    return [y, h]


def _assert_close(got, want, atol=ATOL, rtol=0.0):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=rtol, atol=atol)


@needs_kernels
@pytest.mark.parametrize(
    "cell,reverse,with_lengths,with_state,B",
    list(itertools.product(CELLS, [False, True], [False, True], [False, True], [1, 3])),
)
def test_parity_with_pure_mlx(cell, reverse, with_lengths, with_state, B):
    rng = np.random.default_rng(
        zlib.crc32(repr((cell, reverse, with_lengths, with_state, B)).encode())
    )
    w = _weights(cell, rng)
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    lengths = [T, 3, 0][:B] if with_lengths else None
    if with_lengths and B == 1:
        lengths = [4]
    h0 = c0 = None
    if with_state:
        h0 = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))
        c0 = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32)) if cell == "lstm" else None
    kw = dict(h0=h0, c0=c0, lengths=lengths, reverse=reverse)
    fast = _call(cell, x, w, fast=True, **kw)
    slow = _call(cell, x, w, fast=False, **kw)
    _assert_close(fast, slow)
    if with_lengths:  # zero past each length, as ONNX sequence_lens
        for b, n in enumerate(lengths):
            assert float(mx.abs(fast[0][b, n:]).max() if n < T else 0.0) == 0.0


@needs_kernels
@pytest.mark.parametrize("cell", CELLS)
def test_large_pre_activations_saturate_like_mlx(cell, rng):
    w = {k: v * 10 for k, v in _weights(cell, rng).items()}
    x = mx.array(rng.normal(0, 3, (2, T, I)).astype(np.float32))
    # relu RNN grows to ~1e5 here: compare relatively (matmul summation order).
    rtol = 1e-5 if cell == "rnn_relu" else 0.0
    _assert_close(_call(cell, x, w, fast=True), _call(cell, x, w, fast=False), atol=1e-4, rtol=rtol)


@needs_kernels
@pytest.mark.parametrize("cell", CELLS)
def test_non_contiguous_inputs(cell, rng):
    w = _weights(cell, rng)
    B = 3
    # x transposed from (T, B, I), Wh a transposed copy, h0 a strided slice.
    x = mx.array(rng.normal(0, 1, (T, B, I)).astype(np.float32)).transpose(1, 0, 2)
    wt = dict(w, Wh=mx.array(np.ascontiguousarray(np.array(w["Wh"]).T)).T)
    h0 = mx.array(rng.normal(0, 0.5, (B, 2 * H)).astype(np.float32))[:, ::2]
    c0 = mx.broadcast_to(mx.array(rng.normal(0, 0.5, (1, H)).astype(np.float32)), (B, H))
    c0 = c0 if cell == "lstm" else None
    lengths = mx.array([5, 7, 2, 9], dtype=mx.int32)[::-1][1:]  # [2, 7, 5] reversed view
    kw = dict(h0=h0, c0=c0, lengths=lengths, reverse=True)
    _assert_close(_call(cell, x, wt, fast=True, **kw), _call(cell, x, w, fast=False, **kw))


@needs_kernels
@pytest.mark.parametrize(
    "cell,B,hidden,steps",
    [
        (c, b, h, t)
        for c in ("lstm", "gru_onnx", "gru_lbr", "rnn_tanh")
        for b, h, t in ((2, 13, 7), (3, 24, 1), (4, 13, 1), (5, 24, 7), (7, 13, 1), (8, 13, 7))
    ],
)
def test_small_batch_matmul_parity(cell, B, hidden, steps):
    # Batches 2-7 run the kernel's own small-row matmul (sgemm from 8); odd H
    # leaves row and column tails, T=1 sends the projection (+ bias) there too.
    rng = np.random.default_rng(zlib.crc32(repr((cell, B, hidden, steps)).encode()))
    g = {"lstm": 4, "rnn_tanh": 1}.get(cell, 3)
    w = {
        "Wx": rng.normal(0, 0.4, (g * hidden, I)),
        "Wh": rng.normal(0, 0.4, (g * hidden, hidden)),
        "b": rng.normal(0, 0.2, (g * hidden,)),
        "bhn": rng.normal(0, 0.2, (hidden,)),
    }
    w = {k: mx.array(v.astype(np.float32)) for k, v in w.items()}
    x = mx.array(rng.normal(0, 1, (B, steps, I)).astype(np.float32))
    h0 = mx.array(rng.normal(0, 0.5, (B, hidden)).astype(np.float32))
    c0 = h0 * 0.5 if cell == "lstm" else None
    lengths = [steps - b % 2 * (steps // 2) for b in range(B)]
    kw = dict(h0=h0, c0=c0, lengths=lengths)
    _assert_close(_call(cell, x, w, fast=True, **kw), _call(cell, x, w, fast=False, **kw))


@needs_kernels
def test_low_level_wrappers_accept_strided_projected_input(rng):
    B = 2
    Wh = mx.array(rng.normal(0, 0.4, (4 * H, H)).astype(np.float32))
    xp_bf = mx.array(rng.normal(0, 1, (B, T, 4 * H)).astype(np.float32))
    # Time-major view of a batch-first buffer: strides, not a copy.
    y_tm, (h1, c1) = kernels.lstm_seq(xp_bf.transpose(1, 0, 2), Wh)
    y_bf, (h2, c2) = kernels.lstm_seq(xp_bf, Wh, batch_first=True)
    assert y_tm.shape == (T, B, H) and y_bf.shape == (B, T, H)
    _assert_close([y_tm.transpose(1, 0, 2), h1, c1], [y_bf, h2, c2], atol=0)


@needs_kernels
@pytest.mark.parametrize("cell", ["lstm", "gru_onnx", "rnn_tanh"])
def test_in_kernel_projection_time_major(cell, rng):
    w = _weights(cell, rng)
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    want = _call(cell, x, w, fast=False, lengths=[T, 4])
    xt = x.transpose(1, 0, 2)  # (T, B, I) view
    kw = dict(lengths=[T, 4], Wx=w["Wx"])
    if cell == "lstm":
        y, (h, c) = kernels.lstm_seq(xt, w["Wh"], bias=w["b"], **kw)
        got = [y, h, c]
    elif cell == "gru_onnx":
        y, h = kernels.gru_seq(xt, w["Wh"], w["bhn"], b=w["b"], linear_before_reset=False, **kw)
        got = [y, h]
    else:
        got = list(kernels.rnn_seq(xt, w["Wh"], bias=w["b"], **kw))
    _assert_close([got[0].transpose(1, 0, 2), *got[1:]], want)


@needs_kernels
def test_state_carried_across_chunks_matches_one_call(rng):
    w = _weights("lstm", rng)
    x = mx.array(rng.normal(0, 1, (1, 30, I)).astype(np.float32))
    y_all, (h_all, c_all) = R.lstm(x, w["Wx"], w["Wh"], w["b"], fast=True)
    h = c = None
    ys = []
    for t in range(0, 30, 10):
        y, (h, c) = R.lstm(x[:, t : t + 10], w["Wx"], w["Wh"], w["b"], h0=h, c0=c, fast=True)
        ys.append(y)
    _assert_close([mx.concatenate(ys, axis=1), h, c], [y_all, h_all, c_all])


@needs_kernels
def test_no_bias_and_lengths_as_list(rng):
    w = _weights("gru_onnx", rng)
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    args = (x, w["Wx"], w["Wh"], None, None)
    kw = dict(lengths=[3, 6], linear_before_reset=False)
    _assert_close(list(R.gru(*args, fast=True, **kw)), list(R.gru(*args, fast=False, **kw)))


UNSUPPORTED = {
    "peephole": lambda w: dict(peephole=mx.ones((3 * H,)) * 0.1),
    "clip": lambda w: dict(clip=0.5),
    "input_forget": lambda w: dict(input_forget=True),
    "activations": lambda w: dict(
        activations=(A.spec("hardsigmoid"), A.spec("tanh"), A.spec("tanh"))
    ),
}


@needs_kernels
@pytest.mark.parametrize("feature", sorted(UNSUPPORTED))
def test_unsupported_lstm_configs_fall_back_identically(feature, rng):
    w = _weights("lstm", rng)
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    extra = UNSUPPORTED[feature](w)
    auto = R.lstm(x, w["Wx"], w["Wh"], w["b"], **extra)
    slow = R.lstm(x, w["Wx"], w["Wh"], w["b"], fast=False, **extra)
    _assert_close([auto[0], *auto[1]], [slow[0], *slow[1]], atol=0)
    with pytest.raises(UnsupportedError):
        R.lstm(x, w["Wx"], w["Wh"], w["b"], fast=True, **extra)


@needs_kernels
def test_unsupported_gru_rnn_configs_and_dtypes_fall_back(rng):
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    g = _weights("gru_lbr", rng)
    acts = (A.spec("hardsigmoid"), A.spec("tanh"))
    for extra in (dict(clip=0.3), dict(activations=acts)):
        auto = R.gru(x, g["Wx"], g["Wh"], g["b"], g["bhn"], **extra)
        slow = R.gru(x, g["Wx"], g["Wh"], g["b"], g["bhn"], fast=False, **extra)
        _assert_close(list(auto), list(slow), atol=0)
    r = _weights("rnn_tanh", rng)
    for extra in (dict(clip=0.3), dict(activations=(A.spec("softsign"),))):
        auto = R.rnn(x, r["Wx"], r["Wh"], r["b"], **extra)
        slow = R.rnn(x, r["Wx"], r["Wh"], r["b"], fast=False, **extra)
        _assert_close(list(auto), list(slow), atol=0)
    x16, w16 = x.astype(mx.float16), {k: v.astype(mx.float16) for k, v in r.items()}
    auto = R.rnn(x16, w16["Wx"], w16["Wh"], w16["b"])
    slow = R.rnn(x16, w16["Wx"], w16["Wh"], w16["b"], fast=False)
    _assert_close(list(auto), list(slow), atol=0)
    with pytest.raises(UnsupportedError, match="float32"):
        R.rnn(x16, w16["Wx"], w16["Wh"], w16["b"], fast=True)


@needs_kernels
def test_fast_path_gradient_matches_pure(rng):
    w = _weights("lstm", rng)
    x = mx.array(rng.normal(0, 1, (1, T, I)).astype(np.float32))

    def loss(Wh, fast):
        return R.lstm(x, w["Wx"], Wh, w["b"], fast=fast)[0].sum()

    pure = mx.grad(loss)(w["Wh"], False)
    assert float(mx.abs(pure).sum()) > 0
    np.testing.assert_allclose(
        np.array(mx.grad(loss)(w["Wh"], True)), np.array(pure), rtol=1e-4, atol=1e-6)


@needs_kernels
def test_bad_shapes_raise_value_error(rng):
    Wh = mx.zeros((4 * H, H))
    with pytest.raises(ValueError, match="xp last dimension"):
        kernels.lstm_seq(mx.zeros((T, 2, 3 * H)), Wh)
    with pytest.raises(ValueError, match="h0 must be"):
        kernels.lstm_seq(mx.zeros((T, 2, 4 * H)), Wh, mx.zeros((3, H)))
    with pytest.raises(ValueError, match="lengths must be"):
        kernels.lstm_seq(mx.zeros((T, 2, 4 * H)), Wh, lengths=[1, 2, 3])
    with pytest.raises(ValueError, match="Wx must be"):
        kernels.lstm_seq(mx.zeros((T, 2, I)), Wh, Wx=mx.zeros((4 * H, I + 1)))
    with pytest.raises(ValueError, match="bias is only used together with Wx"):
        kernels.lstm_seq(mx.zeros((T, 2, 4 * H)), Wh, bias=mx.zeros((4 * H,)))


def test_kernels_are_built_into_this_install():
    """Not skippable: an install without the extension fails the suite (EDGELSTM_KERNELS=0 opts out)."""
    if os.environ.get("EDGELSTM_KERNELS", "1") == "0":
        assert not kernels.available() and kernels.reason() == "disabled by EDGELSTM_KERNELS=0"
        return
    assert kernels.available(), kernels.reason()
    assert kernels.reason().startswith("loaded (") and "BLAS:" in kernels.reason()


def test_kernels_can_be_switched_off_by_environment():
    code = "from edgelstm.fast import dispatch as k; print(k.available(), '|', k.reason())"
    env = {**os.environ, "EDGELSTM_KERNELS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False | disabled by EDGELSTM_KERNELS=0"


def test_missing_kernels_fall_back_to_pure_mlx(monkeypatch, rng):
    w = _weights("lstm", rng)
    x = mx.array(rng.normal(0, 1, (2, T, I)).astype(np.float32))
    want = R.lstm(x, w["Wx"], w["Wh"], w["b"], fast=False)
    monkeypatch.setattr(kernels, "_state", (False, "edgelstm_kernels is not installed (test)"))
    assert not kernels.available() and "not installed" in kernels.reason()
    got = R.lstm(x, w["Wx"], w["Wh"], w["b"])
    _assert_close([got[0], *got[1]], [want[0], *want[1]], atol=0)
    with pytest.raises(UnsupportedError, match="not installed"):
        R.lstm(x, w["Wx"], w["Wh"], w["b"], fast=True)
