"""A small causal convolutional feature stem before the recurrent stack.

The LSTM-FCN observation, in the recurrent family: a recurrent layer fed one
raw sample per step of a long univariate series (GunPoint 150, ArrowHead
251 steps) has to carry shape information over hundreds of steps and
barely learns; a strided convolution first turns every ``stride`` raw steps
into ``channels`` local-shape features, so the LSTM runs ``stride`` times
fewer steps on richer inputs.

``ConvStem`` is ``Conv1d(I -> C, kernel k, stride s)`` on the normalised
input left-padded with ``k - s`` zeros (causal: output ``j`` reads raw steps
``s*j - (k - s) .. s*j + s - 1``), then ReLU. A sequence of ``L`` valid
steps gives ``L // s`` outputs (at least 1): the last ``L mod s`` steps are
dropped, so no output ever reads padding past a sequence's end and a
padded batch gives each sequence's own result.

Streaming: not built. A stem could stream with a ``k - s`` step input
buffer plus the incomplete stride, but :mod:`edgelstm.streaming` carries
only recurrent state, so :attr:`SequenceModel.can_stream` is ``False`` for
a model with a stem.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from edgelstm.errors import ConfigError
from edgelstm.limits import MAX_CONV_CHANNELS, MAX_CONV_KERNEL

__all__ = ["ConvStem", "stem_lengths"]


class ConvStem(nn.Module):
    """Causal strided ``Conv1d`` + ReLU: ``(B, T, I)`` -> ``(B, T // s, C)``.

    Args:
        input_size: features per input step, ``I``.
        channels: output features per stem step, ``C``.
        kernel: taps per output, ``k >= stride``.
        stride: input steps per output step, ``s``.

    Parameters ``conv.weight (C, k, I)`` (MLX's channels-last layout) and
    ``conv.bias (C,)``.
    """

    def __init__(self, input_size: int, channels: int = 32, kernel: int = 8, stride: int = 4):
        super().__init__()
        for name, value, top in (("input_size", input_size, None),
                                 ("stem channels", channels, MAX_CONV_CHANNELS),
                                 ("stem kernel", kernel, MAX_CONV_KERNEL),
                                 ("stem stride", stride, MAX_CONV_KERNEL)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1 or (
                    top is not None and value > top):
                raise ConfigError(f"{name} must be an integer in 1..{top or 'inf'}, got {value!r}")
        if kernel < stride:
            raise ConfigError(f"the stem kernel ({kernel}) must cover its stride ({stride})")
        self.input_size, self.channels = input_size, channels
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv1d(input_size, channels, kernel, stride=stride)

    def config(self) -> dict:
        """JSON-able settings (``config.json`` ``stem``)."""
        return {"kind": "conv", "channels": self.channels, "kernel": self.kernel,
                "stride": self.stride}

    @classmethod
    def from_config(cls, input_size: int, config: dict) -> ConvStem:
        """Build from :meth:`config` output."""
        if not isinstance(config, dict) or config.get("kind", "conv") != "conv":
            raise ConfigError(f"stem must be {{'kind': 'conv', ...}}, got {config!r}")
        unknown = set(config) - {"kind", "channels", "kernel", "stride"}
        if unknown:
            raise ConfigError(f"unknown stem setting {sorted(unknown)[0]!r}")
        return cls(input_size, **{k: v for k, v in config.items() if k != "kind"})

    def __call__(self, x):
        """``x (B, T, I)`` or ``(T, I)`` (normalised) -> ``(B, T // s, C)``; ``T >= s``."""
        if x.ndim == 2:
            return self(x[None])[0]
        if x.shape[-2] < self.stride:
            raise ConfigError(f"a sequence of {x.shape[-2]} steps is shorter than the stem's "
                              f"stride {self.stride}")
        pad = self.kernel - self.stride
        if pad:
            x = mx.pad(x, [(0, 0), (pad, 0), (0, 0)])
        return nn.relu(self.conv(x))


def stem_lengths(lengths, stride: int):
    """Valid stem steps ``max(L // s, 1)`` for valid input steps ``lengths (B,)``."""
    if lengths is None:
        return None
    return mx.maximum(lengths // stride, 1).astype(mx.int32)
