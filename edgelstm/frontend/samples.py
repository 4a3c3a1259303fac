"""Raw-sample front end: audio in, one window of samples per model step out.

Streaming models that take raw audio (voice-activity detectors and the like)
read ``N`` new samples per step after ``M`` samples of left context, the end
of the previous window::

    step k reads signal[k*N - M : (k+1)*N]     (zeros before the start)

:class:`SampleFrames` describes that framing at a fixed sample rate and
:meth:`SampleFrames.online` gives the streaming form: samples arrive in any
chunk sizes and leave as windows ``(t, M + N)``, the same windows for any
chunking. The last partial step is zero-padded to ``N`` by ``flush``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelstm.errors import ConfigError
from edgelstm.limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE

MAX_WINDOW = 1 << 20  # samples per model step, context included


@dataclass(frozen=True)
class SampleFrames:
    """Windows of ``frame_samples`` new samples after ``context_samples`` old ones.

    Args:
        frame_samples: ``N``, new samples per model step.
        context_samples: ``M``, samples of left context carried from the
            previous step (zeros before the start). Default: ``0``.
        sample_rate: the model's fixed rate in Hz; other rates are resampled
            by the stream.
        pad_last: zero-pad a last partial step to ``N`` on flush (else drop it).
    """

    frame_samples: int
    context_samples: int = 0
    sample_rate: int = 16000
    pad_last: bool = True

    def __post_init__(self):
        for name, v, lo in (("frame_samples", self.frame_samples, 1),
                            ("context_samples", self.context_samples, 0)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.frame_samples + self.context_samples > MAX_WINDOW:
            raise ConfigError(f"a step of {self.frame_samples + self.context_samples} samples "
                              f"is over the limit of {MAX_WINDOW}")
        if not MIN_SAMPLE_RATE <= int(self.sample_rate) <= MAX_SAMPLE_RATE:
            raise ConfigError(f"sample_rate must be in [{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] "
                              f"Hz, got {self.sample_rate}")

    @property
    def hop_length(self) -> int:
        """Samples per model step (``N``), as a feature front end's hop."""
        return int(self.frame_samples)

    @property
    def num_features(self) -> int:
        """Samples each step reads (``M + N``)."""
        return int(self.frame_samples + self.context_samples)

    def frames(self, samples) -> np.ndarray:
        """Every window of a whole signal ``(n,)`` -> ``(steps, M + N)``, float32."""
        online = self.online()
        a, b = online.accept(samples), online.flush()
        return np.concatenate([a, b]) if len(b) else a

    def online(self) -> OnlineSampleFrames:
        """The streaming form (one per stream)."""
        return OnlineSampleFrames(self)


class OnlineSampleFrames:
    """Streaming windows of :class:`SampleFrames`; state is plain arrays (saved with a stream).

    Attributes:
        buf: the last ``M`` samples of the previous window, then the samples
            of the step under way.
    """

    def __init__(self, config: SampleFrames):
        self.config = config
        self.buf = np.zeros(config.context_samples, np.float32)

    def accept(self, samples) -> np.ndarray:
        """Feed samples ``(n,)``; return the windows they complete ``(t, M + N)``."""
        cfg = self.config
        x = np.asarray(samples, np.float32).reshape(-1)
        buf = np.concatenate([self.buf, x])
        n, m = cfg.frame_samples, cfg.context_samples
        steps = (len(buf) - m) // n
        if steps <= 0:
            self.buf = buf
            return np.zeros((0, n + m), np.float32)
        idx = np.arange(steps)[:, None] * n + np.arange(n + m)[None, :]
        out = buf[idx]
        self.buf = buf[steps * n:]
        return out

    def flush(self) -> np.ndarray:
        """The last partial step, zero-padded (``(1, M + N)``), or ``(0, M + N)``."""
        cfg = self.config
        rest = len(self.buf) - cfg.context_samples
        if rest <= 0 or not cfg.pad_last:
            return np.zeros((0, cfg.num_features), np.float32)
        return self.accept(np.zeros(cfg.frame_samples - rest, np.float32))
