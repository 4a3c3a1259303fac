"""Import PyTorch ``nn.LSTM``/``nn.GRU``/``nn.RNN`` state dicts (+ optional ``nn.Linear`` head).

``.pt``/``.pth``/``.bin`` files are read with ``torch.load(weights_only=True)``
(torch is an optional extra); ``.safetensors`` files need no torch. Keys are
PyTorch's (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...) under any prefix
(``encoder.lstm.``). Gate orders and biases go through
:mod:`edgelstm.converters.gates`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgelstm.converters import gates
from edgelstm.errors import CheckpointError, ConversionError, UnsupportedError

_KEY = re.compile(r"^(?P<prefix>.*?)(?P<kind>weight|bias)_(?P<part>ih|hh|hr)_l(?P<layer>\d+)"
                  r"(?P<rev>_reverse)?$")
_CELLS = {4: "lstm", 3: "gru", 1: "rnn"}
HEADS = ("sequence", "frame", "none")


def read_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a flat ``name -> float32 array`` dict from ``.safetensors``, ``.npz`` or a torch file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    if path.suffix.lower() in (".safetensors", ".npz"):
        import mlx.core as mx

        try:
            loaded = mx.load(str(path))
        except Exception as exc:  # MLX raises plain RuntimeError/ValueError on bad files
            raise CheckpointError(f"{path} cannot be read: {exc}") from None
        return {k: np.array(v.astype(mx.float32)) for k, v in loaded.items()}
    try:
        import torch
    except ImportError:
        raise UnsupportedError(f"reading {path.name} needs PyTorch (pip install torch); a "
                               ".safetensors state dict needs no torch") from None
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, or a whole module saved instead of a state dict
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a readable PyTorch state dict: {first}") from None
    # unwrap {"state_dict": {...}} / {"model": {...}} checkpoints
    while isinstance(sd, dict) and len(sd) == 1 and isinstance(next(iter(sd.values())), dict):
        sd = next(iter(sd.values()))
    if not isinstance(sd, dict) or not all(hasattr(v, "numpy") for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return {k: v.detach().to(torch.float32).numpy() for k, v in sd.items()}


def _group(weights: dict, prefix: str | None) -> tuple[str, dict]:
    groups: dict[str, dict] = {}
    for name in weights:
        m = _KEY.match(name)
        if m:
            groups.setdefault(m["prefix"], {})[name] = m
    if prefix is not None:
        groups = {p: g for p, g in groups.items() if p == prefix}
    if not groups:
        raise ConversionError("no PyTorch LSTM/GRU/RNN weights (weight_ih_l0, ...) found"
                              + (f" under prefix {prefix!r}" if prefix else ""))
    if len(groups) > 1:
        names = ", ".join(repr(p) for p in sorted(groups))
        raise ConversionError(f"several recurrent modules ({names}); choose one with prefix=")
    return next(iter(groups.items()))


def from_state_dict(weights: dict[str, np.ndarray], source: str = "state dict",
                    head: str | None = None, cell: str | None = None,
                    nonlinearity: str = "tanh", prefix: str | None = None,
                    hidden_size: int | None = None, labels: list[str] | None = None):
    """Build an edgelstm model from a PyTorch state dict.

    Args:
        weights: ``name -> array``; PyTorch recurrent keys under one prefix,
            plus optionally one ``nn.Linear`` (``<p>weight``/``<p>bias``).
        source: file name for messages.
        head: ``"sequence"`` (the head reads the last layer's final hidden
            state(s), as ``fc(h_n[-1])``), ``"frame"`` (``fc(output)``) or
            ``"none"``. Default: ``"sequence"`` if a Linear is present.
        cell: ``"lstm"``/``"gru"``/``"rnn"``; inferred from the gate count.
        nonlinearity: an ``nn.RNN``'s ``"tanh"`` or ``"relu"`` (not in the weights).
        prefix: choose the recurrent module when a file holds several.
        hidden_size: checked against the weights when given (they define it).
        labels: class names of the head's outputs.

    Returns:
        ``edgelstm.LSTM``/``GRU``/``RNN`` (no head) or ``SequenceModel`` (eval mode).
    """
    import mlx.core as mx

    from edgelstm.io.checkpoint import load_weights
    from edgelstm.nn.layers import RECURRENT

    pre, keys = _group(weights, prefix)
    if any(m["part"] == "hr" for m in keys.values()):
        raise UnsupportedError(f"{source}: LSTM projections (proj_size, weight_hr_l*) are not "
                               "supported")
    get = lambda part, k, rev, kind="weight": weights.get(  # noqa: E731
        f"{pre}{kind}_{part}_l{k}{'_reverse' if rev else ''}")
    L = 1 + max(int(m["layer"]) for m in keys.values())
    bidir = any(m["rev"] for m in keys.values())
    Wh0 = get("hh", 0, False)
    if Wh0 is None or Wh0.ndim != 2:
        raise ConversionError(f"{source}: missing or malformed {pre}weight_hh_l0")
    H = Wh0.shape[1]
    G = Wh0.shape[0] // H
    if Wh0.shape[0] % H or G not in _CELLS:
        raise ConversionError(f"{source}: {pre}weight_hh_l0 has shape {Wh0.shape}, not (G*H, H)")
    kind = _CELLS[G]
    if cell is not None and cell != kind:
        raise ConversionError(f"{source}: weights have {G} gate(s) per unit ({kind.upper()}), "
                              f"not a {cell.upper()}")
    if hidden_size is not None and hidden_size != H:
        raise ConversionError(f"{source}: hidden size is {H} in the weights, not {hidden_size}")
    has_bias = get("ih", 0, False, "bias") is not None
    opts = {"nonlinearity": nonlinearity} if kind == "rnn" else {}
    input_size = get("ih", 0, False).shape[1]
    rnn = RECURRENT[kind](input_size, H, num_layers=L, bidirectional=bidir, bias=has_bias, **opts)
    native, used = {}, set()
    for k in range(L):
        for d, dname in enumerate(("forward", "reverse")[: 1 + bidir]):
            parts = [get("ih", k, d), get("hh", k, d), get("ih", k, d, "bias"),
                     get("hh", k, d, "bias")]
            if parts[0] is None or parts[1] is None:
                raise ConversionError(f"{source}: missing {pre}weight_ih/hh_l{k}"
                                      f"{'_reverse' if d else ''}")
            used.update(f"{pre}{w}_{p}_l{k}{'_reverse' if d else ''}"
                        for w in ("weight", "bias") for p in ("ih", "hh"))
            at = f"layers.{k}.{dname}."
            if kind == "lstm":
                Wx, Wh, bias = gates.lstm_from_torch(*parts)
                native.update({at + "Wx": Wx, at + "Wh": Wh, at + "bias": bias})
            elif kind == "gru":
                Wx, Wh, b, bhn = gates.gru_from_torch(*parts)
                native.update({at + "Wx": Wx, at + "Wh": Wh, at + "b": b, at + "bhn": bhn})
            else:
                native.update({at + "Wxh": parts[0], at + "Whh": parts[1],
                               at + "bias": gates.merge_bias(parts[2], parts[3])})
    native = {k: mx.array(np.ascontiguousarray(v, np.float32)) for k, v in native.items()
              if v is not None}
    load_weights(rnn, native, source=source)
    rest = {k: v for k, v in weights.items() if k not in used}
    return _with_head(rnn, rest, source, head, labels)


def _with_head(rnn, rest: dict, source: str, head: str | None, labels=None):
    """Attach the one ``nn.Linear`` left in ``rest`` as the head (or return the bare stack)."""
    import mlx.core as mx

    from edgelstm.nn.model import SequenceModel

    if head is not None and head not in HEADS:
        raise ConversionError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
    rest = {k: v for k, v in rest.items() if not k.endswith("num_batches_tracked")}
    linears = [k[: -len("weight")] for k, v in rest.items()
               if k.endswith("weight") and v.ndim == 2 and v.shape[1] == rnn.output_size]
    if head == "none" or (head is None and not linears):
        if rest:
            raise ConversionError(f"{source}: unexpected tensor {sorted(rest)[0]!r} "
                                  f"(a model with head=none has only recurrent weights)")
        rnn.eval()
        return rnn
    if len(linears) != 1:
        what = "no" if not linears else f"{len(linears)}"
        raise ConversionError(f"{source}: found {what} Linear layer(s) taking "
                              f"{rnn.output_size} features; the head must be exactly one")
    p = linears[0]
    W, b = rest.pop(p + "weight"), rest.pop(p + "bias", None)
    if rest:
        raise ConversionError(f"{source}: unexpected tensor {sorted(rest)[0]!r} "
                              "(only a recurrent stack plus one Linear head can be imported)")
    model = SequenceModel(rnn, W.shape[0], head=head or "sequence", labels=labels)
    model.head.weight = mx.array(np.ascontiguousarray(W, np.float32))
    model.head.bias = mx.array(np.zeros(W.shape[0], np.float32) if b is None
                               else np.ascontiguousarray(b, np.float32))
    mx.eval(model.parameters())
    model.eval()
    return model
