"""ONNX form of the fully convolutional branch (:class:`edgelstm.nn.fcn.ConvBranch`).

Each block is one ``Conv`` (``pads`` as the block's: ``[(k - 1) // 2, k // 2]``
for ``"same"`` padding, ``[k - 1, 0]`` for ``"causal"``) with the
evaluation-mode batch normalisation folded into its weights and bias, then
``Relu``; MLX's ``(C, k, I)`` weight becomes ONNX's ``(C, I, k)``. With a
``lengths`` input a ``Range``/``Less`` mask zeroes the steps past each
length: before each "same" block (as ``ConvBranch.steps``) and before the
``ReduceSum`` over time, which is divided by ``max(lengths, 1)`` (as
``ConvBranch.__call__``); without one, the sum divided by ``T``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fcn_branch", "folded_blocks"]


def folded_blocks(fcn) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """Per block ``(weight (C, I, k), bias (C,), (pad_before, pad_after))``, batch norm folded in.

    ``relu(bn(conv(x)))`` in evaluation is ``relu(conv(x) * scale + shift)``,
    so the folded conv has ``weight * scale`` and ``bias * scale + shift``.
    """
    out = []
    for block in fcn.blocks:
        scale, shift = (np.array(a, dtype=np.float64) for a in block.bn.scale_shift())
        w = np.array(block.conv.weight, dtype=np.float64).transpose(0, 2, 1)  # (C, I, k)
        b = np.array(block.conv.bias, dtype=np.float64)
        out.append(((w * scale[:, None, None]).astype(np.float32),
                    (b * scale + shift).astype(np.float32), block.pads()))
    return out


def fcn_branch(g, fcn, x: str, lengths: str | None) -> str:
    """Add the branch to graph ``g``: ``x (B, T, I)`` (normalised) -> pooled ``(B, C_n)``.

    Args:
        g: the exporter's graph builder (``init``/``node``).
        fcn: the model's :class:`~edgelstm.nn.fcn.ConvBranch`.
        x: name of the normalised batch-first input.
        lengths: name of the int32 ``(B,)`` lengths input, or ``None``.

    Returns:
        The name of the pooled features.
    """
    from onnx import TensorProto

    y = g.node("Transpose", [x], perm=[0, 2, 1])  # (B, I, T)
    time_axis = g.init("fcn.time_axis", np.array([2], np.int64))
    steps = g.node("Gather", [g.node("Shape", [y]), g.init("fcn.t_index", np.array(2, np.int64))])
    mask = long = None
    if lengths is not None:
        t = g.node("Range", [g.init("fcn.zero", np.array(0, np.int64)), steps,
                             g.init("fcn.one", np.array(1, np.int64))])  # (T,)
        axis1 = g.init("fcn.axis1", np.array([1], np.int64))
        long = g.node("Unsqueeze", [g.node("Cast", [lengths], to=TensorProto.INT64),
                                    axis1])  # (B, 1)
        mask = g.node("Cast", [g.node("Less", [t, long])], to=TensorProto.FLOAT)  # (B, T)
        mask = g.node("Unsqueeze", [mask, axis1])  # (B, 1, T)
    for i, ((w, b, pads), block) in enumerate(zip(folded_blocks(fcn), fcn.blocks, strict=True)):
        if mask is not None and block.padding == "same":
            y = g.node("Mul", [y, mask])  # past each length: the zeros a sequence alone reads
        y = g.node("Conv", [y, g.init(f"fcn.{i}.weight", w), g.init(f"fcn.{i}.bias", b)],
                   kernel_shape=[w.shape[2]], pads=list(pads))
        y = g.node("Relu", [y])  # (B, C_i, T)
    if mask is None:  # every step valid: the mean over T
        total = g.node("ReduceSum", [y, time_axis], keepdims=0)  # (B, C)
        return g.node("Div", [total, g.node("Cast", [steps], to=TensorProto.FLOAT)])
    total = g.node("ReduceSum", [g.node("Mul", [y, mask]), time_axis], keepdims=0)  # (B, C)
    count = g.node("Cast", [long], to=TensorProto.FLOAT)
    count = g.node("Max", [count, g.init("fcn.one_f", np.array(1.0, np.float32))])
    return g.node("Div", [total, count])
