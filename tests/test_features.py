"""Speech and sensor front ends against an independent float64 numpy reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm.errors import ConfigError
from edgelstm.frontend.features import (
    FeatureConfig,
    OnlineFeatures,
    SensorConfig,
    config_from_dict,
    online,
)
from edgelstm.frontend.resample import resample_poly

try:
    from scipy.fft import dct as scipy_dct
except ImportError:  # scipy is optional; fall back to the DCT-II sum below
    scipy_dct = None


# ---------------------------------------------------------------- reference


def ref_dct_ortho(x: np.ndarray) -> np.ndarray:
    """DCT-II with orthonormal scaling along the last axis."""
    if scipy_dct is not None:
        return scipy_dct(x, type=2, norm="ortho", axis=-1)
    N = x.shape[-1]
    out = np.zeros_like(x)
    for k in range(N):
        s = sum(x[..., n] * math.cos(math.pi * k * (2 * n + 1) / (2 * N)) for n in range(N))
        out[..., k] = s * math.sqrt((1 if k == 0 else 2) / N)
    return out


def ref_window(name: str, N: int) -> np.ndarray:
    w = np.empty(N)
    for n in range(N):
        a = 2 * math.pi * n / (N - 1)
        w[n] = {
            "hann": 0.5 - 0.5 * math.cos(a),
            "hamming": 0.54 - 0.46 * math.cos(a),
            "povey": (0.5 - 0.5 * math.cos(a)) ** 0.85,
            "rectangular": 1.0,
        }[name]
    return w


def ref_features(x: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Textbook log-mel / MFCC in float64 with explicit loops."""
    sr = cfg.sample_rate
    win = round(sr * cfg.frame_ms / 1000)
    hop = round(sr * cfg.hop_ms / 1000)
    n_fft = cfg.n_fft or 2 ** math.ceil(math.log2(win))
    x = x.astype(np.float64)
    y = x.copy()
    y[1:] -= cfg.preemphasis * x[:-1]
    T = 0 if len(x) < win else 1 + (len(x) - win) // hop
    frames = np.stack([y[t * hop : t * hop + win] for t in range(T)]) if T else np.zeros((0, win))
    spec = np.abs(np.fft.rfft(frames * ref_window(cfg.window, win), n=n_fft)) ** 2

    def mel(f):
        return 2595 * math.log10(1 + f / 700)

    def imel(m):
        return 700 * (10 ** (m / 2595) - 1)

    fmax = cfg.fmax or sr / 2
    m_lo, m_hi = mel(cfg.fmin), mel(fmax)
    centres = [imel(m_lo + i * (m_hi - m_lo) / (cfg.n_mels + 1)) for i in range(cfg.n_mels + 2)]
    fb = np.zeros((cfg.n_mels, n_fft // 2 + 1))
    for m in range(cfg.n_mels):
        left, centre, right = centres[m], centres[m + 1], centres[m + 2]
        for k in range(n_fft // 2 + 1):
            f = k * sr / n_fft
            if left < f <= centre:
                fb[m, k] = (f - left) / (centre - left)
            elif centre < f < right:
                fb[m, k] = (right - f) / (right - centre)
    logmel = np.log(np.maximum(spec @ fb.T, cfg.log_floor))
    if cfg.kind == "fbank":
        return logmel
    c = ref_dct_ortho(logmel)[:, : cfg.n_mfcc]
    if cfg.lifter:
        L = cfg.lifter
        c = c * np.array([1 + L / 2 * math.sin(math.pi * k / L) for k in range(cfg.n_mfcc)])
    return c


def assert_close(got, ref, rel=1e-4):
    got = np.asarray(got)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if ref.size:
        np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * np.abs(ref).max())


def speechlike(n: int, sr: int = 8000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t + 1.0)
    return (x + 0.05 * rng.standard_normal(n)).astype(np.float32)


# ---------------------------------------------------------------- speech


@pytest.mark.parametrize(
    "cfg",
    [
        FeatureConfig(),
        FeatureConfig(kind="fbank"),
        FeatureConfig(kind="mfcc", window="hamming", lifter=22.0, preemphasis=0.0),
        FeatureConfig(kind="fbank", window="hann", n_mels=23, fmin=64.0, fmax=3800.0),
        FeatureConfig(sample_rate=16000, n_fft=512, n_mels=40, n_mfcc=20, window="rectangular"),
        FeatureConfig(kind="fbank", frame_ms=32, hop_ms=16, n_mels=32),
    ],
    ids=lambda c: f"{c.kind}-{c.window}-{c.sample_rate}",
)
def test_matches_numpy_reference(cfg):
    x = speechlike(cfg.sample_rate // 2 + 37, cfg.sample_rate)
    got = cfg.compute(x)
    assert got.shape == (cfg.num_frames(len(x)), cfg.num_features)
    assert_close(got, ref_features(x, cfg))


def test_tone_peaks_in_its_mel_band():
    cfg = FeatureConfig(kind="fbank", preemphasis=0.0)
    t = np.arange(4000) / 8000
    for f0 in (300.0, 1000.0, 2500.0):
        fb = np.asarray(cfg.compute(np.sin(2 * np.pi * f0 * t).astype(np.float32)))
        mels = np.linspace(2595 * np.log10(1 + 20 / 700), 2595 * np.log10(1 + 4000 / 700), 42)
        centres = 700 * (10 ** (mels[1:-1] / 2595) - 1)
        assert abs(int(fb.mean(axis=0).argmax()) - int(np.abs(centres - f0).argmin())) <= 1


@pytest.mark.parametrize("n,frames", [(0, 0), (199, 0), (200, 1), (279, 1), (280, 2), (8000, 98)])
def test_frame_count_drops_short_tail(n, frames):
    cfg = FeatureConfig()  # win 200, hop 80 at 8 kHz
    assert cfg.num_frames(n) == frames
    assert cfg.compute(np.zeros(n, dtype=np.float32)).shape == (frames, 13)


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(["mfcc", "fbank"]),
    chunks=st.lists(st.integers(0, 700), min_size=1, max_size=12),
)
def test_streaming_equals_offline(kind, chunks):
    cfg = FeatureConfig(kind=kind, lifter=22.0 if kind == "mfcc" else 0.0)
    x = speechlike(sum(chunks), seed=len(chunks))
    offline = np.asarray(cfg.compute(x))
    stream = OnlineFeatures(cfg)
    parts, i = [], 0
    for n in chunks:
        parts.append(np.asarray(stream.accept(x[i : i + n])))
        i += n
    streamed = np.concatenate(parts)
    assert streamed.shape == offline.shape
    np.testing.assert_allclose(streamed, offline, rtol=1e-5, atol=1e-5)
    assert stream.frames_out == offline.shape[0]


def test_streaming_is_bit_identical_on_cpu():
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        pytest.skip(reason="bit-identity is checked on the CPU backend only")
    cfg = FeatureConfig(lifter=22.0)
    x = speechlike(4000, seed=3)
    s = cfg.online()
    streamed = np.concatenate([np.asarray(s.accept(x[i : i + 37])) for i in range(0, 4000, 37)])
    np.testing.assert_array_equal(streamed, np.asarray(cfg.compute(x)))


def test_online_reset_starts_fresh():
    cfg = FeatureConfig()
    x = speechlike(1000)
    s = cfg.online()
    s.accept(speechlike(333, seed=5))
    s.reset()
    np.testing.assert_allclose(np.asarray(s.accept(x)), np.asarray(cfg.compute(x)), atol=1e-5)


def test_config_json_round_trip_and_unknown_keys():
    cfg = FeatureConfig(kind="fbank", n_mels=32, lifter=0.0, fmax=3500.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert FeatureConfig.from_dict(d) == cfg
    assert config_from_dict({**d, "future_option": 1}) == cfg
    assert cfg.num_features == 32 and FeatureConfig().num_features == 13


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kind": "plp"}, "valid: mfcc, fbank, none"),
        ({"window": "blackman"}, "valid: povey"),
        ({"n_mfcc": 50}, "n_mfcc"),
        ({"fmax": 5000.0}, "fmax"),
        ({"n_fft": 128}, "n_fft"),
        ({"n_mels": 120}, "covers no FFT bin"),
        ({"preemphasis": 1.5}, "preemphasis"),
    ],
)
def test_invalid_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FeatureConfig(**kwargs)


def test_kind_none_passes_input_through():
    cfg = FeatureConfig(kind="none")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(np.asarray(cfg.compute(x)), x)
    assert cfg.compute(np.ones(5)).shape == (5, 1)
    assert online(cfg).accept(x).shape == (4, 3)


# ---------------------------------------------------------------- sensor


def test_sensor_normalisation_and_round_trip():
    cfg = SensorConfig(mean=[1.0, -2.0, 0.5], std=[2.0, 0.5, 1.0])
    x = np.random.default_rng(1).standard_normal((50, 3)).astype(np.float32)
    got = np.asarray(cfg.compute(x))
    np.testing.assert_allclose(got, (x - [1.0, -2.0, 0.5]) / [2.0, 0.5, 1.0], rtol=1e-6)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert config_from_dict(d) == cfg
    with pytest.raises(ValueError, match="3 channels"):
        cfg.compute(x[:, :2])
    with pytest.raises(ConfigError):
        SensorConfig(mean=[0.0], std=[1.0, 1.0])
    with pytest.raises(ConfigError):
        SensorConfig(std=[0.0])


@settings(max_examples=15, deadline=None)
@given(chunks=st.lists(st.integers(0, 40), min_size=1, max_size=10))
def test_sensor_streaming_resample_equals_offline(chunks):
    cfg = SensorConfig(mean=[0.1, 0.2], std=[1.5, 0.5], rate=10, resample_from=25)
    x = np.random.default_rng(len(chunks)).standard_normal((sum(chunks), 2)).astype(np.float32)
    offline = np.asarray(cfg.compute(x))
    expect = (resample_poly(x, 2, 5) - [0.1, 0.2]) / [1.5, 0.5]
    np.testing.assert_allclose(offline, expect, rtol=1e-5, atol=1e-5)
    s = cfg.online()
    parts, i = [], 0
    for n in chunks:
        parts.append(np.asarray(s.accept(x[i : i + n])))
        i += n
    parts.append(np.asarray(s.flush()))
    streamed = np.concatenate(parts)
    np.testing.assert_allclose(streamed, offline, rtol=1e-5, atol=1e-5)
