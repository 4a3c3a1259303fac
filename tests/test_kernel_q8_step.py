"""The int8 fused LSTM steps (int8 Wh panels) against their oracles.

Small batches on an int8 ``Wh`` stream int8 panels instead of the float
packing of ``q * s``: the widening step (``lstm_fused_step_q8``: int8 lanes
widened to float in registers) and, on AVX-512 VNNI CPUs at one row, the
VNNI step (``lstm_fused_step_q8_vnni``: h in 32-bit fixed point split into
byte limbs, exact integer dot products, one rounding). Oracles: the previous
path (the same int8 weights expanded once to the fp32 packing,
``EDGELSTM_Q8_STEP=0``) and pure MLX on the dequantized weights
(``fast=False``). The scale multiplies each row's accumulated dot product
(``s * sum(q * h)`` rather than ``sum((q * s) * h)``), so the paths agree to
rounding, not bit for bit; a chunked stream must still equal the full pass
bit for bit. ``EDGELSTM_Q8_STEP=1`` forces the int8 step at any batch and
``EDGELSTM_Q8_VNNI=0`` / ``=1`` the widening / the VNNI step at any batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
import pytest

from edgelstm.fast import dispatch as kernels
from edgelstm.nn import recurrent as R
from edgelstm.quantize.mlx_quant import dequantize_rows, quantize_rows

pytestmark = pytest.mark.skipif(
    not kernels.available() or not getattr(kernels._ext, "int8_weights", False),
    reason=f"fused int8 kernels unavailable: {kernels.reason()}",
)

I = 7
# Max |difference| of y, h, c: float32 rounding of sums over H <= 70 terms of
# |q * s * h| <= ~1, compounded over <= 9 steps, is ~1e-6.
ATOL = 1e-5


def _weights(rng, H):
    qx, sx = quantize_rows(mx.array(rng.normal(0, 0.3, (4 * H, I)).astype(np.float32)))
    qh, sh = quantize_rows(mx.array(rng.normal(0, 0.3, (4 * H, H)).astype(np.float32)))
    w = {"qx": qx, "sx": sx, "qh": qh, "sh": sh,
         "b": mx.array(rng.normal(0, 0.2, (4 * H,)).astype(np.float32))}
    w["Wx"], w["Wh"] = dequantize_rows(qx, sx), dequantize_rows(qh, sh)
    mx.eval(w)
    return w


def _int8(x, w, **kw):
    """The kernel on int8 Wx / Wh and scales: [y, h, c] as numpy."""
    y, (h, c) = kernels.lstm(x, w["qx"], w["qh"], w["b"], kw.get("h0"), kw.get("c0"),
                             kw.get("lengths"), kw.get("reverse", False),
                             Wx_scales=w["sx"], Wh_scales=w["sh"])
    return [np.array(a) for a in (y, h, c)]


def _pure(x, w, **kw):
    """Pure MLX on the dequantized weights."""
    y, (h, c) = R.lstm(x, w["Wx"], w["Wh"], w["b"], fast=False, **kw)
    return [np.array(a) for a in (y, h, c)]


def _close(got, want, atol=ATOL):
    for g, v in zip(got, want, strict=True):
        assert g.shape == v.shape
        np.testing.assert_allclose(g, v, rtol=0, atol=atol)


def _case(B, H, T=9, seed=0):
    rng = np.random.default_rng(zlib.crc32(repr((B, H, seed)).encode()))
    w = _weights(rng, H)
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    state = {"h0": mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32)),
             "c0": mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))}
    return x, w, state


def _has_vnni():
    """Whether the kernels run the VNNI step here (AVX-512 build on an avx512_vnni CPU)."""
    if kernels._ext.isa() != "avx512":
        return False
    try:
        with open("/proc/cpuinfo") as fh:
            return " avx512_vnni" in fh.read()
    except OSError:
        return False


needs_vnni = pytest.mark.skipif(not kernels.available() or not _has_vnni(),
                                reason="reason: the AVX-512 VNNI step is not in use here (CPU, OS or EDGELSTM_ISA)")


# H off the 8- and 16-lane widths; B across the one-row and three-row tiles.
# The VNNI step serves one row (where the CPU has it; else it widens too);
# the widening step's tiles: 4 rows, 3, 2, 1 (B=5: 3 + 2, B=7: 4 + 3).
@pytest.mark.parametrize("H", [5, 13, 37, 70])
@pytest.mark.parametrize("variant", ["plain", "lengths_state", "reverse"])
@pytest.mark.parametrize("B,step", [(1, "vnni"), (2, "vnni"), (3, "vnni")] +
                         [(b, "widen") for b in (1, 2, 3, 4, 5, 6, 7)])
def test_q8_step_matches_expanded_and_pure(B, H, variant, step, monkeypatch):
    x, w, state = _case(B, H)
    kw = {}
    if variant == "lengths_state":
        kw = dict(state, lengths=mx.array([9 - (b % 4) * 2 for b in range(B)], dtype=mx.int32))
    elif variant == "reverse":
        kw = {"reverse": True}
    monkeypatch.setenv("EDGELSTM_Q8_STEP", "1")
    monkeypatch.setenv("EDGELSTM_Q8_VNNI", "1" if step == "vnni" else "0")
    got = _int8(x, w, **kw)
    _close(got, _pure(x, w, **kw))
    monkeypatch.setenv("EDGELSTM_Q8_STEP", "0")  # the previous path: expanded fp32 packing
    expanded = _int8(x, w, **kw)
    _close(got, expanded)
    if variant == "lengths_state" and B > 1:
        # Rows past their length: y zeroed there, state carried.
        y = got[0]
        for b in range(B):
            n = 9 - (b % 4) * 2
            assert not y[b, n:].any()
            np.testing.assert_array_equal(got[1][b], y[b, n - 1])


@pytest.mark.parametrize("B,H,int8_step", [
    (1, 37, True), (2, 37, True), (4, 37, True),  # 1, 2 and 4 rows: always
    (3, 37, False), (3, 384, True), (7, 37, False), (5, 384, True),  # 3, 5-7: from H=384
    (9, 256, False), (16, 384, True), (17, 384, False),  # 8-16 rows: from H=384
])
def test_default_path_by_batch_and_width(B, H, int8_step, monkeypatch):
    # The two paths round differently: the default is the int8 step exactly
    # where q8_pays (lstm_q8.cpp) says so, and bit-equal to the fp32 packing
    # elsewhere. Narrower builds take it at one row or from H=384 only.
    if kernels._ext.isa() != "avx512" and B >= 2 and H < 384:
        int8_step = False
    x, w, _ = _case(B, H, T=2, seed=1)
    got = _int8(x, w)
    monkeypatch.setenv("EDGELSTM_Q8_STEP", "0")
    expanded = _int8(x, w)
    differs = any((g != e).any() for g, e in zip(got, expanded, strict=True))
    assert differs == int8_step
    _close(got, expanded, atol=3e-5)


@needs_vnni
@pytest.mark.parametrize("H", [5, 16, 37, 70, 130])
@pytest.mark.parametrize("B", [1, 2])
def test_vnni_step_matches_widening_step(B, H, monkeypatch):
    monkeypatch.setenv("EDGELSTM_Q8_VNNI", "1")  # VNNI at 2 rows too
    # K padded to 16 (H=5, 37, 70, 130), one and several blocks of 16 units.
    x, w, state = _case(B, H, seed=5)
    got = _int8(x, w, **state)
    monkeypatch.setenv("EDGELSTM_Q8_VNNI", "0")
    widened = _int8(x, w, **state)
    _close(got, widened)
    # Exact integer sums rounded once vs float FMAs: not the same bits, so
    # the VNNI step did run.
    assert any((g != v).any() for g, v in zip(got, widened, strict=True))


@needs_vnni
@pytest.mark.parametrize("scale", [0.0, 1e-40, 1e-30, 1e-3, 1e3, 1e30])
def test_vnni_fixed_point_over_h_magnitudes(scale, monkeypatch):
    monkeypatch.setenv("EDGELSTM_Q8_VNNI", "1")
    # h0 from 0 and subnormals up to 1e30: the per-row exponent keeps 31 bits
    # relative to max|h|; the first step's gates saturate or not alike.
    x, w, state = _case(2, 40, T=4, seed=6)
    h0 = state["h0"] * scale
    h0 = mx.concatenate([h0[:1], state["h0"][1:]])  # row 1 stays O(1): rows scale apart
    kw = dict(h0=h0, c0=state["c0"])
    got, want = _int8(x, w, **kw), _pure(x, w, **kw)
    # Terms of size ~scale round in float32 in the reference too (through
    # sigmoid' <= 1/4); past ~1e3 every gate of row 0 saturates.
    atol = ATOL * max(1.0, min(scale, 1e3))
    for g, v in zip(got, want, strict=True):
        np.testing.assert_allclose(g, v, rtol=1e-5, atol=atol)


@needs_vnni
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_vnni_step_hands_non_finite_h_to_the_widening_step(bad, monkeypatch):
    # Fixed point cannot hold NaN / inf: such steps run the widening step,
    # which propagates them as the float loop does.
    x, w, state = _case(2, 21, T=4, seed=7)
    h0 = np.array(state["h0"])
    h0[1, 3] = bad
    kw = dict(h0=mx.array(h0), c0=state["c0"])
    monkeypatch.setenv("EDGELSTM_Q8_VNNI", "1")
    got = _int8(x, w, **kw)
    monkeypatch.setenv("EDGELSTM_Q8_VNNI", "0")
    widened = _int8(x, w, **kw)
    for g, v in zip(got, widened, strict=True):
        np.testing.assert_array_equal(g, v)
    assert np.isnan(got[0][1]).any() or np.isinf(got[0][1]).any()
    assert np.isfinite(got[0][0]).all()


@pytest.mark.parametrize("B", [8, 13])
def test_forced_q8_step_at_larger_batches(B, monkeypatch):
    # Past the default threshold (small H): forced, the three-row tiles and
    # their one-row tail still match.
    x, w, state = _case(B, 21)
    monkeypatch.setenv("EDGELSTM_Q8_STEP", "1")
    kw = dict(state, lengths=mx.array([9 - b % 5 for b in range(B)], dtype=mx.int32))
    _close(_int8(x, w, **kw), _pure(x, w, **kw))


def test_wide_layer_at_batch_8_uses_q8_and_matches(monkeypatch):
    # H=512: the int8 step is the default up to 16 rows; sums over 512 terms.
    x, w, state = _case(8, 512, T=3)
    got = _int8(x, w, **state)
    _close(got, _pure(x, w, **state), atol=5e-5)
    monkeypatch.setenv("EDGELSTM_Q8_STEP", "0")
    expanded = _int8(x, w, **state)
    _close(got, expanded, atol=5e-5)
    assert any((g != e).any() for g, e in zip(got, expanded, strict=True))


@pytest.mark.parametrize("B,vnni", [(1, "1"), (2, "1"), (1, "0"), (3, "0")])
def test_chunked_stream_equals_full_pass_bitwise(B, vnni, monkeypatch):
    monkeypatch.setenv("EDGELSTM_Q8_STEP", "1")
    monkeypatch.setenv("EDGELSTM_Q8_VNNI", vnni)
    x, w, state = _case(B, 37, T=30, seed=2)
    full = _int8(x, w, **state)
    h, c, ys = state["h0"], state["c0"], []
    for t in range(0, 30, 7):  # uneven chunks: 7, 7, 7, 7, 2
        y, h, c = (mx.array(a) for a in _int8(x[:, t:t + 7], w, h0=h, c0=c))
        ys.append(np.array(y))
    for got, want in zip([np.concatenate(ys, axis=1), np.array(h), np.array(c)], full,
                         strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("B", [1, 2])
def test_float_and_int8_packings_of_one_weight_coexist(B, monkeypatch):
    # The cache keys the float, widening and VNNI packings of one buffer
    # apart: switching path between calls on the same arrays never serves
    # another path's packing.
    x, w, _ = _case(B, 24, seed=3)
    paths = {"widen": ("1", "0"), "vnni": ("1", "1"), "fp32": ("0", "0")}
    first = {}
    for _ in range(2):
        for name, (step, vnni) in paths.items():
            monkeypatch.setenv("EDGELSTM_Q8_STEP", step)
            monkeypatch.setenv("EDGELSTM_Q8_VNNI", vnni)
            got = _int8(x, w)
            if name not in first:
                first[name] = got
                _close(got, _pure(x, w))
            for a, b in zip(got, first[name], strict=True):
                np.testing.assert_array_equal(a, b)


def test_strided_int8_wh():
    # A transposed (strided) int8 Wh is packed from its logical rows.
    x, w, _ = _case(1, 19, seed=4)
    strided = dict(w, qh=mx.array(np.ascontiguousarray(np.array(w["qh"]).T)).T)
    _close(_int8(x, strided), _pure(x, w))


_ISA_SCRIPT = """
import json
import mlx.core as mx, numpy as np
from edgelstm.fast import dispatch as k
from edgelstm.quantize.mlx_quant import quantize_rows
assert k.available(), k.reason()
rng = np.random.default_rng(5)
out = {"isa": k._ext.isa()}
for B, H in ((1, 37), (3, 16), (5, 70)):
    qx, sx = quantize_rows(mx.array(rng.normal(0, 0.3, (4 * H, 6)).astype(np.float32)))
    qh, sh = quantize_rows(mx.array(rng.normal(0, 0.3, (4 * H, H)).astype(np.float32)))
    b = mx.array(rng.normal(0, 0.2, (4 * H,)).astype(np.float32))
    x = mx.array(rng.normal(0, 1, (B, 5, 6)).astype(np.float32))
    y, _ = k.lstm(x, qx, qh, b, None, None, None, False, Wx_scales=sx, Wh_scales=sh)
    out[f"{B}x{H}"] = np.array(y).tolist()
print(json.dumps(out))
"""


def _isa_run(isa):
    env = dict(os.environ)
    env.pop("EDGELSTM_ISA", None)
    env["EDGELSTM_Q8_STEP"] = "1"  # the int8 step at every batch, in every build
    env.pop("EDGELSTM_Q8_VNNI", None)
    if isa:
        env["EDGELSTM_ISA"] = isa
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_isa_builds_agree_on_the_q8_step():
    # The baseline build widens int8 with the vector extension's conversion,
    # AVX2 / AVX-512 with vpmovsxbd + vcvtdq2ps, at 8 or 16 lanes.
    best = _isa_run(None)
    if best["isa"] == "baseline":
        pytest.skip("reason: this CPU runs only the baseline build; nothing to compare")
    others = [_isa_run("baseline")] + ([_isa_run("avx2")] if best["isa"] == "avx512" else [])
    assert others[0]["isa"] == "baseline"
    for o in others:
        for key in best:
            if key != "isa":
                np.testing.assert_allclose(np.array(o[key]), np.array(best[key]), rtol=0,
                                           atol=ATOL, err_msg=f"{o['isa']} vs {best['isa']}")
