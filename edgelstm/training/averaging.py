"""Exponential moving average of a model's weights during training.

:class:`Average` keeps ``d * average + (1 - d) * weights`` of the trainable
parameters after every optimizer step; :class:`swapped` puts the average into
the model for a validation pass or a copy and restores the live weights after.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map

__all__ = ["Average", "swapped"]


class Average:
    """Exponential moving average of a model's trainable weights, updated after each step.

    The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` so the first
    steps are not pulled towards the initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.steps = decay, 0
        self.params = tree_map(lambda a: mx.array(a), model.trainable_parameters())

    def update(self, model: nn.Module) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        self.params = _ema_step(self.params, model.trainable_parameters(),
                                mx.array(d, dtype=mx.float32))


@mx.compile
def _ema_step(average, params, d):
    """``d * average + (1 - d) * params`` over matching trees (one compiled graph per model)."""
    return tree_map(lambda a, p: d * a + (1 - d) * p, average, params)


class swapped:
    """``with swapped(model, average):`` the averaged weights in ``model``, restored after."""

    def __init__(self, model: nn.Module, average: Average | None):
        self.model, self.average, self.live = model, average, None

    def __enter__(self):
        if self.average is not None:
            self.live = self.model.trainable_parameters()
            self.model.update(self.average.params)
        return self.model

    def __exit__(self, *exc):
        if self.live is not None:
            self.model.update(self.live)
        return False
