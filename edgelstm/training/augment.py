"""Time-series augmentation applied to training batches (NumPy, seeded).

Every transform takes a raw batch ``x (B, T, I)`` float32 with its valid
``lengths (B,)`` and the per-channel training statistics ``mean``/``std``
``(I,)`` (the model normalises later, so sizes are set in normalised units
and padding stays zero). Each returns a new ``(x, lengths)``.

- ``crop``: a random window covering at least ``crop_min`` of the sequence,
  moved to step 0 (lengths shrink).
- ``jitter``: Gaussian noise, ``jitter_sigma`` standard deviations.
- ``scale``: one random gain per sequence and channel around the mean,
  ``N(1, scale_sigma)``.
- ``warp``: smooth random time warping (a monotone path through
  ``warp_knots`` speed changes of ``N(1, warp_sigma)``), same length.
- ``mix``: with probability ``mix_p``, blend a sequence with another of the
  same class (time-normalised to its length), weight ``U(0.5, 1)`` on itself.
- ``mask``: SpecAugment-style masking of audio features: one time span of up
  to ``mask_time`` of the steps and one band of up to ``mask_freq`` of the
  channels set to the mean.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from edgelstm.errors import ConfigError

__all__ = ["AUGMENTATIONS", "Augmenter", "parse_augment"]

AUGMENTATIONS = ("crop", "jitter", "scale", "warp", "mix", "mask")


def parse_augment(spec) -> tuple[str, ...]:
    """``"jitter,scale"`` / a list / ``None`` / ``"none"`` -> a tuple of names."""
    if spec is None:
        return ()
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip().lower() for n in names if n.strip()]
    if names in (["none"], ["off"]):
        return ()
    bad = [n for n in names if n not in AUGMENTATIONS]
    if bad:
        raise ConfigError(f"unknown augmentation {bad[0]!r}; choose from "
                          f"{', '.join(AUGMENTATIONS)} (comma-separated) or none")
    return tuple(dict.fromkeys(names))


@dataclass
class Augmenter:
    """The chosen transforms with their strengths; call it on a batch."""

    names: tuple[str, ...] = ()
    crop_min: float = 0.5
    jitter_sigma: float = 0.05
    scale_sigma: float = 0.1
    warp_sigma: float = 0.15
    warp_knots: int = 4
    mix_p: float = 0.5
    mask_time: float = 0.15
    mask_freq: float = 0.15

    def settings(self) -> dict:
        """JSON-able record (for provenance)."""
        return {f.name: (list(getattr(self, f.name)) if f.name == "names" else getattr(self, f.name))
                for f in fields(self)}

    def __call__(self, x: np.ndarray, lengths: np.ndarray, y: np.ndarray | None,
                 mean: np.ndarray, std: np.ndarray, rng: np.random.Generator):
        """Augment ``x (B, T, I)`` with ``lengths (B,)``; ``y (B,)`` class indices for ``mix``."""
        x = np.array(x, dtype=np.float32, copy=True)
        lengths = np.array(lengths, dtype=np.int32, copy=True)
        for name in self.names:
            x, lengths = getattr(self, "_" + name)(x, lengths, y, mean, std, rng)
        # padding stays zero whatever the transforms did
        x[np.arange(x.shape[1])[None, :] >= lengths[:, None]] = 0.0
        return x, lengths

    def _crop(self, x, lengths, y, mean, std, rng):
        B = len(x)
        new = np.maximum(1, np.ceil(lengths * rng.uniform(self.crop_min, 1.0, B))).astype(np.int32)
        start = (rng.uniform(size=B) * (lengths - new + 1)).astype(np.int32)
        out = np.zeros_like(x)
        for k in range(B):
            out[k, : new[k]] = x[k, start[k]: start[k] + new[k]]
        return out, new

    def _jitter(self, x, lengths, y, mean, std, rng):
        return x + rng.normal(0.0, self.jitter_sigma, x.shape).astype(np.float32) * std, lengths

    def _scale(self, x, lengths, y, mean, std, rng):
        gain = rng.normal(1.0, self.scale_sigma, (x.shape[0], 1, x.shape[2])).astype(np.float32)
        return mean + (x - mean) * gain, lengths

    def _warp(self, x, lengths, y, mean, std, rng):
        out = x.copy()
        for k in range(len(x)):
            L = int(lengths[k])
            if L < 4:
                continue
            speed = np.clip(rng.normal(1.0, self.warp_sigma, self.warp_knots + 1), 0.3, None)
            knots = np.linspace(0, L - 1, self.warp_knots + 1)
            rate = np.interp(np.arange(L), knots, speed)
            path = np.concatenate([[0.0], np.cumsum(rate[1:])])
            path *= (L - 1) / path[-1]  # same start and end, new pace in between
            for c in range(x.shape[2]):
                out[k, :L, c] = np.interp(path, np.arange(L), x[k, :L, c])
        return out, lengths

    def _mix(self, x, lengths, y, mean, std, rng):
        if y is None or y.ndim != 1:
            return x, lengths
        out = x.copy()
        for k in range(len(x)):
            mates = np.flatnonzero((y == y[k]) & (np.arange(len(y)) != k))
            if not len(mates) or rng.uniform() >= self.mix_p:
                continue
            j = int(rng.choice(mates))
            L, Lj = int(lengths[k]), int(lengths[j])
            pos = np.linspace(0, Lj - 1, L)
            other = np.stack([np.interp(pos, np.arange(Lj), x[j, :Lj, c])
                              for c in range(x.shape[2])], axis=-1)
            w = rng.uniform(0.5, 1.0)
            out[k, :L] = w * x[k, :L] + (1 - w) * other
        return out, lengths

    def _mask(self, x, lengths, y, mean, std, rng):
        out = x.copy()
        I = x.shape[2]
        for k in range(len(x)):
            L = int(lengths[k])
            w = int(rng.integers(0, max(1, int(self.mask_time * L)) + 1))
            if w:
                t0 = int(rng.integers(0, L - w + 1))
                out[k, t0:t0 + w] = mean
            f = int(rng.integers(0, max(1, int(self.mask_freq * I)) + 1)) if I > 1 else 0
            if f:
                c0 = int(rng.integers(0, I - f + 1))
                out[k, :L, c0:c0 + f] = mean[c0:c0 + f]
        return out, lengths
