"""Import ``mlx.nn.LSTM``/``GRU``/``RNN`` saved weights (``.safetensors``/``.npz``).

mlx.nn layers are single, unidirectional layers with parameters ``Wx``,
``Wh``, ``bias`` (LSTM), ``Wx``, ``Wh``, ``b``, ``bhn`` (GRU) or ``Wxh``,
``Whh``, ``bias`` (RNN); a file holds one or more of them under prefixes
(``lstm.``, ``layers.0.``, ...), taken in natural order as stacked layers.
edgelstm's own ``<p>.forward.``/``<p>.reverse.`` pairs become bidirectional
layers. Weights saved before mlx PR #1419 (Sept 2024) had ``Wx (I, 4H)``
and ``Wh (H, 4H)``; that layout is detected from ``Wh`` and transposed.
An optional ``nn.Linear`` (``<p>weight``, ``<p>bias``) becomes the head.
"""

from __future__ import annotations

import os
import re

import numpy as np

from edgelstm.errors import ConversionError

_NAMES = ("Wx", "Wh", "bias", "b", "bhn", "Wxh", "Whh", "peephole")


def is_mlx_weights(weights: dict) -> bool:
    """Whether a flat weight dict uses mlx.nn recurrent parameter names."""
    return any(k.rsplit(".", 1)[-1] in ("Wx", "Wxh") for k in weights)


def _natural(key: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def _layers(weights: dict) -> list[tuple[str, dict]]:
    """``[(prefix, {param: array})]`` for each recurrent layer direction, in natural order."""
    groups: dict[str, dict] = {}
    for k in weights:
        pre, _, name = k.rpartition(".")
        if name in ("Wx", "Wxh"):
            groups.setdefault(pre, {})
    for pre in groups:
        for name in _NAMES:
            key = f"{pre}.{name}" if pre else name
            if key in weights:
                groups[pre][name] = weights[key]
    return sorted(groups.items(), key=lambda kv: _natural(kv[0]))


def _fix_layout(p: dict, where: str) -> dict:
    """Transpose pre-Sept-2024 ``(I, G*H)``/``(H, G*H)`` LSTM/GRU weights to ``(G*H, ...)``."""
    Wh = p.get("Wh")
    if Wh is None or Wh.ndim != 2:
        return p
    r, c = Wh.shape
    if r != c and c % r == 0 and c // r in (3, 4):
        p = dict(p, Wx=p["Wx"].T, Wh=Wh.T)
    elif r % c or r // c not in (3, 4):
        raise ConversionError(f"{where}: Wh has shape {Wh.shape}, not (G*H, H)")
    return p


def from_mlx_weights(weights: dict[str, np.ndarray], source: str = "weights",
                     head: str | None = None, nonlinearity: str = "tanh",
                     labels: list[str] | None = None, **_ignored):
    """Build an edgelstm model from mlx.nn recurrent layer weights.

    Args:
        weights: ``name -> array`` as saved by ``model.save_weights``.
        source: file name for messages.
        head: ``"sequence"``, ``"frame"`` or ``"none"``, as for PyTorch state
            dicts. Default: ``"sequence"`` if a Linear is present.
        nonlinearity: ``"tanh"`` or ``"relu"`` for ``mlx.nn.RNN``.
        labels: class names of the head's outputs.

    Returns:
        ``edgelstm.LSTM``/``GRU``/``RNN`` or ``SequenceModel`` (eval mode).
    """
    import mlx.core as mx

    from edgelstm.converters.torch_import import _with_head
    from edgelstm.io.checkpoint import load_weights
    from edgelstm.nn.layers import RECURRENT

    found = _layers(weights)
    if not found:
        raise ConversionError(f"{source}: no mlx.nn LSTM/GRU/RNN weights (Wx/Wh or Wxh/Whh)")
    # group directions: "<p>.forward" / "<p>.reverse" make one bidirectional layer
    layers: list[list[tuple[str, dict]]] = []
    for pre, p in found:
        base, _, last = pre.rpartition(".")
        if last == "reverse" and layers and layers[-1][0][0] == f"{base}.forward":
            layers[-1].append((pre, p))
        else:
            layers.append([(pre, p)])
    dirs = {len(group) for group in layers}
    if len(dirs) != 1:
        raise ConversionError(f"{source}: some layers are bidirectional and some are not")
    bidir = dirs.pop() == 2
    native, used, kind, H, I, bias, peep = {}, set(), None, None, None, None, False
    for k, group in enumerate(layers):
        for d, (pre, p) in enumerate(group):
            where = f"{source}: {pre or 'layer'}"
            if "Wxh" in p:
                this, H_k = "rnn", p["Whh"].shape[0]
                Wx = p["Wxh"]
            else:
                p = _fix_layout(p, where)
                G = p["Wh"].shape[0] // p["Wh"].shape[1]
                this, H_k, Wx = ("lstm" if G == 4 else "gru"), p["Wh"].shape[1], p["Wx"]
            kind = kind or this
            H = H_k if H is None else H
            if this != kind or H_k != H:
                raise ConversionError(f"{where}: a {this.upper()} of hidden size {H_k} after "
                                      f"{kind.upper()} layers of hidden size {H}")
            want_in = (I if k == 0 else H * (2 if bidir else 1))
            if k == 0 and I is None:
                I = want_in = Wx.shape[1]
            if Wx.shape[1] != want_in:
                raise ConversionError(f"{where}: input size {Wx.shape[1]}, expected {want_in}")
            has_b = ("b" if kind == "gru" else "bias") in p
            bias = has_b if bias is None else bias
            if has_b != bias:
                raise ConversionError(f"{where}: some layers have biases and some do not")
            peep = peep or "peephole" in p
            at = f"layers.{k}.{('forward', 'reverse')[d]}."
            native.update({at + n: v for n, v in p.items()})
            used.update(f"{pre}.{n}" if pre else n for n in _NAMES)
    opts = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    if peep:
        opts["peephole"] = True
    rnn = RECURRENT[kind](I, H, num_layers=len(layers), bidirectional=bidir, bias=bool(bias),
                          **opts)
    load_weights(rnn, {k: mx.array(np.ascontiguousarray(v, np.float32))
                       for k, v in native.items()}, source=source)
    rest = {k: v for k, v in weights.items() if k not in used}
    return _with_head(rnn, rest, source, head, labels)


def from_mlx_file(path: str | os.PathLike, **options):
    """Read ``.safetensors``/``.npz`` mlx.nn weights and import them."""
    from edgelstm.converters.torch_import import read_weights

    return from_mlx_weights(read_weights(path), source=str(path), **options)
