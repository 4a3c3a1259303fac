"""Recurrent layers with a PyTorch-like API: ``LSTM``, ``GRU`` and ``RNN``.

Each (layer, direction) cell keeps mlx.nn's parameter names and gate order
(LSTM ``Wx (4H, I)``, ``Wh (4H, H)``, ``bias``; GRU ``Wx``, ``Wh``, ``b``,
``bhn``; RNN ``Wxh``, ``Whh``, ``bias``), so an ``mlx.nn`` layer's weights
load unchanged into ``layers.0.forward``. All math runs through
:mod:`edgelstm.nn.recurrent`.
"""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from edgelstm.errors import ConfigError
from edgelstm.fast import stacks as _stacks
from edgelstm.nn import activations as A
from edgelstm.nn import recurrent as R

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def _uniform(scale: float, shape: tuple[int, ...]) -> mx.array:
    return mx.random.uniform(low=-scale, high=scale, shape=shape)


class _Cell(nn.Module):
    """What every cell shares: MLX's quantize protocol and the fused-kernel view.

    Subclasses name their input and recurrent weights in ``weight_names`` and
    add their own kernel options in :meth:`_kernel_options`.
    """

    weight_names = ("Wx", "Wh")
    default_activations: tuple = ()

    def to_quantized(self, group_size=None, bits=None, mode="affine", **kw):
        """MLX's ``nn.quantize`` protocol: a quantized copy (see edgelstm.quantize)."""
        from edgelstm.quantize.mlx_quant import quantize_cell

        return quantize_cell(self, group_size, bits, mode, **kw)

    def _kernel_weights(self, fast=None):
        """``[Wx, Wx_scales, Wh, Wh_scales]`` for the fused kernels (float: no scales)."""
        wx, wh = self.weight_names
        return [self[wx], None, self[wh], None]  # items: no Module.__getattr__

    def kernel_args(self, fast=None) -> dict | None:
        """Weights and options in :func:`edgelstm.fast.stacks.plan_stack`'s terms, or ``None``."""
        w = self._kernel_weights(fast)
        if w is None:
            return None
        o = self["_opts"]
        return {"Wx": w[0], "Wx_scales": w[1], "Wh": w[2], "Wh_scales": w[3],
                "clip": o.get("clip"),
                "activations": tuple(o.get("activations") or self.default_activations),
                **self._kernel_options(o)}

    def _kernel_options(self, opts: dict) -> dict:
        return {"bias": self.get("bias")}


class LSTMCell(_Cell):
    """Weights of one LSTM direction of one layer; runs a whole sequence."""

    kind = "lstm"
    default_activations = R.LSTM_ACTIVATIONS

    def __init__(self, input_size, hidden_size, bias=True, peephole=False, **opts):
        super().__init__()
        s = 1.0 / math.sqrt(hidden_size)
        self.Wx = _uniform(s, (4 * hidden_size, input_size))
        self.Wh = _uniform(s, (4 * hidden_size, hidden_size))
        self.bias = _uniform(s, (4 * hidden_size,)) if bias else None
        if peephole:
            self.peephole = _uniform(s, (3 * hidden_size,))
        self._opts = opts  # clip, input_forget, activations

    def _kernel_options(self, opts):
        return {"bias": self.get("bias"), "peephole": self.get("peephole"),
                "input_forget": opts.get("input_forget", False)}

    def __call__(self, x, state=None, lengths=None, reverse=False, fast=None):
        """x ``(B, T, I)``; state ``(h0, c0)`` each ``(B, H)`` -> ``y, (h, c)``."""
        h0, c0 = state if state is not None else (None, None)
        return R.lstm(
            x, self.Wx, self.Wh, self.get("bias"), h0=h0, c0=c0, lengths=lengths,
            reverse=reverse, peephole=self.get("peephole"), fast=fast,
            train=self.training, **self._opts,
        )


class GRUCell(_Cell):
    """Weights of one GRU direction of one layer; runs a whole sequence."""

    kind = "gru"
    default_activations = R.GRU_ACTIVATIONS

    def __init__(self, input_size, hidden_size, bias=True, **opts):
        super().__init__()
        s = 1.0 / math.sqrt(hidden_size)
        self.Wx = _uniform(s, (3 * hidden_size, input_size))
        self.Wh = _uniform(s, (3 * hidden_size, hidden_size))
        self.b = _uniform(s, (3 * hidden_size,)) if bias else None
        self.bhn = _uniform(s, (hidden_size,)) if bias else None
        self._opts = opts  # linear_before_reset, clip, activations

    def _kernel_options(self, opts):
        return {"bias": self.get("b"), "bhn": self.get("bhn"),
                "linear_before_reset": bool(opts.get("linear_before_reset", True))}

    def __call__(self, x, state=None, lengths=None, reverse=False, fast=None):
        """x ``(B, T, I)``; state ``h0 (B, H)`` -> ``y, h``."""
        return R.gru(
            x, self.Wx, self.Wh, self.get("b"), self.get("bhn"), h0=state, lengths=lengths,
            reverse=reverse, fast=fast, **self._opts,
        )


class RNNCell(_Cell):
    """Weights of one Elman RNN direction of one layer; runs a whole sequence."""

    kind = "rnn"
    weight_names = ("Wxh", "Whh")
    default_activations = R.RNN_ACTIVATIONS

    def __init__(self, input_size, hidden_size, bias=True, **opts):
        super().__init__()
        s = 1.0 / math.sqrt(hidden_size)
        self.Wxh = _uniform(s, (hidden_size, input_size))
        self.Whh = _uniform(s, (hidden_size, hidden_size))
        self.bias = _uniform(s, (hidden_size,)) if bias else None
        self._opts = opts  # clip, activations

    def __call__(self, x, state=None, lengths=None, reverse=False, fast=None):
        """x ``(B, T, I)``; state ``h0 (B, H)`` -> ``y, h``."""
        return R.rnn(
            x, self.Wxh, self.Whh, self.get("bias"), h0=state, lengths=lengths,
            reverse=reverse, fast=fast, **self._opts,
        )


CELLS = {"lstm": LSTMCell, "gru": GRUCell, "rnn": RNNCell}


class _Layer(nn.Module):
    def __init__(self, cell_cls, input_size, hidden_size, bidirectional, **kw):
        super().__init__()
        self.forward = cell_cls(input_size, hidden_size, **kw)
        if bidirectional:
            self.reverse = cell_cls(input_size, hidden_size, **kw)


_SAVERS: list = []  # filled by edgelstm.io.checkpoint, so nn never imports io


def register_saver(fn) -> None:
    """Install the function behind ``model.save`` (``fn(model, path, force=...)``)."""
    _SAVERS[:] = [fn]


class SaveMixin:
    """``model.save(path)``: write a native checkpoint (see :func:`edgelstm.save`)."""

    def save(self, path, force: bool = False):
        """Write this model as a checkpoint directory; see :func:`edgelstm.save`."""
        return _SAVERS[0](self, path, force=force)


class Recurrent(SaveMixin, nn.Module):
    """A stack of recurrent layers; base of :class:`LSTM`, :class:`GRU`, :class:`RNN`.

    Args:
        input_size: features per step, ``I``.
        hidden_size: units per direction, ``H``.
        num_layers: stacked layers. Default: ``1``.
        bidirectional: run a reverse direction too; outputs concatenate
            ``[forward, reverse]``. Default: ``False``.
        bias: learn biases. Default: ``True``.
        dropout: dropout between layers, in training only. Default: ``0.0``.
        batch_first: input is ``(B, T, I)``; else ``(T, B, I)``. Default: ``True``.
    """

    cell_type = "lstm"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        batch_first: bool = True,
        **cell_options: Any,
    ):
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden_size", hidden_size),
                            ("num_layers", num_layers)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bidirectional = bool(bidirectional)
        self.has_bias = bool(bias)
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.cell_options = _normalise_options(self.cell_type, cell_options)
        run_opts = _run_options(self.cell_type, self.cell_options)
        cell_cls = CELLS[self.cell_type]
        self.layers = [
            _Layer(cell_cls, input_size if k == 0 else hidden_size * self.num_directions,
                   hidden_size, self.bidirectional, bias=bias, **run_opts)
            for k in range(num_layers)
        ]
        self._drop = nn.Dropout(dropout) if dropout > 0 else None

    @property
    def num_directions(self) -> int:
        """2 for a bidirectional stack, else 1."""
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features per output step: ``dirs * H``."""
        return self.hidden_size * self.num_directions

    def _extra_repr(self):
        return (f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"bias={self.has_bias}")

    def config(self) -> dict:
        """The constructor arguments as a JSON-able dict (with ``model_type``)."""
        return {
            "model_type": self.cell_type, "input_size": self.input_size,
            "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "bidirectional": self.bidirectional, "bias": self.has_bias,
            "dropout": self.dropout, "batch_first": self.batch_first,
            **self.cell_options,
        }

    @classmethod
    def from_config(cls, config: dict) -> Recurrent:
        """Build from :meth:`config` output (unknown keys are ignored)."""
        known = {"input_size", "hidden_size", "num_layers", "bidirectional", "bias",
                 "dropout", "batch_first", *_OPTION_DEFAULTS[cls.cell_type]}
        return cls(**{k: v for k, v in config.items() if k in known})

    def zero_state(self, batch_size: int):
        """Zero initial state: ``(h, c)`` for LSTM, ``h`` otherwise, ``(L*dirs, B, H)``."""
        z = mx.zeros((self.num_layers * self.num_directions, batch_size, self.hidden_size))
        return (z, z) if self.cell_type == "lstm" else z

    def __call__(self, x: mx.array, state=None, lengths=None, fast: bool | None = None):
        """Run the stack.

        Args:
            x: ``(B, T, I)`` (or ``(T, B, I)`` if not ``batch_first``), or
                unbatched ``(T, I)``.
            state: initial state, ``(h0, c0)`` for LSTM or ``h0`` for GRU/RNN,
                each ``(L*dirs, B, H)`` (``(L*dirs, H)`` when unbatched).
                ``None`` means zeros.
            lengths: valid steps per sequence ``(B,)``; outputs past a length
                are zero and the state stops there.
            fast: use the compiled C++ kernel when available (``None``: auto).

        Returns:
            ``(y, (h_n, c_n))`` for LSTM, ``(y, h_n)`` otherwise; ``y`` is
            ``(B, T, dirs*H)``, each state ``(L*dirs, B, H)``.
        """
        if x.ndim not in (2, 3):
            raise ValueError(f"expected input of 2 or 3 dims, got shape {tuple(x.shape)}")
        unbatched = x.ndim == 2
        time_major = not unbatched and not self.batch_first
        if unbatched:
            x = x[None]
            state = _map_state(state, lambda s: s[:, None])
        if x.shape[-1] != self.input_size:
            raise ValueError(f"expected {self.input_size} input features, got {x.shape[-1]}")
        # Whole stack in one kernel primitive when every layer can take it.
        plan = _stacks.plan_stack(self, x, state, fast)
        if isinstance(plan, list):
            x, out_state = _stacks.run_stack(
                self.cell_type, plan, x, state, lengths, batch_first=not time_major,
                train=self.training)
        else:
            if time_major:
                x = x.transpose(1, 0, 2)
            x, out_state = self._layer_by_layer(x, state, lengths, fast)
            if time_major:
                x = x.transpose(1, 0, 2)
        if unbatched:
            x = x[0]
            out_state = _map_state(out_state, lambda s: s[:, 0])
        return x, out_state

    def _layer_by_layer(self, x, state, lengths, fast):
        """Each (layer, direction) cell in turn; x ``(B, T, I)`` -> ``y, state``."""
        is_lstm = self.cell_type == "lstm"
        finals = []
        for k, layer in enumerate(self.layers):
            if k > 0 and self._drop is not None and self.training:
                x = self._drop(x)
            outs = []
            for d, cell in enumerate(self._cells(layer)):
                idx = k * self.num_directions + d
                s = None
                if state is not None:
                    s = (state[0][idx], state[1][idx]) if is_lstm else state[idx]
                y, fin = cell(x, s, lengths=lengths, reverse=d == 1, fast=fast)
                outs.append(y)
                finals.append(fin)
            x = outs[0] if len(outs) == 1 else mx.concatenate(outs, axis=-1)
        if is_lstm:
            return x, (mx.stack([f[0] for f in finals]), mx.stack([f[1] for f in finals]))
        return x, mx.stack(finals)

    def _cells(self, layer):
        return [layer.forward, layer.reverse] if self.bidirectional else [layer.forward]


def _map_state(state, fn):
    if state is None:
        return None
    if isinstance(state, (tuple, list)):
        return tuple(fn(s) for s in state)
    return fn(state)


_OPTION_DEFAULTS = {
    "lstm": {"peephole": False, "clip": None, "input_forget": False, "activations": None},
    "gru": {"linear_before_reset": True, "clip": None, "activations": None},
    "rnn": {"nonlinearity": "tanh", "clip": None, "activations": None},
}


def _normalise_options(cell_type: str, options: dict) -> dict:
    defaults = _OPTION_DEFAULTS[cell_type]
    unknown = set(options) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown {cell_type.upper()} option(s): {', '.join(sorted(unknown))}")
    out = {**defaults, **options}
    if out["clip"] is not None:
        out["clip"] = float(out["clip"])
        if out["clip"] <= 0:
            raise ConfigError(f"clip must be positive, got {out['clip']}")
    if cell_type == "rnn" and out["nonlinearity"] not in ("tanh", "relu"):
        raise ConfigError(f"nonlinearity must be 'tanh' or 'relu', got {out['nonlinearity']!r}")
    if out["activations"] is not None:
        want = {"lstm": 3, "gru": 2, "rnn": 1}[cell_type]
        acts = [A.spec(*a) if isinstance(a, (list, tuple)) else A.spec(a)
                for a in out["activations"]]
        if len(acts) != want:
            raise ConfigError(f"{cell_type.upper()} takes {want} activations, got {len(acts)}")
        out["activations"] = [list(a) for a in acts]
    return out


def _run_options(cell_type: str, options: dict) -> dict:
    """Translate stored options into keyword arguments of the functional core."""
    run = {"clip": options["clip"]}
    acts = options["activations"]
    if cell_type == "lstm":
        run["input_forget"] = options["input_forget"]
        run["peephole"] = options["peephole"]
    elif cell_type == "gru":
        run["linear_before_reset"] = options["linear_before_reset"]
    elif acts is None:
        acts = [[options["nonlinearity"], None, None]]
    if acts is not None:
        run["activations"] = tuple(tuple(a) for a in acts)
    return run


class LSTM(Recurrent):
    """Stacked, optionally bidirectional LSTM (gate order ``i, f, g, o``).

    Extra options: ``peephole`` (bool), ``clip`` (gate pre-activation clip),
    ``input_forget`` (coupled gates), ``activations`` (three ONNX names).

    Example:
        >>> lstm = edgelstm.LSTM(40, 128, num_layers=2)
        >>> y, (h, c) = lstm(mx.zeros((8, 100, 40)))   # y: (8, 100, 128)
    """

    cell_type = "lstm"


class GRU(Recurrent):
    """Stacked, optionally bidirectional GRU (gate order ``r, z, n``).

    Extra options: ``linear_before_reset`` (``True``: PyTorch/MLX form,
    ``False``: ONNX default), ``clip``, ``activations`` (two names).
    """

    cell_type = "gru"


class RNN(Recurrent):
    """Stacked, optionally bidirectional Elman RNN.

    Extra options: ``nonlinearity`` (``"tanh"`` or ``"relu"``), ``clip``.
    """

    cell_type = "rnn"


RECURRENT = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
