"""Which examples a classifier gets wrong, for ``edgelstm eval --json``."""

from __future__ import annotations

import numpy as np


def misclassified(model, dataset, batch_size: int = 256) -> list[dict]:
    """Every example of ``dataset`` that ``model`` classifies wrongly.

    Scored as :func:`edgelstm.training.train.evaluate` scores: sequence labels
    once per sequence (a frame head read at the last valid frame); per-frame
    labels by each sequence's majority over its valid labelled frames.

    Args:
        model: a :class:`~edgelstm.nn.model.SequenceModel` with a head.
        dataset: a :class:`~edgelstm.training.data.Dataset`, ``x`` ``(N, T, I)``.
        batch_size: sequences per forward pass.

    Returns:
        ``[{"index": int, "file": str (when the data names its files),
        "truth": label, "prediction": label}]``; labels are the model's class
        names when it has them, else class indices. Frame-label records also
        carry ``frames_wrong`` and ``frames``.
    """
    import mlx.core as mx

    from edgelstm.training.train import class_indices

    y = class_indices(model, dataset)
    names = model.labels
    files = dataset.meta.get("files")
    lengths = dataset.lengths
    was_training = model.training
    model.eval()
    out = []
    try:
        for k in range(0, dataset.n, batch_size):
            idx = np.arange(k, min(k + batch_size, dataset.n))
            lb = lengths[idx].astype(np.int32) if lengths is not None else None
            logits = np.array(model(mx.array(dataset.x[idx]),
                                    lengths=None if lb is None else mx.array(lb)))
            T = dataset.x.shape[1]
            last = lb - 1 if lb is not None else np.full(len(idx), T - 1)
            for row, i in enumerate(idx):
                rec = _record(logits[row], y[i], int(last[row]), dataset.frame_labels)
                if rec is None:
                    continue
                truth, pred, extra = rec
                item = {"index": int(i)}
                if files is not None:
                    item["file"] = str(files[i])
                label = (lambda c: names[c]) if names else int
                item.update(truth=label(truth), prediction=label(pred), **extra)
                out.append(item)
    finally:
        model.train(was_training)
    return out


def _record(logits: np.ndarray, truth, last: int, frame_labels: bool):
    """``(truth, prediction, extra)`` of one wrong sequence, else ``None``."""
    if frame_labels:  # logits (T, C), truth (T,)
        valid = np.arange(len(truth)) <= last
        keep = valid & (truth >= 0)
        if not keep.any():
            return None
        t, p = truth[keep], logits[keep].argmax(-1)
        wrong = int((t != p).sum())
        if not wrong:
            return None
        return (int(np.bincount(t).argmax()), int(np.bincount(p).argmax()),
                {"frames_wrong": wrong, "frames": int(keep.sum())})
    if truth < 0:
        return None
    scores = logits[last] if logits.ndim == 2 else logits
    pred = int(scores.argmax())
    return None if pred == int(truth) else (int(truth), pred, {})
