"""The model a training run fits: built for a dataset, checked against it.

:func:`build_model` sizes a :class:`~edgelstm.nn.model.SequenceModel` for a
dataset (cell, head, stem, fcn branch, pooling), :func:`fit_normalization`
stores the training split's per-feature statistics, :func:`class_indices` maps
a dataset's labels onto a model's outputs. :mod:`edgelstm.training.train` runs
and scores the model; it re-exports these names.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from edgelstm.errors import ConfigError, DataError
from edgelstm.nn.layers import RECURRENT
from edgelstm.nn.model import SequenceModel
from edgelstm.training.data import Dataset

__all__ = ["as_model", "build_model", "check_fit", "class_indices", "count_parameters",
           "fit_normalization"]


def build_model(
    dataset: Dataset,
    cell: str = "lstm",
    hidden: int = 64,
    layers: int = 1,
    bidirectional: bool = False,
    head: str | None = None,
    dropout: float = 0.0,
    normalize: bool = True,
    features: dict | None = None,
    pool: str = "last",
    stem: dict | str | None = None,
    fcn: dict | str | None = None,
    **cell_options: Any,
) -> SequenceModel:
    """An untrained classifier sized for ``dataset``.

    Args:
        dataset: gives the input size, classes, labels and front-end settings.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        hidden: hidden units per direction.
        layers: stacked recurrent layers.
        bidirectional: add a reverse direction (offline use only; a
            bidirectional model cannot stream).
        head: ``"sequence"`` or ``"frame"``; ``None`` picks ``"frame"`` for
            per-frame labels and ``"sequence"`` otherwise.
        dropout: dropout between stacked layers (training only).
        normalize: store and apply per-feature mean/std of the training data.
        features: front-end settings to store (default: the dataset's).
        pool: ``"last"`` (last valid step; streams) or ``"mean"`` (mean over
            valid steps; offline only) for a sequence head; ``"auto"``:
            ``"mean"`` with a stem (such a model cannot stream anyway;
            ArrowHead 0.67 -> 0.77), else ``"last"``.
        stem: a conv feature stem ``{"channels": C, "kernel": k, "stride": s}``
            (see :mod:`edgelstm.nn.stem`; the model cannot stream),
            ``"auto"`` (:func:`~edgelstm.training.recipe.auto_stem` picks one
            for long univariate series, or none) or ``None``.
        fcn: a fully convolutional branch beside the stack (LSTM-FCN, see
            :mod:`edgelstm.nn.fcn`; the model cannot stream):
            ``{"channels": [...], "kernels": [...]}``, ``"auto"``
            (:func:`~edgelstm.training.recipe.auto_fcn`) or ``None``.
        cell_options: extra recurrent options (``clip``, ``peephole``, ...).

    Returns:
        A :class:`SequenceModel` in training mode.
    """
    if cell not in RECURRENT:
        raise ConfigError(f"cell must be lstm, gru or rnn, got {cell!r}")
    if head is None:
        head = "frame" if dataset.frame_labels else "sequence"
    if head == "sequence" and dataset.frame_labels:
        raise ConfigError("per-frame labels need head='frame'")
    if stem == "auto":
        from edgelstm.training.recipe import auto_stem

        stem = auto_stem(dataset)
    if stem == "none":
        stem = None
    if stem is not None and not isinstance(stem, dict):
        raise ConfigError(f"stem must be a dict, 'auto' or None, got {stem!r}")
    if stem is not None:
        stem = {"kind": "conv", **stem, "input_size": dataset.input_size}
    from edgelstm.training.recipe import resolve_fcn

    fcn = resolve_fcn(fcn, head, dataset)
    if fcn is not None and not isinstance(fcn, dict):
        raise ConfigError(f"fcn must be a dict, 'auto' or None, got {fcn!r}")
    if fcn is not None:
        fcn = {"kind": "fcn", **fcn}
    if pool == "auto":
        pool = "mean" if stem is not None and head == "sequence" else "last"
    rnn_in = stem.get("channels", 32) if stem is not None else dataset.input_size
    rnn = RECURRENT[cell](rnn_in, hidden, num_layers=layers,
                          bidirectional=bidirectional, dropout=dropout, **cell_options)
    return SequenceModel(rnn, num_outputs=dataset.num_classes, head=head,
                         labels=dataset.labels, normalize=normalize, pool=pool, stem=stem,
                         fcn=fcn, features=features if features is not None else dataset.features)


def fit_normalization(model: SequenceModel, dataset: Dataset) -> None:
    """Set ``model.norm`` to the per-feature mean/std over the valid frames of ``dataset``."""
    if "norm" not in model:
        return
    frames = dataset.valid_frames()
    mean = frames.mean(axis=0)
    std = frames.std(axis=0)
    std = np.where(std < 1e-6, 1.0, std)  # constant channels pass through unscaled
    model.norm.mean = mx.array(mean.astype(np.float32))
    model.norm.std = mx.array(std.astype(np.float32))


def as_model(model_or_config, dataset: Dataset) -> SequenceModel:
    """``train``'s model argument as a model: a :class:`SequenceModel` as is, a config
    dict (``SequenceModel.config()`` output or :func:`build_model` keywords) built,
    its sizes checked before anything is allocated."""
    if isinstance(model_or_config, SequenceModel):
        return model_or_config
    if model_or_config is None:
        model_or_config = {}
    if not isinstance(model_or_config, dict):
        raise ConfigError("train() takes a SequenceModel or a config dict, "
                          f"got {type(model_or_config).__name__}")
    # sizes checked before anything is allocated (--hidden 1e9, --layers 1e9)
    from edgelstm.limits import check_model_config, check_recurrent

    cfg = model_or_config
    if cfg.get("model_type") == "sequence":
        check_model_config(cfg)
    else:
        check_recurrent({"model_type": cfg.get("cell", "lstm"), "input_size": dataset.input_size,
                         "hidden_size": cfg.get("hidden", 64), "num_layers": cfg.get("layers", 1),
                         "bidirectional": bool(cfg.get("bidirectional"))}, "model")
    if model_or_config.get("model_type") == "sequence":
        model = SequenceModel.from_config(model_or_config)
    else:
        model = build_model(dataset, **model_or_config)
    return model


def check_fit(model: SequenceModel, dataset: Dataset) -> None:
    """Refuse a model that cannot be trained or scored on ``dataset`` (width, head, labels)."""
    if model.input_size != dataset.input_size:
        raise DataError(f"the data has {dataset.input_size} features per step, "
                        f"the model takes {model.input_size}")
    if model.head_type is None:
        raise ConfigError("cannot train or evaluate a model without a head")
    if dataset.frame_labels and model.head_type != "frame":
        raise ConfigError("per-frame labels need a model with head='frame'")


def class_indices(model: SequenceModel, dataset: Dataset) -> np.ndarray:
    """Dataset labels as the model's class indices (mapped by name when both have names)."""
    y = dataset.y
    if model.labels is not None and dataset.labels is not None:
        index = {name: k for k, name in enumerate(model.labels)}
        missing = sorted(set(dataset.labels) - set(index))
        if missing:
            raise DataError(f"data label {missing[0]!r} is not one of the model's labels "
                            f"({', '.join(model.labels)})")
        lut = np.array([index[name] for name in dataset.labels], dtype=np.int32)
        y = np.where(y >= 0, lut[np.clip(y, 0, None)], -1)
    if y.max(initial=-1) >= model.num_outputs:
        raise DataError(f"label {int(y.max())} is out of range for {model.num_outputs} outputs")
    return y.astype(np.int32)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters."""
    return sum(v.size for _, v in tree_flatten(model.parameters()))
