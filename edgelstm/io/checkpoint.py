"""Native checkpoints (``config.json`` + ``model.safetensors``) and ``load``.

A checkpoint is a directory. ``config.json`` is written with sorted keys;
``model.safetensors`` is written by MLX with ``metadata={"format": "mlx"}``.
:func:`load` also accepts ``.onnx`` files and PyTorch/Keras weight files,
handing them to :mod:`edgelstm.converters`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from edgelstm.errors import CheckpointError, ConfigError, LimitError
from edgelstm.io.fileio import atomic_output
from edgelstm.limits import check_model_config
from edgelstm.nn.layers import RECURRENT, register_saver
from edgelstm.nn.model import SequenceModel

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT_VERSION = 1


def model_config(model: nn.Module) -> dict:
    """The ``config.json`` content of an edgelstm module."""
    if not hasattr(model, "config"):
        raise ConfigError(f"cannot save a {type(model).__name__}: not an edgelstm model")
    config = dict(model.config())
    quant = getattr(model, "quantization", None)
    if quant:
        config["quantization"] = quant
    config["edgelstm_format"] = FORMAT_VERSION
    return config


def build(config: dict) -> nn.Module:
    """Build an (untrained) module from a config dict, applying quantization if any."""
    check_model_config(config)
    kind = config.get("model_type")
    if kind == "sequence":
        model = SequenceModel.from_config(config)
    elif kind in RECURRENT:
        model = RECURRENT[kind].from_config(config)
    else:
        raise ConfigError(f"unknown model_type {kind!r}; expected sequence, lstm, gru or rnn")
    if config.get("quantization"):
        from edgelstm.quantize import apply_quantization

        apply_quantization(model, config["quantization"])
    return model


def save(model: nn.Module, path: str | os.PathLike, force: bool = False) -> Path:
    """Write ``model`` as a checkpoint directory at ``path``.

    Args:
        model: an edgelstm module (``LSTM``/``GRU``/``RNN`` or ``SequenceModel``).
        path: output directory; must not exist unless ``force``.
        force: replace an existing output.

    Returns:
        The checkpoint path.
    """
    config = model_config(model)
    weights = dict(tree_flatten(model.parameters()))
    if config.get("quantization"):
        from edgelstm.quantize.mlx_quant import storage_weights

        weights = storage_weights(weights)
    with atomic_output(path, force=force, directory=True) as tmp:
        (tmp / CONFIG).write_text(json.dumps(config, indent=4, sort_keys=True) + "\n")
        mx.save_safetensors(str(tmp / WEIGHTS), weights, metadata={"format": "mlx"})
    return Path(path)


def read_config(path: str | os.PathLike) -> dict:
    """Read and parse a checkpoint's ``config.json``."""
    file = Path(path) / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{path} is not an edgelstm checkpoint (no {CONFIG})")
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{file} must hold a JSON object")
    return config


def load_checkpoint(path: str | os.PathLike) -> nn.Module:
    """Load a native checkpoint directory, checking every tensor name and shape."""
    config = read_config(path)
    file = Path(path) / WEIGHTS
    if not file.is_file():
        raise CheckpointError(f"{path} has no {WEIGHTS}")
    try:
        # sizes against the limits and the weights file, before anything is allocated
        check_model_config(config, weights_bytes=file.stat().st_size)
        model = build(config)
    except LimitError as exc:
        raise LimitError(f"{path}/{CONFIG}: {exc}") from None
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}/{CONFIG}: {exc}") from None
    try:
        weights = mx.load(str(file))
    except Exception as exc:  # MLX raises plain RuntimeError/ValueError on corrupt files
        raise CheckpointError(f"{file} cannot be read: {exc}") from None
    load_weights(model, weights, source=str(file))
    model.eval()
    return model


def load_weights(model: nn.Module, weights: dict, source: str = "weights") -> None:
    """Strictly load a flat ``name -> array`` dict into ``model``.

    Raises:
        CheckpointError: naming the first missing, unexpected or mis-shaped tensor.
    """
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing:
        raise CheckpointError(f"{source}: missing tensor {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise CheckpointError(f"{source}: unexpected tensor {extra[0]!r}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
    for name, want in expected.items():
        got = weights[name]
        if tuple(got.shape) != tuple(want.shape):
            raise CheckpointError(f"{source}: tensor {name!r} has shape {tuple(got.shape)}, "
                                  f"expected {tuple(want.shape)}")
        if got.dtype != want.dtype and not (
            mx.issubdtype(got.dtype, mx.floating) and mx.issubdtype(want.dtype, mx.floating)
        ):
            raise CheckpointError(f"{source}: tensor {name!r} has dtype {got.dtype}, "
                                  f"expected {want.dtype}")
    # A float tensor stored narrower (e.g. float16 int8 scales) loads as the model's dtype.
    weights = {k: v.astype(expected[k].dtype) if v.dtype != expected[k].dtype else v
               for k, v in weights.items()}
    model.update(tree_unflatten(list(weights.items())))
    mx.eval(model.parameters())


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of a model path: checkpoint, onnx, torch, safetensors or keras."""
    p = Path(path)
    if p.is_dir():
        return "checkpoint"
    suffix = p.suffix.lower()
    formats = {".onnx": "onnx", ".pt": "torch", ".pth": "torch", ".bin": "torch",
               ".safetensors": "safetensors", ".npz": "npz", ".keras": "keras", ".h5": "keras"}
    if suffix in formats:
        return formats[suffix]
    raise CheckpointError(f"cannot tell the format of {path}: expected a checkpoint directory, "
                          ".onnx, .pt/.pth, .safetensors, .npz (mlx.nn weights), .keras or .h5")


def load(path: str | os.PathLike, **options) -> nn.Module:
    """Load a model from any supported format, detected from the path.

    Args:
        path: checkpoint directory, ``.onnx``, PyTorch state dict
            (``.pt``/``.pth``), ``.safetensors`` or Keras (``.keras``/``.h5``).
        options: format-specific options passed to the importer.

    Returns:
        An edgelstm module in eval mode.
    """
    if not Path(path).exists():
        raise CheckpointError(f"{path} does not exist")
    fmt = detect_format(path)
    if fmt == "checkpoint":
        return load_checkpoint(path)
    from edgelstm import converters

    return converters.import_model(path, fmt, **options)


register_saver(save)  # model.save(path) without nn importing io
