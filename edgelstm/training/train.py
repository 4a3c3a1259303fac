"""Training and evaluation of sequence classifiers.

:func:`train` fits a :class:`~edgelstm.nn.model.SequenceModel` with AdamW and
cross-entropy (warm-up + cosine schedule, clipping, augmentation, early
stopping on a stratified split; see :mod:`edgelstm.training.recipe`); :func:`evaluate` reports accuracy and a confusion matrix.

Targets follow the model's head and the dataset's labels:

- ``head="sequence"``, labels ``(N,)``: one decision per sequence, taken
  from the last valid step (``lengths`` mask the padding).
- ``head="frame"``, labels ``(N,)``: a streaming classifier. ``target``
  picks where the sequence label supervises the frames: ``"last"`` (the
  last valid frame only), ``"all"`` (every valid frame) or ``"mixed"``
  (both, averaged). Evaluation reads the last valid frame.
- ``head="frame"``, labels ``(N, T)``: per-frame labels over valid frames.

Training is deterministic for a given ``seed`` on one machine: the seed
drives weight init, the validation split, shuffling and dropout.

Under ``mlx.launch`` (world size above 1) training is data-parallel: each
rank takes its shard of every global batch and the gradients are all-summed
(:mod:`edgelstm.training.distributed`), so the model matches the
single-process one up to the floating-point order of the reduction (dropout
masks aside: each rank draws its own; an fcn branch's batch norm normalises by
each rank's shard and keeps rank 0's running statistics, as PyTorch DDP without
SyncBatchNorm).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_map

from edgelstm.errors import ConfigError, TrainingError
from edgelstm.nn.model import SequenceModel
from edgelstm.training.averaging import Average, swapped
from edgelstm.training.data import Dataset
from edgelstm.training.distributed import World, all_sum, broadcast, gather, shard, sum_tree, world
from edgelstm.training.model_setup import (  # re-exported: the training API's model half
    as_model,
    build_model,
    check_fit,
    class_indices,
    count_parameters,
    fit_normalization,
)

__all__ = ["build_model", "class_indices", "count_parameters", "evaluate", "fit_normalization",
           "predict", "train"]

TARGETS = ("last", "all", "mixed")
DEFAULT_EPOCHS = 200
MIN_STEPS = 1500  # default epochs give at least this many optimizer steps
# Weight averaging and refitting are opt-in: measured on the TRAIN data only (never the
# test split), neither moved accuracy. JapaneseVowels, 5-fold CV of its 270 TRAIN
# sequences (each evaluated once; 12% of the rest held out for early stopping): the
# defaults 0.959 (NLL 0.182), ema 0.99 + refit "same" 0.959 (0.198), no split at all
# 0.963 (0.184). FSDD, 270 TRAIN recordings held out, 2 seeds, the example's flags:
# 0.982 vs 0.978 (10 epochs), 0.980 vs 0.978 (20 epochs).
DEFAULT_EMA = None
DEFAULT_REFIT = None


def _loss_fn(model, x, y, lengths, head, frame_labels, target, smoothing=0.0):
    """Mean cross-entropy; ``lengths`` is ``(B,)`` int (all valid when None)."""
    out = model(x, lengths=lengths)
    cross_entropy = partial(nn.losses.cross_entropy, label_smoothing=smoothing)
    if head == "sequence":
        return cross_entropy(out, y, reduction="mean")
    B, T = out.shape[0], out.shape[1]
    valid = (mx.arange(T)[None, :] < lengths[:, None]) if lengths is not None else mx.ones((B, T))
    valid = valid.astype(out.dtype)
    if frame_labels:
        ce = cross_entropy(out, mx.maximum(y, 0))
        return (ce * valid).sum() / mx.maximum(valid.sum(), 1.0)
    last_idx = (lengths - 1) if lengths is not None else mx.full((B,), T - 1, dtype=mx.int32)
    losses = []
    if target in ("last", "mixed"):
        last = mx.take_along_axis(out, last_idx[:, None, None].astype(mx.int32), axis=1)[:, 0]
        losses.append(cross_entropy(last, y, reduction="mean"))
    if target in ("all", "mixed"):
        ce = cross_entropy(out, mx.broadcast_to(y[:, None], (B, T)))
        per_seq = (ce * valid).sum(axis=1) / mx.maximum(valid.sum(axis=1), 1.0)
        losses.append(per_seq.mean())
    return sum(losses) / len(losses)


def _batches(lengths: np.ndarray | None, n: int, batch_size: int, rng, shuffle: bool):
    """Index batches; variable-length data is bucketed by length to cut padding."""
    idx = np.arange(n)
    if lengths is not None and shuffle:
        # Sort by a jittered length, then shuffle the batch order.
        jitter = rng.uniform(0, max(1.0, 0.1 * float(lengths.max())), size=n)
        idx = np.argsort(lengths + jitter, kind="stable")
    elif lengths is not None:
        idx = np.argsort(lengths, kind="stable")
    elif shuffle:
        idx = rng.permutation(n)
    batches = [idx[k:k + batch_size] for k in range(0, n, batch_size)]
    if shuffle:
        batches = [batches[k] for k in rng.permutation(len(batches))]
    return batches


def _slice(dataset: Dataset, idx: np.ndarray, y: np.ndarray, pad_multiple: int,
           augmenter=None, mean=None, std=None, rng=None):
    """Batch arrays cropped to the batch's longest sequence (rounded up), augmented if asked."""
    lengths = dataset.lengths[idx] if dataset.lengths is not None else None
    T = dataset.x.shape[1]
    if lengths is not None:
        T = min(T, int(math.ceil(int(lengths.max()) / pad_multiple) * pad_multiple))
    xb = dataset.x[idx, :T]
    yb = y[idx, :T] if y.ndim == 2 else y[idx]
    if augmenter is not None:
        full = lengths if lengths is not None else np.full(len(idx), T, dtype=np.int32)
        xb, lengths = augmenter(xb, full, yb if yb.ndim == 1 else None, mean, std, rng)
    return mx.array(xb), mx.array(yb), (mx.array(lengths.astype(np.int32))
                                        if lengths is not None else None)


def _local(x, y, lengths, w: World, frame_labels: bool):
    """This rank's shard of a global batch ``x (B, T, I)`` and its loss weight (an mx scalar).

    Per-frame labels weigh each sequence by its valid frames (the loss is a
    mean over frames); sequence labels weigh sequences equally.
    """
    if w.size == 1:
        return x, y, lengths, mx.array(1.0)
    counts = np.array(lengths) if frame_labels and lengths is not None else None
    local, weight = shard(np.arange(x.shape[0]), w, counts)
    pick = mx.array(local.astype(np.int32))
    return (x[pick], y[pick], None if lengths is None else lengths[pick],
            mx.array(weight, dtype=mx.float32))


def _validate(model: SequenceModel, dataset: Dataset, w: World) -> dict:
    """:func:`evaluate` on this rank's share of ``dataset``, the counts all-summed."""
    if w.size == 1:
        return evaluate(model, dataset)
    part = np.array_split(np.arange(dataset.n), w.size)[w.rank]
    C = model.num_outputs
    mine = np.zeros(C * C + 1)
    if len(part):
        m = evaluate(model, dataset.subset(part))
        if m["n"]:
            mine = np.append(np.asarray(m["confusion"], dtype=np.float64).ravel(),
                             m["loss"] * m["n"])
    total = all_sum(mine, w)
    confusion = np.rint(total[:-1]).astype(np.int64).reshape(C, C)
    n = int(confusion.sum())
    return {"accuracy": float(np.trace(confusion) / n) if n else float("nan"), "n": n,
            "confusion": confusion.tolist(), "labels": model.labels,
            "loss": float(total[-1]) / n if n else float("nan")}


def predict(model: SequenceModel, x, lengths=None, batch_size: int = 256) -> np.ndarray:
    """Predicted class index of each sequence.

    Args:
        model: a sequence model with a head.
        x: ``(N, T, I)`` or one sequence ``(T, I)``.
        lengths: valid steps ``(N,)`` or ``None``.

    Returns:
        The decision of each sequence ``(N,)`` (a frame head is read at the
        last valid frame); one sequence gives a 0-d array.
    """
    scores = predict_scores(model, x, lengths, batch_size)
    return np.argmax(scores, axis=-1)


def predict_scores(model: SequenceModel, x, lengths=None, batch_size: int = 256) -> np.ndarray:
    """Per-sequence logits ``(N, C)`` (a frame head's last valid frame), or ``(C,)`` for one."""
    x = np.asarray(x, dtype=np.float32)
    single = x.ndim == 2
    if single:
        x = x[None]
        lengths = None if lengths is None else np.atleast_1d(lengths)
    out = []
    for k in range(0, x.shape[0], batch_size):
        xb = mx.array(x[k:k + batch_size])
        lb = None if lengths is None else mx.array(np.asarray(lengths[k:k + batch_size], np.int32))
        y = model(xb, lengths=lb)
        if model.head_type == "frame":
            T = y.shape[1]
            last = (lb - 1) if lb is not None else mx.full((y.shape[0],), T - 1, dtype=mx.int32)
            y = mx.take_along_axis(y, last[:, None, None], axis=1)[:, 0]
        out.append(np.array(y))
    scores = np.concatenate(out)
    return scores[0] if single else scores


def evaluate(model: SequenceModel, dataset: Dataset, batch_size: int = 256) -> dict:
    """Accuracy of ``model`` on ``dataset``.

    Labels are matched by name when both the model and the data carry names.
    Per-frame labels are scored over valid frames; sequence labels once per
    sequence (a frame head is read at the last valid frame).

    Returns:
        ``{"accuracy": float, "n": int, "confusion": [[int]] (true x predicted),
        "labels": [str] | None, "loss": float}``.
    """
    check_fit(model, dataset)
    was_training = model.training
    model.eval()
    try:
        y = class_indices(model, dataset)
        C = model.num_outputs
        confusion = np.zeros((C, C), dtype=np.int64)
        loss_sum, count = 0.0, 0
        for k in range(0, dataset.n, batch_size):
            idx = np.arange(k, min(k + batch_size, dataset.n))
            x, yb, lb = _slice(dataset, idx, y, 1)
            out = model(x, lengths=lb)
            if dataset.frame_labels:
                T = out.shape[1]
                valid = np.arange(T)[None] < (np.array(lb)[:, None] if lb is not None else T)
                logits = np.array(out)[valid]
                true = np.array(yb)[valid]
            else:
                if model.head_type == "frame":
                    T = out.shape[1]
                    last = (lb - 1) if lb is not None else mx.full((out.shape[0],), T - 1,
                                                                   dtype=mx.int32)
                    out = mx.take_along_axis(out, last[:, None, None], axis=1)[:, 0]
                logits = np.array(out)
                true = np.array(yb)
            keep = true >= 0
            logits, true = logits[keep], true[keep]
            pred = logits.argmax(-1)
            np.add.at(confusion, (true, pred), 1)
            lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            loss_sum += float((lse - logits[np.arange(len(true)), true]).sum())
            count += len(true)
    finally:
        model.train(was_training)
    n = int(confusion.sum())
    return {
        "accuracy": float(np.trace(confusion) / n) if n else float("nan"),
        "n": n,
        "confusion": confusion.tolist(),
        "labels": model.labels,
        "loss": loss_sum / count if count else float("nan"),
    }


def train(
    model: SequenceModel | dict | None,
    dataset: Dataset,
    epochs: int | None = None,
    lr: float = 3e-3,
    batch_size: int | None = None,
    seed: int = 0,
    *,
    validation: Dataset | float | str | None = 0.1,
    patience: int | None = 20,
    clip_norm: float | None = 1.0,
    weight_decay: float = 1e-4,
    cosine: bool = True,
    warmup: float = 0.05,
    target: str = "last",
    pad_multiple: int = 8,
    compile: bool = True,
    fit_norm: bool = True,
    crop: float | None = None,
    augment: str | list | None = "auto",
    time_budget: float | None = None,
    ema: float | None = DEFAULT_EMA,
    label_smoothing: float | None = None,
    refit: str | None = DEFAULT_REFIT,
    log: Callable[[str], None] | None = None,
    progress: Callable[[int, int, int], None] | None = None,
    _stop_after: int | None = None,
) -> tuple[SequenceModel, dict]:
    """Train a sequence classifier with AdamW and cross-entropy.

    Args:
        model: a :class:`SequenceModel`, its ``config()`` dict, or keyword
            arguments of :func:`build_model` as a dict (``{"cell": "gru",
            "hidden": 32}``); ``None`` means :func:`build_model` defaults.
        dataset: training data (``x (N, T, I)``, ``y (N,)`` or ``(N, T)``,
            optional ``lengths (N,)``).
        epochs: maximum passes over the training data (``None``: 100 for a
            model with an fcn branch; else 200, or as many as make 1500 steps
            when that is more, for a
            ``time_budget`` or early stopping to cut short; ArrowHead, 36
            sequences, 5 steps an epoch: 200 epochs 0.59, 300 epochs 0.77).
        lr: peak learning rate.
        batch_size: sequences per step (``None``: 8-32 from the data size).
        seed: seeds init, the validation split, shuffling, augmentation and dropout.
        validation: a held-out :class:`Dataset`, a fraction of ``dataset``
            to hold out (stratified, at least one per class that has two;
            none, with a message, when that is impossible), ``None``/``0``,
            or ``"auto"`` (:func:`~edgelstm.training.recipe.auto_validation`:
            0.1, none for a model with an fcn branch).
        patience: stop after this many epochs without a better validation
            score (accuracy, then loss); the best weights are restored.
            ``None`` trains all epochs (still restoring the best).
        clip_norm: clip the global gradient norm; ``None`` disables it.
        weight_decay: AdamW decoupled weight decay.
        cosine: cosine-decay the learning rate to 1% (after the warm-up).
        warmup: fraction of the steps with a linear warm-up from 10% of ``lr``.
        target: where sequence labels supervise a frame head (see module doc).
        pad_multiple: batches are padded to a multiple of this many steps,
            which bounds the number of compiled shapes.
        compile: ``mx.compile`` the training step.
        fit_norm: set the model's normalisation from the training data.
        crop: shorthand for the ``crop`` augmentation with this minimum fraction.
        augment: augmentations (:mod:`edgelstm.training.augment` names, a
            comma-separated string or list); ``"auto"`` picks from the data
            (:func:`~edgelstm.training.recipe.auto_augment`); ``None``: none.
        time_budget: seconds of training; after the first epoch the number
            of epochs is set to what fits (at most ``epochs``).
        ema: keep an exponential moving average of the weights with this
            decay per step (ramped up as ``min(ema, (1 + t) / (10 + t))``);
            validation, early stopping and the returned model use the
            average, training itself the live weights. ``None``/``0``: off.
        label_smoothing: cross-entropy against ``1 - e`` on the label and
            ``e`` spread evenly over all classes; ``None``: 0.1 when nothing is
            held out for early stopping, else 0
            (:func:`~edgelstm.training.recipe.auto_label_smoothing`).
        refit: with a validation fraction, train on the split to pick the
            best epoch, then train a fresh model (same seed) on all of
            ``dataset`` for that many epochs and return it: ``"same"`` keeps
            the first run's planned learning-rate schedule and stops at the
            picked epoch, ``"fit"`` spreads the schedule over the picked
            epochs. Only for a ``model`` given as a config (a given
            :class:`SequenceModel` keeps its own weights and is trained once).
            ``history`` is the first run's, with the retraining's
            ``loss``, ``seconds`` and ``epochs`` under ``history["refit"]``.
        log: called with one progress line per epoch (and notices).
        progress: called ``(epoch, sequences_done, sequences_total)`` after each step.

    Ctrl-C stops training after the current step: the best weights so far are
    restored and ``history["interrupted"]`` holds the epoch it stopped in.

    Returns:
        ``(model, history)``; ``model`` is in eval mode with ``provenance``
        set, ``history`` holds per-epoch lists ``loss``, ``val_loss``,
        ``val_accuracy``, ``seconds`` plus ``best_epoch`` (1-based, ``None``
        without validation), ``epochs`` (the planned number) and ``interrupted``.
    """
    from edgelstm.training.augment import Augmenter, parse_augment
    from edgelstm.training.recipe import (
        FCN_EPOCHS,
        auto_augment,
        auto_batch_size,
        auto_label_smoothing,
        has_fcn,
        holdout,
        lr_at,
        provenance,
    )

    if isinstance(validation, str):
        if validation != "auto":
            raise ConfigError(f"validation must be a fraction, a Dataset, None or 'auto', "
                              f"got {validation!r}")
        from edgelstm.training.recipe import auto_validation

        validation = auto_validation(model, dataset)
    if ema is not None and not 0.0 <= ema < 1.0:
        raise ConfigError(f"ema must be in [0, 1) (0: no averaging), got {ema!r}")
    if label_smoothing is not None and not 0.0 <= label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if refit not in (None, False, "same", "fit"):
        raise ConfigError(f"refit must be 'same', 'fit' or None, got {refit!r}")
    if refit and isinstance(validation, float) and validation > 0 and not isinstance(
            model, SequenceModel):  # a given model (its own weights) is trained as it is
        args = {k: v for k, v in locals().items() if k in _TRAIN_ARGS}
        return _train_refit(refit, args)
    if target not in TARGETS:
        raise ConfigError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if crop is not None and not 0.0 < crop <= 1.0:
        raise ConfigError(f"crop must be in (0, 1], got {crop!r}")
    if batch_size is None:
        batch_size = auto_batch_size(dataset.n)
    if epochs is None and has_fcn(model, dataset):
        epochs = FCN_EPOCHS  # it fits within ~70 (JapaneseVowels); each epoch costs ~10 LSTM ones
    if epochs is None:  # small sets take few steps per epoch: give them enough steps
        epochs = max(DEFAULT_EPOCHS, math.ceil(MIN_STEPS / math.ceil(dataset.n / batch_size)))
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("need epochs >= 1, batch_size >= 1 and lr > 0")
    if time_budget is not None and time_budget <= 0:
        raise ConfigError(f"time_budget must be positive seconds, got {time_budget!r}")
    if crop and dataset.frame_labels:
        raise ConfigError("crop needs sequence labels, not per-frame labels")
    names = auto_augment(dataset) if augment == "auto" else parse_augment(augment)
    if crop:
        names = ("crop", *[n for n in names if n != "crop"])
    if dataset.frame_labels and set(names) & {"crop", "warp", "mix"}:
        raise ConfigError("crop, warp and mix need sequence labels, not per-frame labels")
    augmenter = Augmenter(names, crop_min=crop or 0.5) if names else None
    w = world()
    if not w.main:  # rank 0 speaks for the run
        log = progress = None
    mx.random.seed(seed)
    rng = np.random.default_rng(seed)
    source = dataset
    split = "given" if isinstance(validation, Dataset) else None
    if isinstance(validation, float) and validation > 0:
        dataset, validation = holdout(dataset, validation, seed, log)
        split = (f"stratified {validation.n}/{source.n} held out, seed {seed}"
                 if validation is not None else "none (too few sequences to hold out)")
    elif not isinstance(validation, Dataset):
        validation = None
    if label_smoothing is None:
        label_smoothing = auto_label_smoothing(validation)
    model = as_model(model, dataset)
    check_fit(model, dataset)
    if log is not None and ("fcn" in model or "stem" in model):
        _hint_slow_conv(log)
    if fit_norm:
        fit_normalization(model, dataset)
    if "norm" in model:
        model.norm.freeze()  # statistics, not trainable weights
    frames = dataset.valid_frames()
    mean, std = frames.mean(axis=0), np.maximum(frames.std(axis=0), 1e-6)
    y_train = class_indices(model, dataset)
    mx.eval(model.parameters())
    if w.size > 1:
        # same seed, same init; copying rank 0's weights also covers hosts whose
        # MLX builds draw differently. Dropout masks then differ per rank.
        model.update(broadcast(model.parameters(), w))
        mx.eval(model.parameters())
        mx.random.seed(seed + 7919 * w.rank)
        if log is not None:
            log(f"data-parallel on {w.size} processes: each takes ~{batch_size / w.size:.1f} "
                f"of every batch of {batch_size}")
    model.train()

    steps_per_epoch = math.ceil(dataset.n / batch_size)
    opt = optim.AdamW(lr, weight_decay=weight_decay)
    head, frame_labels = model.head_type, dataset.frame_labels
    loss_and_grad = nn.value_and_grad(
        model, partial(_loss_fn, head=head, frame_labels=frame_labels, target=target,
                       smoothing=label_smoothing))

    def step(x, y, lengths, weight):
        loss, grads = loss_and_grad(model, x, y, lengths)
        if w.size > 1:  # weighted per-rank means sum to the global batch mean
            loss, grads = sum_tree((loss * weight, tree_map(lambda g: g * weight, grads)), w)
        if clip_norm:
            grads, _ = optim.clip_grad_norm(grads, clip_norm)
        opt.update(model, grads)
        return loss

    if compile:
        state = [model.state, opt.state, mx.random.state]
        step = mx.compile(step, inputs=state, outputs=state)
    averaged = Average(model, ema) if ema else None

    history: dict[str, Any] = {"loss": [], "val_loss": [], "val_accuracy": [], "seconds": [],
                               "best_epoch": None, "epochs": epochs, "interrupted": None}
    best, best_params, waited, done_steps = None, None, 0, 0
    max_epochs = epochs
    if patience is not None and validation is not None and validation.n < 10:
        # A handful of held-out sequences moves in steps of 10-25%: plateaus are long and
        # noisy (BasicMotions: 4 held out, seed 1 stopped at epoch 62 of a usual ~165).
        patience = max(patience, 50)
    started = time.perf_counter()
    epoch = 0
    try:
        while epoch < (epochs if _stop_after is None else min(epochs, _stop_after)):
            epoch += 1
            t0 = time.perf_counter()
            total, seen, local_seen = 0.0, 0, 0
            for idx in _batches(dataset.lengths, dataset.n, batch_size, rng, shuffle=True):
                peak_progress = done_steps / max(1, epochs * steps_per_epoch)
                opt.learning_rate = (lr_at(peak_progress, lr, warmup) if cosine
                                     else lr * min(1.0, 0.1 + 0.9 * peak_progress / warmup)
                                     if warmup else lr)
                x, yb, lb = _slice(dataset, idx, y_train, pad_multiple, augmenter, mean, std, rng)
                x, yb, lb, weight = _local(x, yb, lb, w, frame_labels)
                loss = step(x, yb, lb, weight)
                local_seen += x.shape[0]
                if averaged is not None:
                    averaged.update(model)
                mx.eval(loss, model.state, opt.state, averaged.params if averaged else [])
                done_steps += 1
                if not math.isfinite(float(loss)):  # a NaN model must never be saved
                    raise TrainingError(f"epoch {epoch}: the training loss is {float(loss)}; "
                                        "training stopped and nothing was saved (lower --lr?)")
                total += float(loss) * len(idx)
                seen += len(idx)
                if progress is not None:
                    progress(epoch, seen, dataset.n)
            history["loss"].append(total / seen)
            line = f"epoch {epoch}/{epochs}: loss {total / seen:.4f}"
            if w.size > 1:
                rates = gather(local_seen / max(time.perf_counter() - t0, 1e-9), w)
                history.setdefault("rank_throughput", []).append(rates)
                line += (f", world {w.size}: " + " / ".join(f"{r:.0f}" for r in rates)
                         + " seq/s per rank")
            if validation is not None:
                with swapped(model, averaged):
                    metrics = _validate(model, validation, w)
                history["val_loss"].append(metrics["loss"])
                history["val_accuracy"].append(metrics["accuracy"])
                line += f", val_loss {metrics['loss']:.4f}, val_acc {metrics['accuracy']:.4f}"
                score = (metrics["accuracy"], -metrics["loss"])
                # a loss tie-break must beat the best by 1% (or 1e-4): loss creeping down
                # at 100% validation accuracy would otherwise never trigger patience
                if best is None or score[0] > best[0] or (
                        score[0] == best[0] and -score[1] < -best[1] - max(1e-4, 0.01 * -best[1])):
                    best, waited = score, 0
                    history["best_epoch"] = epoch
                    with swapped(model, averaged):
                        best_params = tree_map(lambda a: mx.array(a), model.parameters())
                else:
                    waited += 1
            history["seconds"].append(time.perf_counter() - t0)
            if w.size > 1:  # every rank must stop at the same epoch: go by the slowest
                history["seconds"][-1] = max(gather(history["seconds"][-1], w))
            if time_budget is not None and epoch <= 2:
                # Epoch 1 includes compilation and warm caches (measured 3-5x slower than
                # the rest on small UCR sets): fit a first guess on it, the plan on epoch 2.
                left = time_budget - sum(history["seconds"])  # same on every rank
                fit = epoch + int(left / max(history["seconds"][-1], 1e-3))
                epochs = max(epoch, min(max_epochs, fit))
                history["epochs"] = epochs
                if log is not None:
                    log(f"time budget {time_budget:g}s: {epochs} epochs "
                        f"({history['seconds'][-1]:.1f}s for epoch {epoch})")
            if log is not None:
                log(line + f" ({history['seconds'][-1]:.1f}s)")
            if patience is not None and validation is not None and waited >= patience:
                break
            if time_budget is not None and bool(
                    all_sum(time.perf_counter() - started > time_budget, w) > 0):
                break
    except KeyboardInterrupt:
        history["interrupted"] = epoch
        if log is not None:
            kept = (f"restoring epoch {history['best_epoch']} (best validation)"
                    if best_params is not None else "keeping the weights as they are")
            log(f"interrupted in epoch {epoch}: {kept}")
    if best_params is not None:
        model.update(best_params)
    elif averaged is not None:
        model.update(averaged.params)
    model.eval()
    mx.eval(model.parameters())
    settings = {"epochs": history["epochs"], "lr": lr, "batch_size": batch_size,
                "weight_decay": weight_decay, "clip_norm": clip_norm, "warmup": warmup,
                "cosine": cosine, "patience": patience, "target": target, "ema": ema,
                "label_smoothing": label_smoothing,
                "time_budget": time_budget, "split": split,
                "augment": augmenter.settings() if augmenter else None}
    if w.size > 1:
        settings["world_size"] = w.size
    history["world_size"] = w.size
    model.provenance = provenance(source, validation, settings, history, seed)
    return model, history


def _hint_slow_conv(log: Callable[[str], None]) -> None:
    """Say so when a conv branch or stem will train on MLX's reference BLAS (Linux).

    The convolutions' training runs on MLX's own matmul; the ``edgelstm`` command
    routes it to the wheel's OpenBLAS, a program importing edgelstm only when asked
    (JapaneseVowels' LSTM-FCN: ~5 s a seed against ~56 s).
    """
    from edgelstm.fast import blas

    if blas.on_reference_blas():
        log("note: the conv layers train on MLX's bundled reference BLAS (about 10x slower); "
            "EDGELSTM_BLAS=wheel before importing edgelstm, or the edgelstm command, uses "
            "OpenBLAS")


_TRAIN_ARGS = ("model", "dataset", "epochs", "lr", "batch_size", "seed", "validation", "patience",
               "clip_norm", "weight_decay", "cosine", "warmup", "target", "pad_multiple",
               "compile", "fit_norm", "crop", "augment", "time_budget", "ema",
               "label_smoothing", "log", "progress", "_stop_after")


def _train_refit(mode: str, args: dict):
    """Train on a split to pick the epoch, then retrain on all the data for that many.

    ``mode`` ``"same"``: the retraining follows the first run's planned
    schedule and stops at the picked epoch; ``"fit"``: its schedule spans
    the picked epochs (warm-up and cosine decay to the end).
    """
    spec = args["model"]  # a config: each run builds (and seeds) its own model
    budget, started = args["time_budget"], time.perf_counter()
    # a time budget covers both runs: half for the split run, the rest for the retraining
    first, history = train(**{**args, "model": spec, "refit": None,
                              "time_budget": budget / 2 if budget else None})
    best = history["best_epoch"]
    if best is None or history["interrupted"]:
        return first, history
    log = args["log"]
    if log is not None:
        log(f"refit: retraining on all {args['dataset'].n} sequences for {best} epochs "
            "(the best epoch on the split)")
    # the first run's smoothing: the epoch was picked for it, not for the no-split default
    again = {**args, "model": spec, "validation": None, "refit": None,
             "label_smoothing": first.provenance["settings"]["label_smoothing"]}
    if budget:
        again["time_budget"] = max(budget - (time.perf_counter() - started), 1e-3)
    if mode == "same":
        again["_stop_after"] = best
        again["epochs"] = history["epochs"]
    else:
        again["epochs"] = best
    model, refitted = train(**again)
    history["refit"] = {k: refitted[k] for k in ("loss", "seconds", "epochs", "interrupted")}
    history["refit"]["sequences"] = args["dataset"].n
    model.provenance = {**model.provenance, "split": (
        f"{first.provenance.get('split')}; then refit on all {args['dataset'].n}"), "refit": {
        "mode": mode, "epochs": best, "split": first.provenance.get("split"),
        "val_accuracy": first.provenance.get("val_accuracy")}}
    return model, history
