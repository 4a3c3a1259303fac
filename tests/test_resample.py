"""Polyphase resampler: scipy parity, aliasing rejection, passband flatness, streaming.

scipy's ``resample_poly`` given our taps is the oracle for the polyphase arithmetic and
the alignment; tones measure the filter against its specification (flat to
``PASSBAND`` of the lower Nyquist frequency, ``STOPBAND_DB`` down beyond it)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgelstm.frontend.resample import (
    PASSBAND,
    STOPBAND_DB,
    StreamingResampler,
    design_filter,
    resample,
    resample_poly,
)

try:
    import scipy.signal as ss
except ImportError:  # scipy is a test-only oracle
    ss = None


def tone(freq: float, rate: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def amplitude(x: np.ndarray, freq: float, rate: int) -> float:
    """Amplitude of ``freq`` in the middle of ``x`` (edges dropped), by projection."""
    x = x[len(x) // 4 : 3 * len(x) // 4]
    t = np.arange(len(x)) / rate
    w = np.hanning(len(x))
    c = np.sum(x * w * np.exp(-2j * np.pi * freq * t)) / np.sum(w)
    return 2 * abs(c)


@pytest.mark.skipif(ss is None, reason="scipy not installed (test-only oracle)")
@pytest.mark.parametrize(
    "up,down,n",
    [(1, 2, 1001), (1, 6, 4800), (2, 1, 77), (3, 2, 500), (160, 441, 4410), (441, 160, 300),
     (2, 3, 1), (4, 6, 99)],
)
def test_matches_scipy_resample_poly(up, down, n):
    x = np.random.default_rng(n).standard_normal(n)
    got = resample_poly(x, up, down)
    g = np.gcd(up, down)
    ref = ss.resample_poly(x, up // g, down // g, window=design_filter(up // g, down // g) / (up // g))
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-12)


def test_output_length_and_dtype():
    x = np.zeros(1000, dtype=np.float32)
    assert resample(x, 16000, 8000).shape == (500,)
    assert resample(x, 44100, 16000).shape == (363,)  # ceil(1000 * 160 / 441)
    assert resample(x, 16000, 8000).dtype == np.float32
    assert resample(np.zeros((10, 3)), 2, 3).shape == (15, 3)
    assert resample_poly(np.zeros(0), 1, 3).shape == (0,)
    h = design_filter(1, 3)
    assert len(h) % 2 == 1 and abs(h.sum() - 1.0) < 1e-12
    assert np.allclose(h, h[::-1])  # linear phase: no delay beyond the alignment


@pytest.mark.parametrize("src,dst,alias", [(48000, 16000, 12000.0), (16000, 8000, 6000.0),
                                           (44100, 8000, 7000.0)])
def test_out_of_band_tone_is_attenuated(src, dst, alias):
    y = resample(tone(alias, src), src, dst)
    # The tone would fold to |dst - alias| (or alias mod dst) without the lowpass.
    folded = abs(((alias + dst / 2) % dst) - dst / 2)
    level = 20 * np.log10(amplitude(y, folded, dst) / 0.5 + 1e-20)
    assert level < -(STOPBAND_DB - 10), level
    limit = 0.5 / np.sqrt(2) * 10 ** (-(STOPBAND_DB - 10) / 20)
    assert np.sqrt(np.mean(y[len(y) // 4 : -len(y) // 4] ** 2)) < limit


@pytest.mark.parametrize("src,dst", [(16000, 8000), (44100, 16000), (8000, 16000)])
def test_band_edges_meet_the_specification(src, dst):
    """Flat (< 0.01 dB) just inside the passband edge; a tone just past the lower
    Nyquist frequency (in or folded back into the band) gone by STOPBAND_DB - 10."""
    nyq = min(src, dst) / 2
    y = resample(tone(0.98 * PASSBAND * nyq, src), src, dst)
    gain_db = 20 * np.log10(amplitude(y, 0.98 * PASSBAND * nyq, dst) / 0.5)
    assert abs(gain_db) < 0.01, gain_db
    if dst < src:  # decimation: a tone 2% above the new Nyquist frequency must not alias
        y = resample(tone(1.02 * nyq, src), src, dst)
        rms = np.sqrt(np.mean(y[len(y) // 4 : -len(y) // 4] ** 2))
        assert 20 * np.log10(rms * np.sqrt(2) / 0.5) < -(STOPBAND_DB - 10)
    else:  # interpolation: the image of a tone near Nyquist must not appear above it
        f = 0.98 * PASSBAND * nyq
        image = 2 * nyq - f
        assert 20 * np.log10(amplitude(y, image, dst) / 0.5 + 1e-20) < -(STOPBAND_DB - 10)


@pytest.mark.parametrize("src,dst,f0", [(48000, 16000, 1000.0), (16000, 8000, 440.0),
                                        (8000, 16000, 1000.0), (44100, 8000, 2000.0)])
def test_in_band_tone_keeps_amplitude(src, dst, f0):
    y = resample(tone(f0, src), src, dst)
    gain_db = 20 * np.log10(amplitude(y, f0, dst) / 0.5)
    assert abs(gain_db) < 0.1, gain_db


@settings(max_examples=40, deadline=None)
@given(
    factors=st.sampled_from([(1, 2), (2, 1), (1, 6), (3, 2), (2, 3), (160, 441), (5, 5)]),
    chunks=st.lists(st.integers(0, 300), min_size=1, max_size=10),
    channels=st.sampled_from([0, 2]),
)
def test_streaming_equals_offline(factors, chunks, channels):
    up, down = factors
    rng = np.random.default_rng(sum(chunks))
    shape = (sum(chunks),) + ((channels,) if channels else ())
    x = rng.standard_normal(shape).astype(np.float32)
    offline = resample_poly(x, up, down)
    r = StreamingResampler(up, down)
    parts, i = [], 0
    for n in chunks:
        parts.append(r.accept(x[i : i + n]))
        i += n
    parts.append(r.flush())
    streamed = np.concatenate([p.reshape((-1,) + x.shape[1:]) for p in parts])
    assert streamed.shape == offline.shape
    np.testing.assert_array_equal(streamed, offline)  # bit for bit, any chunking
    with pytest.raises(ValueError, match="after flush"):
        r.accept(x[:1])


def test_invalid_factors():
    with pytest.raises(ValueError):
        resample_poly(np.zeros(4), 0, 1)
    with pytest.raises(ValueError):
        resample(np.zeros(4), 8000.5, 16000)
