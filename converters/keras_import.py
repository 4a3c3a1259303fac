"""Import Keras LSTM/GRU/SimpleRNN models from ``.keras`` (Keras 3) or legacy ``.h5`` files.

No Keras is needed: the model config is JSON and the weights are HDF5, read
with ``h5py`` (the one optional dependency). Supported: a chain of
recurrent layers (optionally ``Bidirectional(merge_mode="concat")``),
``Dropout`` layers (inactive at inference) and a final linear ``Dense``,
applied per frame (last recurrent layer ``return_sequences=True``) or per
sequence. Gate orders (Keras i,f,c,o and z,r,h; GRU ``reset_after``) go
through :mod:`edgelstm.converters.gates`.
"""

from __future__ import annotations

import io
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np

from edgelstm.converters import gates
from edgelstm.errors import CheckpointError, ConversionError, UnsupportedError

_RECURRENT = {"LSTM": "lstm", "GRU": "gru", "SimpleRNN": "rnn"}
_SKIP = {"InputLayer", "Dropout", "SpatialDropout1D", "GaussianDropout", "GaussianNoise"}
_ACTS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "softsign": "softsign",
         "softplus": "softplus", "elu": "elu", "linear": "affine"}


def _snake(name: str) -> str:
    # keras.src.utils.naming.to_snake_case: the group name of a layer in .keras weights
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _open(path: Path):
    """Return ``(layer configs, weights(layer index, config) -> list of arrays)``."""
    try:
        import h5py
    except ImportError:
        raise UnsupportedError(f"reading {path.name} needs h5py (pip install h5py)") from None
    try:
        if path.suffix.lower() == ".keras":
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
                h5 = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
            legacy = False
        else:
            h5 = h5py.File(path, "r")
            if "model_config" not in h5.attrs:
                raise CheckpointError(f"{path} holds weights only (no model_config); save the "
                                      "whole model with model.save()")
            raw = h5.attrs["model_config"]
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            legacy = True
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable Keras model: {exc}") from None
    if config.get("class_name") not in ("Sequential", "Functional", "Model"):
        raise ConversionError(f"{path}: a Keras {config.get('class_name')} model is not supported")
    layers = config["config"]["layers"]
    counts: dict[str, int] = {}
    keys = []
    for layer in layers:
        base = _snake(layer["class_name"])
        n = counts.get(base, 0)
        counts[base] = n + 1
        keys.append(base if n == 0 else f"{base}_{n}")

    def weights(i: int, layer: dict) -> list[np.ndarray]:
        if legacy:
            g = h5["model_weights"].get(layer["config"]["name"])
            if g is None:
                return []
            return [np.asarray(g[n.decode() if isinstance(n, bytes) else n])
                    for n in g.attrs.get("weight_names", [])]
        g = h5.get(f"layers/{keys[i]}")
        if g is None:
            return []
        out = []
        for sub in ("forward_layer/cell/vars", "backward_layer/cell/vars", "cell/vars", "vars"):
            if sub in g:
                v = g[sub]
                out += [np.asarray(v[str(j)]) for j in range(len(v))]
        return out

    return layers, weights


def _act(name, where: str) -> list:
    if name not in _ACTS:
        raise UnsupportedError(f"{where}: activation {name!r} is not supported")
    return [_ACTS[name], 1.0, 0.0] if name == "linear" else [_ACTS[name], None, None]


def _cell(kind: str, cfg: dict, where: str) -> dict:
    """Native options of one Keras recurrent layer config."""
    for key, bad in (("go_backwards", True), ("time_major", True), ("return_state", True),
                     ("stateful", True)):
        if cfg.get(key) == bad:
            raise UnsupportedError(f"{where}: {key}=True is not supported")
    act = _act(cfg.get("activation", "tanh"), where)
    if kind == "rnn":
        if act[0] in ("tanh", "relu"):
            return {"nonlinearity": act[0]}
        return {"activations": [act]}
    rec = _act(cfg.get("recurrent_activation", "sigmoid"), where)
    acts = [rec, act, act] if kind == "lstm" else [rec, act]
    opts = {} if [a[0] for a in acts] == (["sigmoid", "tanh", "tanh"] if kind == "lstm"
                                          else ["sigmoid", "tanh"]) else {"activations": acts}
    if kind == "gru":
        opts["linear_before_reset"] = bool(cfg.get("reset_after", True))
    return opts


def _direction_weights(kind, arrays, opts, H):
    if kind == "lstm":
        Wx, Wh, b = gates.lstm_from_keras(*arrays)
        return {"Wx": Wx, "Wh": Wh, "bias": b}
    if kind == "gru":
        Wx, Wh, b, bhn, _ = gates.gru_from_keras(*arrays, reset_after=opts["linear_before_reset"])
        if b is not None and bhn is None:
            bhn = np.zeros((H,), np.float32)
        return {"Wx": Wx, "Wh": Wh, "b": b, "bhn": bhn}
    Wxh, Whh, b = gates.rnn_from_keras(*arrays)
    return {"Wxh": Wxh, "Whh": Whh, "bias": b}


def from_keras(path: str | os.PathLike, labels: list[str] | None = None, **_ignored):
    """Import a Keras model as an edgelstm model.

    Args:
        path: ``.keras`` (Keras 3) or legacy ``.h5`` whole-model file.
        labels: class names of the head's outputs.

    Returns:
        ``edgelstm.LSTM``/``GRU``/``RNN`` or ``SequenceModel`` (eval mode).

    Raises:
        ConversionError: naming the first layer that cannot be mapped.
    """
    path = Path(path)
    try:
        return _from_keras(path, labels)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        # the config is untrusted JSON: a missing key or wrong type is a bad file, not a bug
        what = f"missing key {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ConversionError(f"{path}: malformed Keras model config ({what})") from None


def _from_keras(path: Path, labels):
    import mlx.core as mx

    from edgelstm.io.checkpoint import load_weights
    from edgelstm.limits import MAX_HIDDEN, check_int
    from edgelstm.nn.layers import RECURRENT
    from edgelstm.nn.model import SequenceModel

    layers, weights_of = _open(path)
    stack, dense, opts, kind, return_seq = [], None, None, None, True
    for i, layer in enumerate(layers):
        cls, cfg = layer["class_name"], layer["config"]
        where = f"{path.name}: layer '{cfg.get('name', i)}' ({cls})"
        if cls in _SKIP:
            continue
        if dense is not None:
            raise ConversionError(f"{where} follows the Dense head; only a recurrent stack plus "
                                  "one linear Dense can be imported")
        if cls == "Dense":
            if cfg.get("activation", "linear") != "linear":
                raise UnsupportedError(f"{where}: Dense activation {cfg['activation']!r} has no "
                                       "native form; import the model's logits (linear Dense)")
            dense = weights_of(i, layer)
            continue
        bidir = cls == "Bidirectional"
        if bidir:
            if cfg.get("merge_mode", "concat") != "concat":
                raise UnsupportedError(f"{where}: merge_mode {cfg['merge_mode']!r} is not "
                                       "supported (only 'concat')")
            inner = cfg["layer"]
            back = dict(cfg.get("backward_layer", {}).get("config", inner["config"]))
            back["go_backwards"] = False  # the backward copy's own flag is expected
            cls, cfg_dir = inner["class_name"], [inner["config"], back]
        else:
            cfg_dir = [cfg]
        if cls not in _RECURRENT:
            raise ConversionError(f"{where}: layer type {cls} cannot be mapped")
        if not return_seq:
            raise ConversionError(f"{where} follows a layer with return_sequences=False")
        this = _RECURRENT[cls]
        this_opts = _cell(this, cfg_dir[0], where)
        if bidir and _cell(this, cfg_dir[1], where) != this_opts:
            raise UnsupportedError(f"{where}: forward and backward layers differ")
        if stack and (this != kind or this_opts != opts or bidir != stack[0][0]):
            raise ConversionError(f"{where} differs from the first recurrent layer (type, "
                                  "direction or activations); a native stack needs identical "
                                  "layers")
        kind, opts = this, this_opts
        units = check_int(f"{where}: units", cfg_dir[0]["units"], 1, MAX_HIDDEN)
        arrays = weights_of(i, layer)
        n = len(arrays) // (2 if bidir else 1)
        if n not in (2, 3):
            raise ConversionError(f"{where}: found {len(arrays)} weight arrays")
        dirs = [arrays[:n], arrays[n:]] if bidir else [arrays]
        dirs = [d + [None] * (3 - len(d)) for d in dirs]
        stack.append((bidir, units, [_direction_weights(kind, d, opts, units) for d in dirs]))
        return_seq = bool(cfg_dir[0].get("return_sequences", False))
    if not stack:
        raise ConversionError(f"{path.name}: no LSTM, GRU or SimpleRNN layer")
    bidir, H = stack[0][0], stack[0][1]
    if any(units != H for _, units, _ in stack):
        raise ConversionError(f"{path.name}: recurrent layers of different sizes cannot stack")
    has_bias = stack[0][2][0].get("bias", stack[0][2][0].get("b")) is not None
    input_size = int(np.shape(stack[0][2][0].get("Wx", stack[0][2][0].get("Wxh")))[1])
    rnn = RECURRENT[kind](input_size, H, num_layers=len(stack), bidirectional=bidir,
                          bias=has_bias, **opts)
    native = {}
    for k, (_, _, per_dir) in enumerate(stack):
        for d, params in enumerate(per_dir):
            native.update({f"layers.{k}.{('forward', 'reverse')[d]}.{n}": v
                           for n, v in params.items() if v is not None})
    load_weights(rnn, {k: mx.array(np.ascontiguousarray(v, np.float32))
                       for k, v in native.items()}, source=str(path))
    if dense is None:
        if return_seq:
            rnn.eval()
            return rnn
        raise ConversionError(f"{path.name}: the last recurrent layer returns only its final "
                              "state and no Dense follows; edgelstm has no such output")
    kernel, bias = dense[0], (dense[1] if len(dense) > 1 else None)
    model = SequenceModel(rnn, kernel.shape[1], head="frame" if return_seq else "sequence",
                          labels=labels)
    model.head.weight = mx.array(np.ascontiguousarray(kernel.T, np.float32))
    model.head.bias = mx.array(np.zeros(kernel.shape[1], np.float32) if bias is None
                               else np.ascontiguousarray(bias, np.float32))
    mx.eval(model.parameters())
    model.eval()
    return model
