"""A scalar loss for gradient tests, shared by the kernel-gradient suites."""

from __future__ import annotations

import mlx.core as mx


def distinct_loss(outs):
    """Touches every output with distinct weights, so no cotangent is uniform."""
    total = 0.0
    for k, o in enumerate(outs):
        w = mx.sin(mx.arange(o.size, dtype=mx.float32) * (0.37 + k)).reshape(o.shape)
        total = total + (o * w).sum() + 0.1 * (o * o).sum()
    return total
