"""Front ends: log-mel filterbank / MFCC for speech, normalisation for sensors.

Speech features follow the textbook definition, computed in MLX:

1. optional pre-emphasis over the whole signal, ``y[n] = x[n] - a * x[n-1]`` with
   ``x[-1] = 0`` (streaming carries the last sample between chunks);
2. frames of ``win = round(rate * frame_ms / 1000)`` samples every
   ``hop = round(rate * hop_ms / 1000)`` samples, **no padding**: a signal of
   ``N`` samples gives ``1 + (N - win) // hop`` frames (0 when ``N < win``) and
   frame ``t`` covers samples ``[t * hop, t * hop + win)``; a tail shorter than a
   hop is dropped, which makes streamed and offline frames identical;
3. a symmetric window (``povey``, ``hamming``, ``hann`` or ``rectangular``),
   zero-padding to ``n_fft`` and the power spectrum ``|rfft|^2``;
4. triangular mel filters (HTK mel scale ``2595 log10(1 + f / 700)``, centres
   equally spaced in mel from ``fmin`` to ``fmax``, triangles linear in Hz, peak 1);
5. ``log(max(energy, log_floor))`` -> ``fbank``; for ``mfcc`` the orthonormal
   DCT-II of the log-mel vector, first ``n_mfcc`` coefficients, then optional
   liftering ``c_k *= 1 + (L / 2) sin(pi k / L)``. No dither.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import mlx.core as mx
import numpy as np

from edgelstm.errors import ConfigError
from edgelstm.frontend.resample import StreamingResampler, resample

__all__ = [
    "FeatureConfig",
    "OnlineFeatures",
    "OnlineSensor",
    "SensorConfig",
    "compute",
    "config_from_dict",
    "dct_matrix",
    "mel_filterbank",
    "online",
    "window",
]

KINDS = ("mfcc", "fbank", "none")
WINDOWS = ("povey", "hamming", "hann", "rectangular")


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def window(name: str, length: int) -> np.ndarray:
    """Symmetric analysis window (Kaldi definitions), shape ``(length,)``, float64."""
    n = np.arange(length, dtype=np.float64)
    denom = max(length - 1, 1)
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / denom)
    if name == "hann":
        return hann
    if name == "povey":
        return hann**0.85
    if name == "hamming":
        return 0.54 - 0.46 * np.cos(2.0 * np.pi * n / denom)
    if name == "rectangular":
        return np.ones(length)
    raise ConfigError(f"unknown window {name!r}; valid: {', '.join(WINDOWS)}")


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: float, fmin: float, fmax: float
) -> np.ndarray:
    """Triangular mel filters over the ``n_fft // 2 + 1`` rfft bins, shape ``(n_mels, bins)``.

    Raises:
        ConfigError: If a filter covers no FFT bin (too many mels for ``n_fft``).
    """
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * (sample_rate / n_fft)
    lo, mid, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    fb = np.maximum(0.0, np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)))
    empty = np.flatnonzero(fb.max(axis=1) <= 0.0)
    if empty.size:
        raise ConfigError(
            f"mel filter {int(empty[0])} covers no FFT bin: lower n_mels ({n_mels}) "
            f"or raise n_fft ({n_fft})"
        )
    return fb


def dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Orthonormal DCT-II rows ``0..n_out-1`` (``scipy.fft.dct(norm='ortho')``), ``(n_out, n_in)``."""
    k = np.arange(n_out, dtype=np.float64)[:, None]
    n = np.arange(n_in, dtype=np.float64)[None, :]
    d = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2.0 * n + 1.0) / (2.0 * n_in))
    d[0] /= np.sqrt(2.0)
    return d


@dataclass(frozen=True)
class FeatureConfig:
    """Speech front-end settings, stored in a model's ``config.json``.

    Args:
        kind: ``"mfcc"``, ``"fbank"`` (log-mel) or ``"none"`` (input used as is).
        sample_rate: Expected input rate in Hz. Default: ``8000``.
        frame_ms: Frame length in ms. Default: ``25.0``.
        hop_ms: Frame shift in ms. Default: ``10.0``.
        n_fft: FFT size; ``None`` means the next power of two >= frame length.
        n_mels: Mel filters. Default: ``40``.
        n_mfcc: Cepstra kept for ``mfcc``. Default: ``13``.
        fmin: Lowest filter edge in Hz. Default: ``20.0``.
        fmax: Highest filter edge in Hz; ``None`` means ``sample_rate / 2``.
        window: ``"povey"``, ``"hamming"``, ``"hann"`` or ``"rectangular"``.
        preemphasis: Coefficient ``a``; ``0`` disables it. Default: ``0.97``.
        lifter: Cepstral lifter ``L``; ``0`` disables it. Default: ``0.0``.
        log_floor: Energy floor before the log. Default: ``1e-10``.
    """

    kind: str = "mfcc"
    sample_rate: int = 8000
    frame_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    n_mels: int = 40
    n_mfcc: int = 13
    fmin: float = 20.0
    fmax: float | None = None
    window: str = "povey"
    preemphasis: float = 0.97
    lifter: float = 0.0
    log_floor: float = 1e-10

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"unknown feature kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if self.window not in WINDOWS:
            raise ConfigError(f"unknown window {self.window!r}; valid: {', '.join(WINDOWS)}")
        if self.kind == "none":
            return
        if self.sample_rate <= 0 or self.win_length < 2 or self.hop_length < 1:
            raise ConfigError(
                f"need sample_rate > 0 and frames of >= 2 samples with hop >= 1; got rate "
                f"{self.sample_rate}, frame {self.frame_ms} ms, hop {self.hop_ms} ms"
            )
        if self.fft_size < self.win_length:
            raise ConfigError(f"n_fft ({self.n_fft}) is shorter than the frame ({self.win_length})")
        if not 0.0 <= self.fmin < self.high_freq <= self.sample_rate / 2:
            raise ConfigError(
                f"need 0 <= fmin < fmax <= sample_rate / 2; got fmin {self.fmin}, "
                f"fmax {self.high_freq}"
            )
        if self.n_mels < 1 or (self.kind == "mfcc" and not 1 <= self.n_mfcc <= self.n_mels):
            raise ConfigError(f"need 1 <= n_mfcc <= n_mels; got {self.n_mfcc}, {self.n_mels}")
        if not 0.0 <= self.preemphasis < 1.0 or self.lifter < 0 or self.log_floor <= 0:
            raise ConfigError("need 0 <= preemphasis < 1, lifter >= 0 and log_floor > 0")
        mel_filterbank(self.n_mels, self.fft_size, self.sample_rate, self.fmin, self.high_freq)

    @property
    def win_length(self) -> int:
        """Frame length in samples."""
        return int(round(self.sample_rate * self.frame_ms / 1000.0))

    @property
    def hop_length(self) -> int:
        """Frame shift in samples."""
        return int(round(self.sample_rate * self.hop_ms / 1000.0))

    @property
    def fft_size(self) -> int:
        """FFT size actually used."""
        if self.n_fft is not None:
            return int(self.n_fft)
        return 1 << max(self.win_length - 1, 1).bit_length()

    @property
    def high_freq(self) -> float:
        """Upper filterbank edge in Hz."""
        return float(self.sample_rate) / 2 if self.fmax is None else float(self.fmax)

    @property
    def num_features(self) -> int | None:
        """Features per frame (``None`` for ``kind="none"``: the input's own width)."""
        return {"mfcc": self.n_mfcc, "fbank": self.n_mels}.get(self.kind)

    def num_frames(self, n_samples: int) -> int:
        """Frames produced from ``n_samples`` samples (no padding)."""
        if self.kind == "none":
            return n_samples
        return 0 if n_samples < self.win_length else 1 + (n_samples - self.win_length) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureConfig:
        """Build from a dict; unknown keys are ignored (forward compatibility)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def compute(self, samples) -> mx.array:
        """Offline features; see :func:`compute`."""
        return compute(samples, self)

    def online(self) -> OnlineFeatures:
        """A new streaming extractor for this config."""
        return OnlineFeatures(self)


@lru_cache(maxsize=16)
def _constants(cfg: FeatureConfig) -> tuple[mx.array, mx.array, mx.array | None]:
    """Window ``(win,)``, mel matrix ``(bins, n_mels)`` and DCT ``(n_mels, n_mfcc)`` or None."""
    win = mx.array(window(cfg.window, cfg.win_length).astype(np.float32))
    fb = mel_filterbank(cfg.n_mels, cfg.fft_size, cfg.sample_rate, cfg.fmin, cfg.high_freq)
    dct = None
    if cfg.kind == "mfcc":
        d = dct_matrix(cfg.n_mfcc, cfg.n_mels)
        if cfg.lifter > 0:
            k = np.arange(cfg.n_mfcc)
            d = d * (1.0 + 0.5 * cfg.lifter * np.sin(np.pi * k / cfg.lifter))[:, None]
        dct = mx.array(d.T.astype(np.float32))
    return win, mx.array(fb.T.astype(np.float32)), dct


def _as_signal(samples) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected samples of shape (N,), got {x.shape}")
    return x


def _preemphasize(x: np.ndarray, a: float, prev: float) -> np.ndarray:
    if a == 0.0 or x.size == 0:
        return x
    shifted = np.concatenate([np.array([prev], dtype=np.float32), x[:-1]])
    return x - np.float32(a) * shifted


def _features(cfg: FeatureConfig, y: np.ndarray, n_frames: int) -> mx.array:
    """Features of the first ``n_frames`` frames of pre-emphasised signal ``y``."""
    width = cfg.num_features
    if n_frames == 0:
        return mx.zeros((0, width), dtype=mx.float32)
    win, fb, dct = _constants(cfg)
    frames = np.lib.stride_tricks.sliding_window_view(y, cfg.win_length)[
        : (n_frames - 1) * cfg.hop_length + 1 : cfg.hop_length
    ]
    out = []
    for b in range(0, n_frames, _BLOCK):
        block = mx.array(np.ascontiguousarray(frames[b : b + _BLOCK]))
        spec = mx.fft.rfft(block * win, n=cfg.fft_size, axis=-1)
        power = mx.square(spec.real) + mx.square(spec.imag)
        feats = mx.log(mx.maximum(_rowwise_matmul(power, fb), cfg.log_floor))
        out.append(feats if dct is None else _rowwise_matmul(feats, dct))
    return out[0] if len(out) == 1 else mx.concatenate(out)


# Frames per block: bounds the (block, K, N) product in _rowwise_matmul to ~10 MB.
_BLOCK = 512


def _rowwise_matmul(a: mx.array, b: mx.array) -> mx.array:
    """``a @ b`` as multiply-and-sum, whose rounding does not depend on the row count.

    BLAS picks kernels by matrix size, so ``a[:1] @ b`` can differ from ``(a @ b)[:1]``
    in the last bit; this keeps streamed frames bit-identical to offline ones.
    """
    # Reducing over the middle axis accumulates K in order, vectorised over N (fast on CPU).
    return mx.sum(a[:, :, None] * b[None], axis=1)


def compute(samples, config: FeatureConfig) -> mx.array:
    """Offline features of a whole signal.

    Args:
        samples: Signal, shape ``(N,)`` (float, nominally in [-1, 1]); for
            ``kind="none"`` any ``(T,)`` or ``(T, F)`` array, returned as ``(T, F)``.
        config: Front-end settings.

    Returns:
        Features, shape ``(T, F)`` float32 with ``T = config.num_frames(N)``.
    """
    if config.kind == "none":
        x = np.asarray(samples, dtype=np.float32)
        return mx.array(x.reshape(x.shape[0], -1) if x.ndim != 2 else x)
    x = _as_signal(samples)
    y = _preemphasize(x, config.preemphasis, 0.0)
    return _features(config, y, config.num_frames(len(x)))


class OnlineFeatures:
    """Streaming extractor: concatenated ``accept`` outputs equal :func:`compute`.

    Equal means bit-identical on the CPU backend (see ``_rowwise_matmul``) for any
    chunking; a chunk shorter than a hop may return no frames.

    It keeps the pre-emphasised samples not yet consumed by a full frame (fewer
    than ``win`` after each call) and the last raw sample for pre-emphasis.

    Args:
        config: Front-end settings.
    """

    def __init__(self, config: FeatureConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        self._buf = np.zeros(0, dtype=np.float32)
        self._prev = 0.0
        self.frames_out = 0

    def accept(self, samples) -> mx.array:
        """Feed a chunk of samples ``(n,)``; return the new frames ``(t, F)`` (``t`` may be 0)."""
        cfg = self.config
        if cfg.kind == "none":
            out = compute(samples, cfg)
            self.frames_out += out.shape[0]
            return out
        x = _as_signal(samples)
        y = _preemphasize(x, cfg.preemphasis, self._prev)
        if x.size:
            self._prev = float(x[-1])
        buf = np.concatenate([self._buf, y])
        n = cfg.num_frames(len(buf))
        out = _features(cfg, buf, n)
        self._buf = buf[n * cfg.hop_length :]
        self.frames_out += n
        return out


@dataclass(frozen=True)
class SensorConfig:
    """Sensor front end: optional fixed-rate resampling, then per-channel ``(x - mean) / std``.

    Args:
        mean: Per-channel means, length C, or ``None`` (no centring).
        std: Per-channel standard deviations, length C, or ``None`` (no scaling).
        rate: Rate the model expects in Hz, or ``None``.
        resample_from: Rate of the incoming data in Hz; resampled to ``rate`` when both are set.
    """

    kind: str = "sensor"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    rate: float | None = None
    resample_from: float | None = None

    def __post_init__(self):
        if self.kind != "sensor":
            raise ConfigError(f"SensorConfig kind must be 'sensor', got {self.kind!r}")
        for name in ("mean", "std"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, tuple(float(a) for a in np.ravel(v)))
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"mean has {len(self.mean)} channels but std has {len(self.std)}")
        if self.std is not None and min(self.std, default=1.0) <= 0:
            raise ConfigError("std values must be > 0")
        for name in ("rate", "resample_from"):
            v = getattr(self, name)
            if v is not None and (v <= 0 or int(v) != v):
                raise ConfigError(f"{name} must be a positive integer rate, got {v}")

    @property
    def resamples(self) -> bool:
        """Whether input is resampled."""
        return bool(self.rate and self.resample_from and self.rate != self.resample_from)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensorConfig:
        """Build from a dict; unknown keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Apply ``(x - mean) / std`` to frames ``(T, C)``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        for v in (self.mean, self.std):
            if v is not None and len(v) != x.shape[-1]:
                raise ValueError(f"config has {len(v)} channels, input has {x.shape[-1]}")
        if self.mean is not None:
            x = x - np.asarray(self.mean, dtype=np.float32)
        if self.std is not None:
            x = x / np.asarray(self.std, dtype=np.float32)
        return x

    def compute(self, x) -> mx.array:
        """Offline: resample (if set) then normalise ``(T, C)`` -> ``(T', C)``."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x[:, None]
        if self.resamples:
            x = resample(x, int(self.resample_from), int(self.rate)).astype(np.float32)
        return mx.array(self.normalize(x))

    def online(self) -> OnlineSensor:
        """A new streaming front end for this config."""
        return OnlineSensor(self)


class OnlineSensor:
    """Streaming sensor front end; ``accept`` outputs plus ``flush`` equal :meth:`SensorConfig.compute`.

    Without resampling it has no latency and ``flush`` returns nothing.
    """

    def __init__(self, config: SensorConfig):
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Start a new stream."""
        cfg = self.config
        self._rs = (
            StreamingResampler(int(cfg.rate), int(cfg.resample_from)) if cfg.resamples else None
        )

    def _out(self, y: np.ndarray, width: int) -> mx.array:
        return mx.array(self.config.normalize(y.reshape(-1, width).astype(np.float32)))

    def accept(self, frames) -> mx.array:
        """Feed frames ``(t, C)``; return the new output frames ``(t', C)``."""
        x = np.asarray(frames, dtype=np.float32)
        x = x[:, None] if x.ndim == 1 else x
        y = x if self._rs is None else self._rs.accept(x)
        return self._out(y, x.shape[1])

    def flush(self) -> mx.array:
        """End the stream; return frames held back by the resampler."""
        if self._rs is None:
            width = len(self.config.mean or self.config.std or ()) or 1
            return mx.zeros((0, width), dtype=mx.float32)
        y = self._rs.flush()
        width = y.shape[1] if y.ndim == 2 else len(self.config.mean or self.config.std or ()) or 1
        return self._out(y, width)


def config_from_dict(d: dict[str, Any]) -> FeatureConfig | SensorConfig:
    """Rebuild a front-end config from ``to_dict`` output, dispatching on ``kind``."""
    kind = d.get("kind", "none")
    if kind == "sensor":
        return SensorConfig.from_dict(d)
    return FeatureConfig.from_dict(d)


def online(config: FeatureConfig | SensorConfig) -> OnlineFeatures | OnlineSensor:
    """Streaming front end for either config type."""
    return config.online()
