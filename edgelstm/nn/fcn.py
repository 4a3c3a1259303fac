"""A fully convolutional branch beside the recurrent stack (the LSTM-FCN design).

Karim et al. (LSTM-FCN, 2017; MLSTM-FCN, 2019) run a small fully
convolutional network in parallel with the LSTM and concatenate its
globally pooled features with the LSTM's before the classifier: the
convolutions see local shapes at every position, the LSTM the order. On
JapaneseVowels (12 channels, 7-29 steps, seeds 0-4) test accuracy goes from
0.965-0.970 (LSTM alone) to 0.978-0.989 with 64/128/64 filters and dropout
0.8 on the LSTM's features (see ``examples/japanesevowels/README.md``).

``ConvBranch`` is ``n`` blocks of ``Conv1d(k_i) -> BatchNorm -> ReLU`` on
the normalised input, then the mean over each sequence's valid steps:
``(B, T, I)`` -> ``(B, C_n)``. Stride 1, and every block keeps ``T`` steps:

- ``padding="same"`` (Karim et al.'s, the default of the recipe and the CLI):
  ``(k - 1) // 2`` zeros on the left and ``k // 2`` on the right. Each
  block's input is zeroed past each sequence's length first, so a sequence
  in a padded batch reads the zeros it would read alone. On JapaneseVowels
  (7-29 frames against a first kernel of 8) the edges matter: test
  0.984-0.989 with it against 0.981-0.986 causal (seeds 0-5, CLI defaults
  otherwise, before label smoothing joined them).
- ``padding="causal"``: ``k - 1`` zeros on the left, so output ``t`` reads
  inputs ``<= t`` only and padding is never read. A saved config without
  the key means this (branches written before ``padding`` existed).

Batch normalisation takes its statistics over valid steps only while
training; in evaluation it is a per-channel affine map that the ONNX
exporter folds into the convolution.

Streaming: not built. The branch could stream (a ``k - 1`` step window per
block and a running sum), but :mod:`edgelstm.streaming` carries only
recurrent state, so :attr:`SequenceModel.can_stream` is ``False`` for a
model with a branch.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from edgelstm.errors import ConfigError
from edgelstm.fast import dense as _dense
from edgelstm.limits import MAX_CONV_CHANNELS, MAX_CONV_KERNEL, MAX_FCN_BLOCKS

__all__ = ["ConvBranch", "MaskedBatchNorm", "valid_mask"]

DEFAULT_FCN = {"kind": "fcn", "channels": [128, 256, 128], "kernels": [8, 5, 3]}
PADDINGS = ("same", "causal")


def valid_mask(lengths, T: int, dtype=mx.float32):
    """``(B, T, 1)`` ones on valid steps (``lengths (B,)``), or ``None`` for all valid."""
    if lengths is None:
        return None
    lengths = lengths if isinstance(lengths, mx.array) else mx.array(lengths)
    return (mx.arange(T)[None, :] < lengths[:, None]).astype(dtype)[:, :, None]


class MaskedBatchNorm(nn.Module):
    """Per-channel batch normalisation over the valid steps of ``(B, T, C)``.

    Training: normalise by the mean/variance of the valid steps of the batch
    and move the running statistics (momentum 0.1, as ``mlx.nn.BatchNorm``);
    evaluation: ``(x - running_mean) / sqrt(running_var + eps) * weight + bias``.
    """

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))
        self.running_mean = mx.zeros((channels,))
        self.running_var = mx.ones((channels,))
        self.freeze(keys=["running_mean", "running_var"], recurse=False)

    def unfreeze(self, *args, **kwargs):
        """Keep the running statistics frozen (they are not trained by gradients)."""
        super().unfreeze(*args, **kwargs)
        self.freeze(keys=["running_mean", "running_var"], recurse=False)
        return self

    def scale_shift(self) -> tuple[mx.array, mx.array]:
        """Evaluation-mode map as ``x * scale + shift``, both ``(C,)``."""
        scale = self.weight * mx.rsqrt(self.running_var + self.eps)
        return scale, self.bias - self.running_mean * scale

    def __call__(self, x, mask=None):
        """``x (B, T, C)``, ``mask (B, T, 1)`` or ``None`` -> ``(B, T, C)``."""
        if not self.training:
            scale, shift = self.scale_shift()
            return x * scale + shift
        if mask is None:
            mean = x.mean(axis=(0, 1))
            var = mx.square(x - mean).mean(axis=(0, 1))
            count = x.shape[0] * x.shape[1]
        else:
            count = mx.maximum(mask.sum(), 1.0)
            mean = (x * mask).sum(axis=(0, 1)) / count
            var = (mx.square(x - mean) * mask).sum(axis=(0, 1)) / count
        m = self.momentum
        # unbiased variance for the running estimate, as torch and mlx.nn.BatchNorm
        unbiased = var * count / mx.maximum(count - 1, 1)
        self.running_mean = (1 - m) * self.running_mean + m * mx.stop_gradient(mean)
        self.running_var = (1 - m) * self.running_var + m * mx.stop_gradient(unbiased)
        return (x - mean) * mx.rsqrt(var + self.eps) * self.weight + self.bias


class _Block(nn.Module):
    """Zero-padded ``Conv1d(k)`` (``"same"`` or ``"causal"``) -> :class:`MaskedBatchNorm`
    -> ReLU, ``(B, T, I) -> (B, T, C)``."""

    def __init__(self, input_size: int, channels: int, kernel: int, padding: str = "same"):
        super().__init__()
        self.kernel, self.padding = kernel, padding
        self.conv = nn.Conv1d(input_size, channels, kernel)
        self.bn = MaskedBatchNorm(channels)

    def pads(self) -> tuple[int, int]:
        """Zeros added before and after the ``T`` steps; they sum to ``k - 1``."""
        k = self.kernel
        return ((k - 1) // 2, k // 2) if self.padding == "same" else (k - 1, 0)

    def __call__(self, x, mask, batch: int | None = None):
        """``x (B, T, I)`` -> ``(B, T, C)``; ``batch``: run on the kernels (evaluation only)."""
        if self.padding == "same" and mask is not None:
            x = x * mask  # steps past a length read as the zeros a sequence alone reads
        if self.kernel > 1:
            x = mx.pad(x, [(0, 0), self.pads(), (0, 0)])
        if batch is None:
            return nn.relu(self.bn(self.conv(x), mask))
        # MLX's Linux conv runs on its bundled reference BLAS (~27x slower than ONNX
        # Runtime on the JapaneseVowels model); as k shifted copies side by side
        # (B, T, k*I) it is one matmul on the kernels' packed GEMM instead.
        T = x.shape[1] - self.kernel + 1
        cols = x if self.kernel == 1 else mx.concatenate(
            [x[:, j:j + T] for j in range(self.kernel)], axis=-1)
        weight, bias = self.folded()
        return mx.maximum(_dense.linear(cols, weight, bias, batch=batch), 0.0)

    def folded(self) -> tuple[mx.array, mx.array]:
        """Evaluation-mode conv + batch norm as one linear map: ``(C, k*I)``, ``(C,)``.

        Remembered while the parameters are the same arrays (a new array, e.g.
        after ``update`` or loading, refolds), so the kernels' packing of the
        weight is reused across calls.
        """
        params = (self.conv.weight, self.conv.bias, self.bn.weight, self.bn.bias,
                  self.bn.running_mean, self.bn.running_var)
        memo = self.__dict__.get("_folded")
        if memo is None or any(a is not b for a, b in zip(memo[0], params, strict=True)):
            scale, shift = self.bn.scale_shift()
            C = self.conv.weight.shape[0]
            weight = (self.conv.weight * scale[:, None, None]).reshape(C, -1)
            bias = self.conv.bias * scale + shift
            mx.eval(weight, bias)
            memo = (params, (weight, bias))
            # object.__setattr__: an nn.Module attribute holding arrays would become
            # a parameter (and be saved); this is a cache, not state.
            object.__setattr__(self, "_folded", memo)
        return memo[1]


class ConvBranch(nn.Module):
    """Causal conv blocks + masked global average pooling: ``(B, T, I)`` -> ``(B, C_n)``.

    Args:
        input_size: features per input step, ``I``.
        channels: output channels of each block, ``[C_1, ..., C_n]``.
        kernels: taps of each block's convolution, ``[k_1, ..., k_n]``.
        dropout: training-time dropout on the recurrent stack's summary before
            it is joined to the pooled features (LSTM-FCN uses 0.8, so the head
            cannot lean on the LSTM alone); applied by :class:`SequenceModel`.
        padding: ``"same"`` or ``"causal"`` zeros around each block's input
            (see the module docstring).

    Parameters per block ``i``: ``blocks.i.conv.weight (C_i, k_i, C_{i-1})``
    (MLX's channels-last layout), ``blocks.i.conv.bias (C_i,)`` and
    ``blocks.i.bn.{weight, bias, running_mean, running_var} (C_i,)``.
    """

    def __init__(self, input_size: int, channels=(128, 256, 128), kernels=(8, 5, 3),
                 dropout: float = 0.0, padding: str = "same"):
        super().__init__()
        if padding not in PADDINGS:
            raise ConfigError(f"fcn padding must be one of {', '.join(PADDINGS)}, "
                              f"got {padding!r}")
        self.padding = padding
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not (
                0.0 <= dropout < 1.0):
            raise ConfigError(f"fcn dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        channels, kernels = _int_list("fcn channels", channels), _int_list("fcn kernels", kernels)
        if len(channels) != len(kernels):
            raise ConfigError(f"the fcn branch has {len(channels)} channel counts but "
                              f"{len(kernels)} kernels")
        if not 1 <= len(channels) <= MAX_FCN_BLOCKS:
            raise ConfigError(f"the fcn branch takes 1..{MAX_FCN_BLOCKS} blocks, "
                              f"got {len(channels)}")
        for name, values, top in (("fcn channels", channels, MAX_CONV_CHANNELS),
                                  ("fcn kernels", kernels, MAX_CONV_KERNEL)):
            bad = [v for v in values if not 1 <= v <= top]
            if bad:
                raise ConfigError(f"{name} must be integers in 1..{top}, got {bad[0]}")
        if not isinstance(input_size, int) or input_size < 1:
            raise ConfigError(f"input_size must be a positive integer, got {input_size!r}")
        self.input_size, self.channels, self.kernels = input_size, channels, kernels
        widths = [input_size, *channels]
        self.blocks = [_Block(widths[i], channels[i], kernels[i], padding)
                       for i in range(len(channels))]

    @property
    def output_size(self) -> int:
        """Pooled features per sequence, ``C_n``."""
        return self.channels[-1]

    def config(self) -> dict:
        """JSON-able settings (``config.json`` ``fcn``)."""
        return {"kind": "fcn", "channels": list(self.channels), "kernels": list(self.kernels),
                "padding": self.padding, **({"dropout": self.dropout} if self.dropout else {})}

    @classmethod
    def from_config(cls, input_size: int, config: dict) -> ConvBranch:
        """Build from :meth:`config` output (no ``padding``: ``"causal"``, as saved before it)."""
        if not isinstance(config, dict) or config.get("kind", "fcn") != "fcn":
            raise ConfigError(f"fcn must be {{'kind': 'fcn', ...}}, got {config!r}")
        unknown = set(config) - {"kind", "channels", "kernels", "dropout", "padding"}
        if unknown:
            raise ConfigError(f"unknown fcn setting {sorted(unknown)[0]!r}")
        return cls(input_size, config.get("channels", DEFAULT_FCN["channels"]),
                   config.get("kernels", DEFAULT_FCN["kernels"]), config.get("dropout", 0.0),
                   config.get("padding", "causal"))

    def steps(self, x, lengths=None, fast=None):
        """Per-step features of the last block, ``(B, T, C_n)`` (zero past each length).

        ``fast``: ``None`` runs the convolutions on the kernels' GEMM in evaluation
        where the recurrent kernels run (:func:`edgelstm.fast.dense.on_kernel`),
        ``False`` always as MLX ops (training always does).
        """
        mask = valid_mask(lengths, x.shape[1], x.dtype)
        batch = x.shape[0]
        on_kernel = fast is not False and not self.training and _dense.on_kernel(batch, x)
        for block in self.blocks:
            x = block(x, mask, batch if on_kernel else None)
        return x if mask is None else x * mask

    def __call__(self, x, lengths=None, fast=None):
        """``x (B, T, I)`` or ``(T, I)`` (normalised), ``lengths (B,)`` -> ``(B, C_n)``."""
        if x.ndim == 2:
            return self(x[None], fast=fast)[0]
        y = self.steps(x, lengths, fast)
        if lengths is None:
            return y.mean(axis=1)
        lengths = lengths if isinstance(lengths, mx.array) else mx.array(lengths)
        return y.sum(axis=1) / mx.maximum(lengths.astype(y.dtype), 1.0)[:, None]


def _int_list(name: str, values) -> list[int]:
    if not isinstance(values, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{name} must be a list of integers, got {values!r}")
    return [int(v) for v in values]
