"""Typed quantization settings: :class:`QuantConfig` and its closed choices.

Two schemes are supported, each a (bits, mode, granularity) triple:

- **int8** (default, every format): symmetric, one float32 scale per output
  row (per gate unit), ``w ~= s * q`` with ``q`` in ``[-127, 127]``; scales are
  rounded to the float16 grid (when in its normal range) and stored as float16.
- **4-bit** (experimental, MLX only): MLX's affine group-wise form
  (``mx.quantize``), a scale and an offset per ``group_size`` inputs.

Anything else is refused with :class:`edgelstm.errors.UnsupportedError`
naming the valid choices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from edgelstm.errors import UnsupportedError

#: Version of the ``quantization`` section written into ``config.json``.
SECTION_VERSION = 1


class _Choice(str, Enum):
    @classmethod
    def parse(cls, value) -> _Choice:
        """Accept a member or its string value; raise listing the valid set otherwise."""
        try:
            return cls(value.value if isinstance(value, Enum) else value)
        except ValueError:
            valid = ", ".join(repr(m.value) for m in cls)
            raise UnsupportedError(f"invalid {cls.__name__} {value!r}; valid: {valid}") from None

    def __str__(self) -> str:
        return self.value


class Mode(_Choice):
    """How integers map to floats."""

    SYMMETRIC = "symmetric"  # w = s * q, zero point 0
    AFFINE = "affine"  # w = s * q + b (MLX mx.quantize)


class Granularity(_Choice):
    """Which weights share one scale."""

    PER_CHANNEL = "per_channel"  # one scale per output row
    GROUP = "group"  # one scale (and offset) per group_size inputs of a row


class Format(_Choice):
    """Where the quantized model goes."""

    MLX = "mlx"  # native checkpoint directory
    ONNX_QDQ = "onnx-qdq"  # portable: int8 initializers + DequantizeLinear
    ONNX_ORT = "onnx-ort"  # com.microsoft.DynamicQuantizeLSTM (ONNX Runtime only)
    TFLITE = "tflite"  # LiteRT flatbuffer: int8 tensors, per-channel quantization parameters


class Target(_Choice):
    """Tensors that may be quantized."""

    WX = "Wx"  # input weights of every layer/direction (RNN: Wxh)
    WH = "Wh"  # recurrent weights (RNN: Whh)
    HEAD = "head"  # the linear head's weight (MLX: QuantizedLinear, affine); ONNX: MatMul/Gemm
    CONV = "conv"  # ONNX Conv/ConvTranspose weights (ONNX formats only)


#: ``--weights`` choices: recurrent weights only, or every weight matrix and kernel.
WEIGHT_SETS = {"recurrent": (Target.WX, Target.WH),
               "all": (Target.WX, Target.WH, Target.HEAD, Target.CONV)}

SUPPORTED_BITS = {8: "int8, every format", 4: "experimental, mlx format only"}
GROUP_SIZES = (128, 64, 32)  # what mx.quantize accepts


@dataclass(frozen=True)
class QuantConfig:
    """Quantization settings.

    Args:
        bits: 8 (symmetric per-channel int8) or 4 (experimental, affine
            group-wise, MLX only). Default: ``8``.
        mode: :class:`Mode`; ``None`` picks the mode that goes with ``bits``.
        granularity: :class:`Granularity`; ``None`` picks it from ``mode``.
        group_size: inputs per group for affine mode (32/64/128); ``None``
            picks the largest that divides every quantized width.
        targets: which tensors to quantize. Default: ``("Wx", "Wh")``;
            :data:`WEIGHT_SETS` names the two common sets.

    Example:
        >>> QuantConfig()                     # int8, Wx and Wh
        >>> QuantConfig(bits=4, group_size=32)
        >>> QuantConfig(targets=("Wx", "Wh", "head"))
    """

    bits: int = 8
    mode: Mode | None = None
    granularity: Granularity | None = None
    group_size: int | None = None
    targets: tuple[Target, ...] = field(default=(Target.WX, Target.WH))

    def __post_init__(self):
        if self.bits not in SUPPORTED_BITS:
            valid = "; ".join(f"{b} ({why})" for b, why in SUPPORTED_BITS.items())
            raise UnsupportedError(f"unsupported bit width {self.bits!r}; supported: {valid}")
        mode = Mode.parse(self.mode) if self.mode is not None else (
            Mode.SYMMETRIC if self.bits == 8 else Mode.AFFINE)
        gran = Granularity.parse(self.granularity) if self.granularity is not None else (
            Granularity.PER_CHANNEL if mode is Mode.SYMMETRIC else Granularity.GROUP)
        want = (Mode.SYMMETRIC, Granularity.PER_CHANNEL) if self.bits == 8 else (
            Mode.AFFINE, Granularity.GROUP)
        if (mode, gran) != want:
            raise UnsupportedError(
                f"{self.bits}-bit quantization supports mode={want[0]}, granularity={want[1]}; "
                f"got mode={mode}, granularity={gran}")
        if self.group_size is not None and (
                gran is not Granularity.GROUP or self.group_size not in GROUP_SIZES):
            raise UnsupportedError(
                f"group_size {self.group_size!r} needs granularity=group and one of "
                f"{', '.join(map(str, GROUP_SIZES))}")
        targets = tuple(dict.fromkeys(Target.parse(t) for t in self.targets))
        if not targets:
            raise UnsupportedError("targets is empty: name at least one of Wx, Wh, head")
        object.__setattr__(self, "mode", mode)
        object.__setattr__(self, "granularity", gran)
        object.__setattr__(self, "targets", targets)

    def check_format(self, fmt: Format | str) -> Format:
        """Refuse combinations a format cannot hold; return the parsed format."""
        fmt = Format.parse(fmt)
        if Target.CONV in self.targets and fmt is not Format.ONNX_QDQ:
            raise UnsupportedError(f"conv weights are quantized in the onnx-qdq format only, "
                                   f"not {fmt}")
        if fmt is not Format.MLX and self.bits != 8:
            raise UnsupportedError(f"{self.bits}-bit quantization is MLX-only (experimental); "
                                   f"the {fmt} format holds 8-bit weights")
        if fmt is Format.TFLITE and Target.HEAD in self.targets:
            raise UnsupportedError("the tflite format quantizes the gate weights only "
                                   "(Wx, Wh); drop --head")
        return fmt

    @property
    def label(self) -> str:
        """Short description, e.g. ``int8 symmetric per_channel``."""
        g = f" g{self.group_size}" if self.group_size else ""
        return f"{'int8' if self.bits == 8 else f'{self.bits}-bit'} {self.mode} {self.granularity}{g}"

    def to_dict(self) -> dict:
        """The ``quantization`` section of ``config.json``."""
        return {"bits": self.bits, "mode": self.mode.value,
                "granularity": self.granularity.value, "group_size": self.group_size,
                "targets": [t.value for t in self.targets], "version": SECTION_VERSION}

    @classmethod
    def from_dict(cls, section: dict) -> QuantConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused (a newer writer)."""
        if not isinstance(section, dict):
            raise UnsupportedError(f"quantization section must be an object, got {section!r}")
        if section.get("version", SECTION_VERSION) > SECTION_VERSION:
            raise UnsupportedError(f"quantization section version {section['version']} is "
                                   f"newer than this edgelstm reads ({SECTION_VERSION})")
        known = {"bits", "mode", "granularity", "group_size", "targets"}
        unknown = sorted(set(section) - known - {"version"})
        if unknown:
            raise UnsupportedError(f"unknown quantization setting(s): {', '.join(unknown)}")
        kw = {k: section[k] for k in known if k in section}
        if "targets" in kw:
            kw["targets"] = tuple(kw["targets"])
        return cls(**kw)
