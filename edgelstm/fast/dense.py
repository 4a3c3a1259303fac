"""A model's input normalisation and linear head on the fused kernels' dense ops.

Streaming a chunk through a whole model, one MLX op anywhere in the chain sends
the evaluation through MLX's CPU stream thread (~100 µs on a small VM, several
times a small model's chunk). With the recurrent stack, these run eagerly on
computed inputs (see :data:`edgelstm.fast.dispatch.EAGER_MAX_BATCH`), and a frame
head rounds each row the same whatever the number of rows, so a streamed frame
head equals the full pass bit for bit.
"""

from __future__ import annotations

import mlx.core as mx

from edgelstm.fast import dispatch
from edgelstm.fast.dispatch import placement


def on_kernel(batch: int, *arrays) -> bool:
    """Whether a model's normalisation and linear head run as the kernels' dense ops.

    Yes where the recurrent kernels run (:func:`placement`) and every array is
    float32: a streamed chunk then never leaves the kernels (see
    :data:`edgelstm.fast.dispatch.EAGER_MAX_BATCH`), and a frame head rounds each row the same for any
    number of rows. The caller also keeps MLX ops while training (the ops have a
    vjp, but training keeps one path for the optimiser's numerics).
    """
    return dispatch.available() and placement(batch) == "cpu-kernel" and all(
        a is None or a.dtype == mx.float32 for a in arrays)


def linear(x, W, bias=None, *, batch: int, row: int | None = None):
    """``x @ W.T + bias`` on the kernels: ``x`` ``(.., K)``, ``W`` ``(N, K)`` -> ``(.., N)``.

    ``row``: read ``x[row]`` of ``x`` ``(R, .., K)`` instead (a final state's last
    layer, without a slice op). ``batch`` (the caller's batch size) picks eager or
    lazy as the recurrent calls do.
    """
    dispatch.require()
    return dispatch._ext.linear(x, W, bias, row=row, eager=dispatch.eager_batch(batch))


def normalize(x, mean, std, *, batch: int):
    """``(x - mean) / std`` on the kernels: ``x`` ``(.., I)``, ``mean`` / ``std`` ``(I,)``."""
    dispatch.require()
    return dispatch._ext.normalize(x, mean, std, eager=dispatch.eager_batch(batch))
