"""Quantized MLX cells and the model-level entry points.

A quantized cell keeps its gate weights as integers in memory and in the
checkpoint, under the float cell's parameter names:

- int8 (symmetric, per output row): ``Wx`` int8 ``(G*H, I)`` plus
  ``Wx_scales`` float32 ``(G*H,)``; the same for ``Wh`` (RNN: ``Wxh``/``Whh``).
- 4-bit (affine, group-wise, experimental): ``Wx`` packed uint32 as written
  by ``mx.quantize`` plus ``Wx_scales`` and ``Wx_biases`` ``(G*H, I/group)``.

Biases, peepholes and states stay float. Compute: int8 cells hand their
integer weights and scales straight to the fused C++ kernel when it can run
the call (CPU, default activations, no clip/peephole; see
:mod:`edgelstm.fast.dispatch`): an int8 matvec per step at batch 1, no float copy.
Otherwise (4-bit, GPU, ``fast=False``, unsupported options) each call expands
the integer weights once (``q * s``, one fused op per matrix) and runs the
float core of :mod:`edgelstm.nn.recurrent`, so lengths, reverse and peepholes
apply unchanged. ``x @ (q*s).T == (x @ q.T) * s``; the
expansion is the cheaper side once ``B*T`` exceeds the input width. On MLX's
CPU backend this beats ``mx.quantized_matmul``, which measured 2.7x slower
per step and 14x slower for the input projection than OpenBLAS (see README).

``nn.quantize`` works through the cells' ``to_quantized``; use
:func:`quantize_mlx` to also record the ``quantization`` section that
``save``/``load`` need.
"""

from __future__ import annotations

import dataclasses
import functools

import mlx.core as mx
import mlx.nn as nn

from edgelstm.errors import UnsupportedError
from edgelstm.fast import dispatch as _kernels
from edgelstm.nn.layers import GRUCell, LSTMCell, RNNCell
from edgelstm.quantize.config import GROUP_SIZES, Mode, QuantConfig, Target

QMAX = 127  # symmetric int8 uses [-127, 127] (ONNX/ORT convention)

#: Float cell class -> (input weight name, recurrent weight name).
WEIGHT_NAMES = {LSTMCell: ("Wx", "Wh"), GRUCell: ("Wx", "Wh"), RNNCell: ("Wxh", "Whh")}


def quantize_rows(w: mx.array) -> tuple[mx.array, mx.array]:
    """Symmetric per-row int8: ``w (R, C)`` -> ``q`` int8 ``(R, C)``, scales ``(R,)``.

    An all-zero row gets scale 1 (its ``q`` is 0), so nothing divides by zero.
    """
    w = w.astype(mx.float32)
    amax = mx.max(mx.abs(w), axis=1)
    scales = mx.where(amax > 0, amax / QMAX, 1.0)
    if bool(mx.all((scales >= F16_MIN_NORMAL) & (scales <= F16_MAX))):
        # Scales on the float16 grid (rel. step 2^-11, far below int8's 2^-8) halve
        # their storage; q is computed from the rounded scales, so nothing else moves.
        scales = scales.astype(mx.float16).astype(mx.float32)
    q = mx.clip(mx.round(w / scales[:, None]), -QMAX, QMAX).astype(mx.int8)
    return q, scales


F16_MIN_NORMAL, F16_MAX = 6.104e-05, 65504.0


def storage_weights(weights: dict) -> dict:
    """Checkpoint form of a quantized model's tensors: float16 where that is lossless.

    Per-row int8 scales on the float16 grid (see :func:`quantize_rows`) are
    stored as float16; loading casts them back to float32.
    """
    out = dict(weights)
    for name, value in weights.items():
        if name.endswith("_scales") and value.dtype == mx.float32:
            half = value.astype(mx.float16)
            if bool(mx.array_equal(half.astype(mx.float32), value)):
                out[name] = half
    return out


@mx.compile
def _expand_int8(q, scales):
    return q.astype(mx.float32) * scales[:, None]


def dequantize_rows(q: mx.array, scales: mx.array) -> mx.array:
    """Inverse of :func:`quantize_rows`: ``q * s`` as float32 ``(R, C)``."""
    return _expand_int8(q, scales)


def pick_group_size(widths, requested: int | None = None) -> int:
    """The largest MLX group size (128/64/32) dividing every width, or ``requested``.

    Raises:
        UnsupportedError: when no group size divides all widths.
    """
    options = (requested,) if requested else GROUP_SIZES
    for g in options:
        if all(w % g == 0 for w in widths):
            return g
    raise UnsupportedError(
        f"group-wise quantization needs every input width ({', '.join(map(str, sorted(set(widths))))}) "
        f"divisible by the group size ({' or '.join(map(str, options))}); "
        "use 8 bits (per-channel, any width) instead")


class _QuantizedCellMixin:
    """Integer storage and on-call expansion for a float cell subclass.

    Subclasses set ``_float_cls``; the weight names come from
    :data:`WEIGHT_NAMES`. Properties named like the float parameters return
    the expanded float weight, so the float cell's ``__call__`` runs as is.
    """

    _float_cls: type

    def _init_quantized(self, cell: nn.Module, config: QuantConfig, group_size: int | None):
        nn.Module.__init__(self)
        names = [n for n, t in zip(WEIGHT_NAMES[self._float_cls], (Target.WX, Target.WH), strict=True)
                 if t in config.targets]
        for key, value in cell.items():
            if key not in names:
                self[key] = value  # biases, peepholes, _opts stay as they are
        self._qspec = {"names": names, "bits": config.bits, "mode": config.mode.value,
                       "group_size": group_size}
        for name in names:
            w = cell[name]
            if config.mode is Mode.SYMMETRIC:
                self[name], self[name + "_scales"] = quantize_rows(w)
            else:
                self[name], self[name + "_scales"], self[name + "_biases"] = mx.quantize(
                    w, group_size=group_size, bits=config.bits)

    def dense(self, name: str) -> mx.array:
        """The float weight ``name`` expanded from its integers (a transient)."""
        spec = self["_qspec"]
        if name not in spec["names"]:
            return self[name]
        if spec["mode"] == Mode.SYMMETRIC.value:
            return _expand_int8(self[name], self[name + "_scales"])
        return mx.dequantize(self[name], self[name + "_scales"], self[name + "_biases"],
                             group_size=spec["group_size"], bits=spec["bits"])

    def _kernel_weights(self, fast) -> list | None:
        """``[Wx, Wx_scales, Wh, Wh_scales]`` as stored, for the fused kernel.

        A weight left float has scales ``None``. Returns ``None`` (use the
        expanding path) for 4-bit cells, ``fast=False`` or no kernel.
        """
        spec = self["_qspec"]
        if fast is False or spec["mode"] != Mode.SYMMETRIC.value or not _kernels.available():
            return None
        out = []
        for name in WEIGHT_NAMES[self._float_cls]:
            out += [self[name], self[name + "_scales"] if name in spec["names"] else None]
        return out

    def logical_parameter_count(self) -> int:
        """Weights as the float model counts them (scales and offsets excluded)."""
        spec = self["_qspec"]
        n = 0
        for key, value in self.items():
            if not isinstance(value, mx.array) or key.endswith(("_scales", "_biases")):
                continue
            packed = key in spec["names"] and value.dtype == mx.uint32
            n += value.size * 32 // spec["bits"] if packed else value.size
        return n

    def __call__(self, x, state=None, lengths=None, reverse=False, fast=None):
        """As the float cell's ``__call__``; int8 weights go to the fused kernel as stored."""
        args = self.kernel_args(fast)
        if args is not None:
            h0, c0 = state if self.kind == "lstm" and state is not None else (state, None)
            fused = _kernels.fused_cell(self.kind, x, args, h0, c0, lengths, reverse, fast)
            if fused is not None:
                return fused
        return self._float_cls.__call__(self, x, state, lengths, reverse, fast)

    def to_quantized(self, *args, **kwargs):
        raise UnsupportedError(f"{type(self).__name__} is already quantized")

    def _extra_repr(self):
        spec = self["_qspec"]
        g = f", group_size={spec['group_size']}" if spec["group_size"] else ""
        return f"bits={spec['bits']}, mode={spec['mode']}{g}, weights={','.join(spec['names'])}"


def _dense_property(name: str):
    return property(lambda self: self.dense(name))


class QuantizedLSTMCell(_QuantizedCellMixin, LSTMCell):
    """An :class:`edgelstm.nn.layers.LSTMCell` with integer ``Wx``/``Wh``."""

    _float_cls = LSTMCell
    Wx = _dense_property("Wx")
    Wh = _dense_property("Wh")

    def __init__(self, cell: LSTMCell, config: QuantConfig, group_size: int | None = None):
        self._init_quantized(cell, config, group_size)



class QuantizedGRUCell(_QuantizedCellMixin, GRUCell):
    """An :class:`edgelstm.nn.layers.GRUCell` with integer ``Wx``/``Wh``."""

    _float_cls = GRUCell
    Wx = _dense_property("Wx")
    Wh = _dense_property("Wh")

    def __init__(self, cell: GRUCell, config: QuantConfig, group_size: int | None = None):
        self._init_quantized(cell, config, group_size)



class QuantizedRNNCell(_QuantizedCellMixin, RNNCell):
    """An :class:`edgelstm.nn.layers.RNNCell` with integer ``Wxh``/``Whh``."""

    _float_cls = RNNCell
    Wxh = _dense_property("Wxh")
    Whh = _dense_property("Whh")

    def __init__(self, cell: RNNCell, config: QuantConfig, group_size: int | None = None):
        self._init_quantized(cell, config, group_size)



QUANTIZED = {LSTMCell: QuantizedLSTMCell, GRUCell: QuantizedGRUCell, RNNCell: QuantizedRNNCell}
FLOAT_CELLS = tuple(QUANTIZED)


def _cell_widths(cell: nn.Module, config: QuantConfig) -> list[int]:
    names = WEIGHT_NAMES[type(cell)]
    return [cell[n].shape[-1] for n, t in zip(names, (Target.WX, Target.WH), strict=True)
            if t in config.targets]


def quantize_cell(cell: nn.Module, group_size=None, bits=None, mode="affine", *,
                  config: QuantConfig | None = None) -> nn.Module:
    """``to_quantized`` of the float cells (MLX's ``nn.quantize`` protocol).

    ``bits=None`` means 8: symmetric per-row int8, for which ``group_size``
    and ``mode="affine"`` (what ``nn.quantize`` passes by default) are not
    used. ``bits=4`` is MLX's affine group-wise form. Other modes
    (``mxfp4``, ``nvfp4``, ...) are refused.
    """
    if type(cell) not in QUANTIZED:
        raise UnsupportedError(f"cannot quantize a {type(cell).__name__}")
    if config is None:
        if mode != "affine":
            raise UnsupportedError(f"quantization mode {mode!r} is not supported for recurrent "
                                   "cells; valid: 'affine' (4-bit) or the default int8")
        bits = 8 if bits is None else bits
        config = QuantConfig(bits=bits, group_size=group_size if bits != 8 else None)
    if config.mode is Mode.AFFINE:
        group_size = pick_group_size(_cell_widths(cell, config), group_size or config.group_size)
    else:
        group_size = None
    return QUANTIZED[type(cell)](cell, config, group_size)


def _recurrent(model: nn.Module):
    return getattr(model, "rnn", model)


def resolve(model: nn.Module, config: QuantConfig) -> QuantConfig:
    """Fix the group size for a whole model (one size for all cells), checking widths."""
    if config.mode is not Mode.AFFINE:
        return config
    widths = []
    for _, m in model.named_modules():
        if type(m) in QUANTIZED:
            widths += _cell_widths(m, config)
    return dataclasses.replace(config, group_size=pick_group_size(widths, config.group_size))


def quantize_mlx(model: nn.Module, config: QuantConfig | None = None) -> nn.Module:
    """Quantize an edgelstm model's gate weights in place (and its head if asked).

    Args:
        model: ``edgelstm.LSTM``/``GRU``/``RNN`` or ``SequenceModel`` (float).
        config: :class:`QuantConfig`; default int8 ``Wx``/``Wh``.

    Returns:
        ``model`` in eval mode, with quantized cells, ``model.quantization``
        (the ``config.json`` section) and ``model.logical_parameter_count()``.
    """
    config = config or QuantConfig()
    if getattr(model, "quantization", None):
        raise UnsupportedError("model is already quantized")
    config = resolve(model, config)
    nn.quantize(model, class_predicate=lambda _, m: (
        {"config": config, "group_size": config.group_size} if type(m) in QUANTIZED else False))
    if Target.HEAD in config.targets:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise UnsupportedError("targets include 'head' but the model has no linear head")
        g = pick_group_size([head.weight.shape[-1]], None)
        model.head = head.to_quantized(group_size=g, bits=config.bits, mode="affine")
    model.quantization = config.to_dict()
    model.eval()  # integer weights have no gradient; new cells must not stay in training mode
    # describe() counts weights through this; the model classes stay quantization-agnostic.
    object.__setattr__(model, "logical_parameter_count",
                       functools.partial(logical_parameter_count, model))
    return model


def apply_quantization(model: nn.Module, section: dict) -> nn.Module:
    """Give a freshly built model the quantized structure described by ``section``.

    Called by ``edgelstm.io.checkpoint.build`` before strict weight loading, so
    the checkpoint's integer tensors find matching names, shapes and dtypes.
    """
    return quantize_mlx(model, QuantConfig.from_dict(section))


def logical_parameter_count(model: nn.Module) -> int:
    """Parameters as the float model counts them (scales/offsets excluded)."""
    from mlx.utils import tree_flatten

    n = 0
    skip = set()
    for path, m in model.named_modules():
        if isinstance(m, _QuantizedCellMixin):
            n += m.logical_parameter_count()
            skip.add(path)
        elif isinstance(m, nn.QuantizedLinear):
            n += m.weight.size * 32 // m.bits + (m["bias"].size if "bias" in m else 0)
            skip.add(path)
    for name, value in tree_flatten(model.parameters()):
        if not any(name.startswith(p + ".") for p in skip):
            n += value.size
    return n


def is_quantized(model: nn.Module) -> bool:
    """True when any cell of ``model`` holds integer weights."""
    return any(isinstance(m, _QuantizedCellMixin) for _, m in model.named_modules())
