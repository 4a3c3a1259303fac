"""The packed-weight LSTM, GRU and RNN paths of the fused kernels against the pure-MLX core.

The LSTM step runs on Wh repacked into panels of one vector of hidden units
(16 floats with AVX-512, 8 otherwise), one register tile at a time below 8
rows and as a K-blocked GEMM per block of units from 8 rows; short inputs
project on a packed Wx. Packings are cached per weight buffer. These tests
cross every tile and tail (hidden sizes off the vector width, K past one
chunk of 64, batches on both sides of 8), the projection threshold, the
cache's reuse of freed buffers, and the ISA builds against each other. GRU and RNN
steps multiply by a packed Wh (gemm_packed): parity, rows that round the same in any
batch, and agreement with the per-step sgemm they replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import mlx.core as mx
import numpy as np
import pytest

from edgelstm.fast import dispatch as kernels
from edgelstm.nn import recurrent as R
from edgelstm.nn.activations import spec

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}"
)

I = 6


def _lstm_weights(rng, H, scale=0.3):
    w = {
        "Wx": rng.normal(0, scale, (4 * H, I)),
        "Wh": rng.normal(0, scale, (4 * H, H)),
        "b": rng.normal(0, 0.2, (4 * H,)),
    }
    return {k: mx.array(v.astype(np.float32)) for k, v in w.items()}


def _run(x, w, fast, **kw):
    y, (h, c) = R.lstm(x, w["Wx"], w["Wh"], w["b"], fast=fast, **kw)
    return [np.array(a) for a in (y, h, c)]


def _close(got, want, atol=2e-5):
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=0, atol=atol)


@needs_kernels
@pytest.mark.parametrize("H", [5, 16, 37, 70])
@pytest.mark.parametrize("B", [1, 2, 3, 7, 8, 13])
def test_packed_lstm_parity(B, H):
    rng = np.random.default_rng(zlib.crc32(repr((B, H)).encode()))
    w = _lstm_weights(rng, H)
    T = 6
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    h0 = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))
    c0 = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))
    lengths = [T - (b % 3) * 2 for b in range(B)]  # 6, 4, 2, ...: rows drop out
    kw = dict(h0=h0, c0=c0, lengths=lengths)
    _close(_run(x, w, True, **kw), _run(x, w, False, **kw))
    _close(_run(x, w, True, reverse=True), _run(x, w, False, reverse=True))


@needs_kernels
def test_long_input_projects_like_short_chunks():
    # 600 rows take one sgemm for the projection, 100-row chunks the packed Wx.
    rng = np.random.default_rng(7)
    H = 24
    w = _lstm_weights(rng, H)
    x = mx.array(rng.normal(0, 1, (1, 600, I)).astype(np.float32))
    whole = _run(x, w, True)
    state, ys = (None, None), []
    for t in range(0, 600, 100):
        y, (h, c) = R.lstm(x[:, t : t + 100], w["Wx"], w["Wh"], w["b"], h0=state[0],
                           c0=state[1], fast=True)
        ys.append(np.array(y))
        state = (h, c)
    _close([np.concatenate(ys, axis=1), np.array(state[0]), np.array(state[1])], whole, 1e-5)
    _close(whole, _run(x, w, False), 1e-4)


@needs_kernels
def test_cached_packing_never_serves_freed_weights():
    # New weight arrays of one shape, each evaluated then dropped: MLX's
    # allocator hands freed buffers out again, so a cache keyed by pointer
    # alone would return a stale packing here.
    rng = np.random.default_rng(3)
    H, B = 16, 1
    x = mx.array(rng.normal(0, 1, (B, 5, I)).astype(np.float32))
    for _ in range(40):
        w = _lstm_weights(rng, H, scale=float(rng.uniform(0.1, 1.0)))
        mx.eval(list(w.values()))
        _close(_run(x, w, True), _run(x, w, False))
        del w


@needs_kernels
def test_module_streaming_reuses_packing_and_matches():
    import edgelstm

    rng = np.random.default_rng(11)
    net = edgelstm.LSTM(I, 20, num_layers=2)
    net.eval()
    x = mx.array(rng.normal(0, 1, (1, 30, I)).astype(np.float32))
    want_y, want_state = net(x, fast=False)
    state, ys = None, []
    for t in range(0, 30, 10):
        y, state = net(x[:, t : t + 10], state)
        ys.append(np.array(y))
    _close([np.concatenate(ys, axis=1), *map(np.array, state)],
           [np.array(want_y), *map(np.array, want_state)])


_ISA_SCRIPT = """
import json, sys
import mlx.core as mx, numpy as np
from edgelstm.fast import dispatch as k
from edgelstm.nn import recurrent as R
assert k.available(), k.reason()
rng = np.random.default_rng(5)
out = {"isa": k._ext.isa()}
for B, H in ((1, 37), (3, 16), (9, 70)):
    w = [mx.array(rng.normal(0, 0.3, s).astype(np.float32)) for s in ((4 * H, 6), (4 * H, H), (4 * H,))]
    x = mx.array(rng.normal(0, 1, (B, 5, 6)).astype(np.float32))
    y, (h, c) = R.lstm(x, *w, fast=True)
    out[f"{B}x{H}"] = np.array(y).tolist()
print(json.dumps(out))
"""


def _isa_run(isa):
    env = dict(os.environ)
    env.pop("EDGELSTM_ISA", None)
    if isa:
        env["EDGELSTM_ISA"] = isa
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


@needs_kernels
def test_isa_builds_agree():
    best = _isa_run(None)
    if best["isa"] == "baseline":
        pytest.skip("reason: this CPU runs only the baseline build; nothing to compare")
    others = [_isa_run("baseline")] + ([_isa_run("avx2")] if best["isa"] == "avx512" else [])
    assert [o["isa"] for o in others][0] == "baseline"
    for o in others:
        for key in best:
            if key != "isa":
                np.testing.assert_allclose(np.array(o[key]), np.array(best[key]), rtol=0,
                                           atol=1e-5, err_msg=f"{o['isa']} vs {best['isa']}")


# GRU and RNN steps: h @ Wh^T on Wh packed once (gemm_packed) instead of an sgemm call
# per step. Every output element is one chain over k, so a sequence's rows round the
# same alone or in any batch (sgemm's kernels differ with the row count). GRU's ONNX
# form (linear_before_reset=False) runs two matmuls a step; its n block must start on a
# panel (2H a multiple of the vector width), else it keeps sgemm: H=12 covers that.
_CELLS = [("gru", True), ("gru", False), ("rnn", "tanh"), ("rnn", "relu")]


def _pack_width():
    """Floats per panel of the running ISA build (gates_packed.inc's PACK_VW)."""
    return 16 if kernels._ext.isa() == "avx512" else 8


def _cell_run(cell, form, x, w, fast, lengths=None):
    if cell == "gru":
        y, h = R.gru(x, w["Wx"], w["Wh"], w["b"], w["bhn"], lengths=lengths,
                     linear_before_reset=form, fast=fast)
    else:
        y, h = R.rnn(x, w["Wx"], w["Wh"], w["b"], lengths=lengths,
                     activations=(spec(form),), fast=fast)
    return np.array(y), np.array(h)


def _cell_weights(rng, cell, H):
    G = (3 if cell == "gru" else 1) * H
    w = {"Wx": rng.normal(0, 0.3, (G, I)), "Wh": rng.normal(0, 0.3, (G, H)),
         "b": rng.normal(0, 0.2, (G,)), "bhn": rng.normal(0, 0.2, (H,))}
    return {k: mx.array(v.astype(np.float32)) for k, v in w.items()}


@needs_kernels
@pytest.mark.parametrize("cell,form", _CELLS)
@pytest.mark.parametrize("H", [12, 16, 37, 64])
def test_packed_gru_rnn_step_matches_pure_mlx_and_rounds_per_row(cell, form, H):
    rng = np.random.default_rng(zlib.crc32(repr((cell, form, H)).encode()))
    w = _cell_weights(rng, cell, H)
    B, T = 5, 9
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    lengths = mx.array(np.array([9, 4, 9, 1, 6], np.int32))
    got = _cell_run(cell, form, x, w, True, lengths)
    want = _cell_run(cell, form, x, w, False, lengths)
    for g, v in zip(got, want, strict=True):  # relu states grow: relative too
        np.testing.assert_allclose(g, v, rtol=2e-5, atol=3e-5)
    if cell == "gru" and not form and (2 * H) % _pack_width() != 0:
        return  # the n block is off a panel: sgemm per step, whose bits follow the batch
    for b in range(B):  # each sequence alone: the same bits as its row of the batch
        n = int(lengths[b])
        alone = _cell_run(cell, form, x[b:b + 1, :n], w, True)
        np.testing.assert_array_equal(alone[0][0], got[0][b, :n])
        np.testing.assert_array_equal(alone[1][0], got[1][b])


_SGEMM_STEP = """
import json, sys, zlib
import numpy as np, mlx.core as mx
import edgelstm
from edgelstm.nn import recurrent as R
rng = np.random.default_rng(3)
x = mx.array(rng.normal(0, 1, (8, 7, 6)).astype(np.float32))
out = {}
for H in (16, 64):
    wx, wh = (mx.array(rng.normal(0, 0.3, s).astype(np.float32)) for s in ((3 * H, 6), (3 * H, H)))
    y, _ = R.gru(x, wx, wh, linear_before_reset=False, fast=True)
    out[H] = np.array(y).tolist()
print(json.dumps(out))
"""


@needs_kernels
def test_packed_step_agrees_with_the_per_step_sgemm():
    """EDGELSTM_FUSED=0 keeps one sgemm call a step: the same numbers to float rounding."""
    runs = [json.loads(subprocess.run(
        [sys.executable, "-c", _SGEMM_STEP], env={**os.environ, "EDGELSTM_FUSED": flag},
        capture_output=True, text=True, timeout=120, check=True).stdout) for flag in ("1", "0")]
    for H in ("16", "64"):
        packed, sgemm = (np.array(r[H]) for r in runs)
        np.testing.assert_allclose(packed, sgemm, rtol=0, atol=2e-6)
