"""Data-parallel training on ``mx.distributed``: world, sharding, gradient all-reduce.

Started under MLX's launcher (``mlx.launch -n 2 --backend ring ...``, or
``--hostfile`` across Macs), :func:`world` sees a size above 1 through
``mx.distributed.init()``; run plainly it is a world of one and every helper
here is the identity. The scheme (used by :func:`edgelstm.training.train.train`):

- every rank holds the whole dataset and the same seed, so every rank draws
  the same batch order and the same augmentation of each *global* batch;
- :func:`shard` gives each rank its slice of that batch and the weight that
  makes the per-rank mean losses sum to the global batch mean;
- :func:`sum_tree` all-sums the weighted gradients (inside the compiled
  step), so clipping and AdamW see the single-process gradient up to the
  floating-point order of the reduction;
- :func:`broadcast` copies rank 0's initial weights everywhere;
- only rank 0 logs and writes the checkpoint (:func:`is_main`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import mlx.core as mx
import numpy as np
from mlx.utils import tree_map

__all__ = ["World", "world", "shard", "sum_tree", "broadcast", "all_sum", "is_main"]


@dataclass(frozen=True)
class World:
    """The processes of one training run: ``rank`` in ``[0, size)``."""

    group: object | None
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


@functools.lru_cache(maxsize=1)
def world() -> World:
    """The current world (cached): ``mx.distributed.init()``'s group, or one process.

    A plain run (no launcher environment) gets MLX's singleton group, size 1.
    """
    if not mx.distributed.is_available():
        return World(None)
    group = mx.distributed.init()
    if group.size() <= 1:
        return World(None)
    return World(group, group.rank(), group.size())


def is_main() -> bool:
    """True on rank 0 (and in a single-process run): the one rank that logs and writes."""
    return world().main


def shard(idx: np.ndarray, w: World, counts: np.ndarray | None = None
          ) -> tuple[np.ndarray, float]:
    """This rank's part of a global batch and its loss weight.

    Args:
        idx: positions in the global batch ``(B,)`` (any integer array).
        w: the world.
        counts: how much each batch item counts in the global mean loss
            ``(B,)`` (valid frames for per-frame labels); ``None``: one each.

    Returns:
        ``(local, weight)``: contiguous positions ``(B_r,)`` and
        ``sum(counts[local]) / sum(counts)``, so that the weighted per-rank
        means sum to the global mean. A rank left with nothing (a last batch
        smaller than the world) gets one item with weight 0, so that every
        rank still takes part in the all-reduce.
    """
    idx = np.asarray(idx)
    if w.size == 1:
        return idx, 1.0
    parts = np.array_split(np.arange(len(idx)), w.size)
    local = parts[w.rank]
    if not len(local):
        return idx[:1], 0.0
    counts = np.ones(len(idx)) if counts is None else np.asarray(counts, dtype=np.float64)
    total = float(counts.sum())
    return idx[local], (float(counts[local].sum()) / total if total else 0.0)


def sum_tree(tree, w: World):
    """All-sum every array of ``tree`` over the world (identity for one process)."""
    if w.size == 1:
        return tree
    return tree_map(lambda a: mx.distributed.all_sum(a, group=w.group), tree)


def all_sum(value, w: World) -> np.ndarray:
    """All-sum a number or NumPy array (float64 in, float64 out) across the world."""
    arr = np.asarray(value, dtype=np.float64)
    if w.size == 1:
        return arr
    # float32 on the wire: the CPU ring backend reduces float32; counts stay exact to 2**24
    out = mx.distributed.all_sum(mx.array(arr.astype(np.float32)), group=w.group)
    return np.array(out).astype(np.float64)


def broadcast(tree, w: World):
    """Rank 0's copy of every array of ``tree`` on every rank."""
    if w.size == 1:
        return tree
    keep = 1.0 if w.main else 0.0
    return tree_map(lambda a: mx.distributed.all_sum(a * keep, group=w.group).astype(a.dtype),
                    tree)


def gather(value: float, w: World) -> list[float]:
    """One number from each rank, in rank order."""
    if w.size == 1:
        return [float(value)]
    out = mx.distributed.all_gather(mx.array([float(value)], dtype=mx.float32), group=w.group)
    return [float(v) for v in np.array(out)]
