"""The fused LSTM step on several threads: bit-identical to one thread, and right.

Each thread owns whole hidden units (all four gate columns of a block), so any
thread count must give the same bits as one thread. ``set_step_min_macs(1)``
lowers the work threshold so that small shapes are threaded too (every tile
path and unit tail); ``last_step_threads()`` proves a call really ran on the
threads asked for, so an identity check can fail. Parity with ``mlx.nn.LSTM``
(an independent implementation) is checked on the threaded path.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from edgelstm.fast import dispatch as kernels
from edgelstm.nn import activations as A
from edgelstm.quantize.mlx_quant import quantize_rows

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}"
)

I = 6


@pytest.fixture
def threads():
    """``use(n, force=True)``: n step threads, threshold lowered unless ``force`` is off."""
    ext = kernels._ext
    default_min = ext.step_min_macs()
    # No contention back-off: on a busy machine it would run calls on one
    # thread, and these tests count threads.
    ext.set_step_backoff(False)

    def use(n, force=True):
        kernels.set_recurrent_threads(n)
        ext.set_step_min_macs(1 if force else default_min)

    yield use
    kernels.set_recurrent_threads(0)
    ext.set_step_min_macs(default_min)
    ext.set_step_backoff(True)


def _weights(rng, H, int8=False):
    w = {
        "Wx": mx.array(rng.normal(0, 0.3, (4 * H, I)).astype(np.float32)),
        "Wh": mx.array(rng.normal(0, 0.3, (4 * H, H)).astype(np.float32)),
        "b": mx.array(rng.normal(0, 0.2, (4 * H,)).astype(np.float32)),
        "Wx_scales": None,
        "Wh_scales": None,
    }
    if int8:
        w["Wx"], w["Wx_scales"] = quantize_rows(w["Wx"])
        w["Wh"], w["Wh_scales"] = quantize_rows(w["Wh"])
    mx.eval([v for v in w.values() if v is not None])
    return w


def _lstm(x, w, **kw):
    """The fused kernel with the projection inside; outputs as bytes-comparable arrays."""
    y, (h, c) = kernels.lstm_seq(x, w["Wh"], Wx=w["Wx"], bias=w["b"], Wx_scales=w["Wx_scales"],
                                 Wh_scales=w["Wh_scales"], **kw)
    mx.eval(y, h, c)
    return [np.array(a) for a in (y, h, c)]


def _same_bits(got, want, what):
    for name, g, w in zip(("y", "h_n", "c_n"), got, want, strict=True):
        assert g.shape == w.shape, f"{what}: {name} shape"
        assert g.tobytes() == w.tobytes(), (
            f"{what}: {name} differs, max |diff| {np.max(np.abs(g - w))}")


VARIANTS = ["plain", "state_lengths", "reverse_lengths", "int8", "batch_first"]


def _case(rng, B, H, T, variant):
    """(x, weights, kwargs) for one variant of the call."""
    w = _weights(rng, H, int8=variant == "int8")
    batch_first = variant == "batch_first"
    x = mx.array(rng.normal(0, 1, (B, T, I) if batch_first else (T, B, I)).astype(np.float32))
    kw = {"batch_first": batch_first}
    if variant in ("state_lengths", "reverse_lengths"):
        kw["lengths"] = [T - (b % 3) * 2 for b in range(B)]  # rows drop out mid-sequence
    if variant == "state_lengths":
        kw["h0"] = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))
        kw["c0"] = mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32))
    if variant == "reverse_lengths":
        kw["reverse"] = True
    return x, w, kw


# Batches on both sides of the blocked path (8 rows) and of the 3-row tiles;
# hidden sizes with unit tails (not a multiple of 8 or 16) and several blocks.
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("B,H", [(1, 37), (2, 64), (3, 100), (5, 48), (8, 70), (13, 129)])
def test_threads_bit_identical(threads, B, H, variant, monkeypatch):
    # int8 weights on the fp32 packing: the threaded step (small batches would
    # otherwise take the single-threaded int8 step, tests/test_kernel_q8_step.py)
    monkeypatch.setenv("EDGELSTM_Q8_STEP", "0")
    rng = np.random.default_rng(zlib.crc32(repr((B, H, variant)).encode()))
    T = 7
    x, w, kw = _case(rng, B, H, T, variant)
    threads(1)
    want = _lstm(x, w, **kw)
    assert kernels._ext.last_step_threads() == 1
    blocks = -(-H // (16 if kernels._ext.isa() == "avx512" else 8))  # units per block
    for n in (2, 3):
        threads(n)
        got = _lstm(x, w, **kw)
        assert kernels._ext.last_step_threads() == min(n, blocks) > 1
        _same_bits(got, want, f"B={B} H={H} {variant} threads={n}")


@pytest.mark.parametrize("B,H,threaded", [(32, 256, True), (4, 256, True), (1, 128, False),
                                          (8, 128, False), (4, 64, False)])
def test_default_threshold(threads, B, H, threaded):
    # With the shipped threshold (a thread per 512K multiply-adds of a step):
    # B=32 H=256 (8.4M) and B=4 H=256 (1M) take the second thread, batch 1 and
    # small steps stay on one; bits match either way.
    rng = np.random.default_rng(B * 1000 + H)
    x, w, kw = _case(rng, B, H, 5, "state_lengths")
    threads(1, force=False)
    want = _lstm(x, w, **kw)
    threads(2, force=False)
    got = _lstm(x, w, **kw)
    assert kernels._ext.last_step_threads() == (2 if threaded else 1)
    _same_bits(got, want, f"B={B} H={H} default threshold")


def test_stack_module_bit_identical_and_matches_mlx_nn(threads):
    # Two layers through edgelstm.LSTM (one lstm_stack primitive) against
    # mlx.nn.LSTM run layer by layer: same weights, its own gate math.
    B, T, H = 12, 9, 80
    mx.random.seed(3)
    ref = [nn.LSTM(I if n == 0 else H, H) for n in range(2)]
    mx.eval([m.parameters() for m in ref])
    net = edgelstm.LSTM(I, H, num_layers=2)
    for n, m in enumerate(ref):
        cell = net.layers[n].forward
        cell.Wx, cell.Wh, cell.bias = m.Wx, m.Wh, m.bias
    net.eval()
    x = mx.array(np.random.default_rng(4).normal(0, 1, (B, T, I)).astype(np.float32))

    def run():
        y, (h, c) = net(x)
        mx.eval(y, h, c)
        return [np.array(a) for a in (y, h, c)]

    threads(1)
    want = run()
    threads(3)
    got = run()
    assert kernels._ext.last_step_threads() == 3
    _same_bits(got, want, "2-layer edgelstm.LSTM, 3 threads")

    y = x
    hs, cs = [], []
    for m in ref:
        y, c_seq = m(y)
        hs.append(y[:, -1])
        cs.append(c_seq[:, -1])
    # The kernel's sigmoid/tanh are fast approximations (~1e-6 relative); nine
    # steps of two layers stay well inside 2e-5.
    for name, g, r in (("y", got[0], y), ("h_n", got[1], mx.stack(hs)),
                       ("c_n", got[2], mx.stack(cs))):
        np.testing.assert_allclose(g, np.array(r), rtol=0, atol=2e-5, err_msg=name)


def test_repeated_threaded_runs_never_differ(threads):
    # A race (a thread reading h before a peer wrote it) shows as an
    # occasional wrong bit: repeat a threaded call and compare every run.
    rng = np.random.default_rng(21)
    x, w, kw = _case(rng, 9, 96, 30, "state_lengths")
    threads(1)
    want = _lstm(x, w, **kw)
    threads(3)
    for k in range(60):
        _same_bits(_lstm(x, w, **kw), want, f"run {k}")
    assert kernels._ext.last_step_threads() == 3


def test_thread_settings(threads):
    assert kernels.recurrent_threads()[0] >= 1
    threads(2)
    assert kernels.recurrent_threads() == (2, "set")
    with pytest.raises(ValueError, match="n must be >= 0"):
        kernels.set_recurrent_threads(-1)
    with pytest.raises(ValueError, match="n must be >= 1"):
        kernels._ext.set_step_min_macs(0)


_SETTINGS_SCRIPT = """
import json
import edgelstm
from edgelstm.fast import dispatch as k
assert k.available(), k.reason()
out = {"start": k.recurrent_threads()}
k.set_blas_threads(1)
out["after_set_blas_threads"] = k.recurrent_threads()
k.set_recurrent_threads(0)
out["after_reset"] = k.recurrent_threads()
print(json.dumps(out))
"""


def _settings(**env_vars):
    env = {k: v for k, v in os.environ.items()
           if k not in ("EDGELSTM_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    env.update(env_vars)
    res = subprocess.run([sys.executable, "-c", _SETTINGS_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return {k: tuple(v) for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}


def test_thread_count_follows_env_and_blas():
    got = _settings(EDGELSTM_NUM_THREADS="3")
    assert got["start"] == (3, "EDGELSTM_NUM_THREADS")
    # set_blas_threads (what benchmarks' --threads calls) caps the step too.
    assert got["after_set_blas_threads"] == (1, "set")
    assert got["after_reset"] == (3, "EDGELSTM_NUM_THREADS")
    got = _settings(OPENBLAS_NUM_THREADS="1")
    if got["start"][1] == "cores":
        pytest.skip("reason: this build's BLAS reports no thread count (Accelerate)")
    assert got["start"] == (1, "blas")
    assert _settings(EDGELSTM_NUM_THREADS="two", OPENBLAS_NUM_THREADS="1")["start"] == (1, "blas")


_ISA_SCRIPT = """
import json
import numpy as np, mlx.core as mx
from edgelstm.fast import dispatch as k
assert k.available(), k.reason()
ext = k._ext
ext.set_step_min_macs(1)
ext.set_step_backoff(False)
rng = np.random.default_rng(8)
out = {"isa": ext.isa(), "ok": [], "used": []}
for B, H in ((1, 37), (3, 40), (9, 70)):
    w = [mx.array(rng.normal(0, 0.3, s).astype(np.float32)) for s in ((4 * H, 6), (4 * H, H), (4 * H,))]
    x = mx.array(rng.normal(0, 1, (5, B, 6)).astype(np.float32))
    res = []
    for n in (1, 3):
        k.set_recurrent_threads(n)
        y, (h, c) = k.lstm_seq(x, w[1], Wx=w[0], bias=w[2], lengths=[5 - b % 2 for b in range(B)])
        res.append(b"".join(np.array(a).tobytes() for a in (y, h, c)))
    out["ok"].append(res[0] == res[1])
    out["used"].append(ext.last_step_threads())
print(json.dumps(out))
"""


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
def test_threads_bit_identical_on_other_isa_builds(isa):
    # The AVX2 and baseline builds pack 8 units per block (AVX-512: 16) and tile
    # differently; their threaded steps must match their own one-thread steps.
    env = dict(os.environ, EDGELSTM_ISA=isa)
    res = subprocess.run([sys.executable, "-c", _ISA_SCRIPT], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if out["isa"] != isa:
        pytest.skip(f"reason: EDGELSTM_ISA={isa} ran {out['isa']} on this CPU")
    assert out["ok"] == [True, True, True]
    assert out["used"] == [3, 3, 3]


_KERNELS = Path(__file__).resolve().parent.parent / "kernels"


def test_threaded_recurrence_has_no_data_race_under_thread_sanitizer(tmp_path):
    # The recurrence and pool built alone with -fsanitize=thread (baseline gate
    # loops, no MLX): TSan exits 66 on any race it sees, and the harness
    # fails on a bit that differs from one thread. Without the per-step
    # barrier this reports hundreds of races.
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cxx is None or not (_KERNELS / "tests" / "tsan_fused_lstm.cpp").is_file():
        pytest.skip("reason: no C++ compiler or no kernel sources here")
    src = _KERNELS / "src"
    exe = tmp_path / "tsan_fused_lstm"
    build = subprocess.run(
        [cxx, "-std=c++20", "-O1", "-g", "-fsanitize=thread", f"-I{src}",
         str(_KERNELS / "tests" / "tsan_fused_lstm.cpp"),
         *(str(src / f) for f in ("fused_lstm.cpp", "step_pool.cpp", "blas.cpp",
                                  "gates_base.cpp")),
         "-o", str(exe), "-pthread"], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        if "tsan" in build.stderr.lower() or "sanitize" in build.stderr.lower():
            pytest.skip(f"reason: this compiler cannot build with ThreadSanitizer: "
                        f"{build.stderr.strip().splitlines()[-1]}")
        raise AssertionError(build.stderr)
    res = subprocess.run([str(exe), "150"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ThreadSanitizer" not in res.stderr, res.stdout + res.stderr
    assert res.stdout.strip().endswith("0 mismatches")


def test_info_reports_the_step_threads(threads):
    from click.testing import CliRunner

    from edgelstm.cli import cli

    threads(3)
    r = CliRunner().invoke(cli, ["info", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["kernel_threads"].startswith("3 (set by set_blas_threads")
    r = CliRunner().invoke(cli, ["info"])
    assert r.exit_code == 0 and "kernel threads  3 (" in r.stdout


# GRU and RNN on the packed step: each step's matmul split by panels across the
# threads (thread 0 then runs the rows' gate math), so any count gives one thread's bits.
# The ONNX-form GRU needs 2H on a panel boundary (H a multiple of 8): all H below are.
def _gru_rnn(cell, x, w, **kw):
    if cell == "rnn":
        y, h = kernels.rnn(x, w["Wx"], w["Wh"], w["b"], kw.get("h0"), kw.get("lengths"),
                           kw.get("reverse", False), (A.spec("tanh"),),
                           Wx_scales=w["Wx_scales"], Wh_scales=w["Wh_scales"])
    else:
        y, h = kernels.gru(x, w["Wx"], w["Wh"], w["b"], w["bhn"], kw.get("h0"),
                           kw.get("lengths"), kw.get("reverse", False), cell == "gru_lbr",
                           Wx_scales=w["Wx_scales"], Wh_scales=w["Wh_scales"])
    mx.eval(y, h)
    return [np.array(y), np.array(h)]


@pytest.mark.parametrize("cell", ["gru_lbr", "gru_onnx", "rnn"])
@pytest.mark.parametrize("B,H", [(1, 64), (3, 48), (8, 40), (13, 128)])
@pytest.mark.parametrize("variant", ["plain", "state_reverse_lengths", "int8"])
def test_gru_rnn_threads_bit_identical(threads, cell, B, H, variant):
    rng = np.random.default_rng(zlib.crc32(repr((cell, B, H, variant)).encode()))
    G = (1 if cell == "rnn" else 3) * H
    T = 7
    w = {"Wx": mx.array(rng.normal(0, 0.3, (G, I)).astype(np.float32)),
         "Wh": mx.array(rng.normal(0, 0.3, (G, H)).astype(np.float32)),
         "b": mx.array(rng.normal(0, 0.2, (G,)).astype(np.float32)),
         "bhn": mx.array(rng.normal(0, 0.2, (H,)).astype(np.float32)),
         "Wx_scales": None, "Wh_scales": None}
    if variant == "int8":  # expanded once to the float packing (B=1 too: a small Wh)
        w["Wx"], w["Wx_scales"] = quantize_rows(w["Wx"])
        w["Wh"], w["Wh_scales"] = quantize_rows(w["Wh"])
    mx.eval([v for v in w.values() if v is not None])
    x = mx.array(rng.normal(0, 1, (B, T, I)).astype(np.float32))
    kw = {}
    if variant == "state_reverse_lengths":
        kw = {"h0": mx.array(rng.normal(0, 0.5, (B, H)).astype(np.float32)),
              "lengths": mx.array([T - (b % 3) * 2 for b in range(B)], dtype=mx.int32),
              "reverse": True}
    threads(1)
    want = _gru_rnn(cell, x, w, **kw)
    assert kernels._ext.last_step_threads() == 1
    for n in (2, 3):
        threads(n)
        got = _gru_rnn(cell, x, w, **kw)
        assert kernels._ext.last_step_threads() == n
        for name, g, v in zip(("y", "h_n"), got, want, strict=True):
            assert g.tobytes() == v.tobytes(), f"{cell} B={B} H={H} {variant} threads={n}: {name}"
