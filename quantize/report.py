"""The quantization report: sizes, output error and (optionally) task accuracy.

:func:`edgelstm.quantize.quantize_model` returns a :class:`QuantReport`;
``edgelstm quantize`` always prints :meth:`QuantReport.summary`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError
from edgelstm.frontend.arrays import read_npz

#: ``predict(x (B, T, I), lengths (B,) | None) -> output`` ((B, C) or (B, T, C)).
Predict = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass
class QuantReport:
    """What quantization did to a model.

    Attributes:
        src, dst: input and output paths.
        format: ``mlx``, ``onnx-qdq`` or ``onnx-ort``.
        scheme: e.g. ``int8 symmetric per_channel``.
        bytes_before: size of the float model in the output format.
        bytes_after: size of the quantized output.
        max_abs_error, cosine: first output, float vs quantized, on seeded
            random input whose first array is ``input_shape`` (``(B, T, I)`` for
            edgelstm's own models).
        backend: what ran both models for the comparison.
        bits_per_weight: stored bits per weight (MLX), else ``None``.
        accuracy_before, accuracy_after: on ``eval_data`` (fraction), if given.
        runtimes: runtimes beyond ``backend`` that ran the quantized ONNX file
            (``--verify-on``): ``{name: {"max_abs_diff_vs_onnxruntime", "version",
            "precision", "device"}}``.
        outputs: ONNX output: ``{output: {"max_abs_error", "cosine",
            "<runtime>_max_abs_diff"...}}``, float vs quantized on ONNX Runtime
            and each other runtime vs ONNX Runtime on the quantized file.
        inputs: ONNX output: ``{input: shape}`` of the generated inputs.
        weights: ONNX QDQ output: ``{"quantized": [...], "compacted": [...]}``
            initializer names; every other tensor and node is unchanged.
    """

    src: str
    dst: str
    format: str
    scheme: str
    bytes_before: int
    bytes_after: int
    max_abs_error: float
    cosine: float
    input_shape: tuple[int, ...]
    backend: str
    bits_per_weight: float | None = None
    eval_data: str | None = None
    eval_samples: int | None = None
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    notes: list[str] = field(default_factory=list)
    runtimes: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """``bytes_before / bytes_after``."""
        return self.bytes_before / max(self.bytes_after, 1)

    def to_dict(self) -> dict:
        """JSON-able form, ``ratio`` included."""
        return {**asdict(self), "ratio": round(self.ratio, 3)}

    def summary(self) -> str:
        """Human-readable lines, as ``edgelstm quantize`` prints them."""
        rows = [("output", f"{self.dst} ({self.format}, {self.scheme})"),
                ("size", f"{_kb(self.bytes_before)} -> {_kb(self.bytes_after)} "
                         f"({self.ratio:.2f}x smaller)")]
        if self.bits_per_weight is not None:
            rows.append(("bits/weight", f"{self.bits_per_weight:.2f}"))
        if self.weights.get("quantized"):
            rows.append(("weights", f"{len(self.weights['quantized'])} tensors int8"
                                    + (f", {len(self.weights['compacted'])} biases compacted"
                                       if self.weights.get("compacted") else "")))
        shape = "x".join(map(str, self.input_shape))
        if len(self.outputs) <= 1:
            rows.append(("error", f"max abs {self.max_abs_error:.3g}, cosine {self.cosine:.6f} "
                                  f"(random input {shape}, {self.backend})"))
        else:
            rows.append(("error", f"per output, float vs int8 on {self.backend} (inputs "
                                  + ", ".join(f"{k} {'x'.join(map(str, v)) or 'scalar'}"
                                              for k, v in self.inputs.items()) + ")"))
            rows += [(f"  {k}", f"max abs {o['max_abs_error']:.3g}, cosine {o['cosine']:.6f}"
                      + "".join(f"; {r} vs onnxruntime {o[f'{r}_max_abs_diff']:.3g}"
                                for r in self.runtimes if f"{r}_max_abs_diff" in o))
                     for k, o in self.outputs.items()]
        if self.accuracy_before is not None:
            drop = 100 * (self.accuracy_before - self.accuracy_after)
            rows.append(("accuracy", f"{100 * self.accuracy_before:.2f}% -> "
                                     f"{100 * self.accuracy_after:.2f}% ({drop:+.2f} points "
                                     f"drop, {self.eval_samples} samples of {self.eval_data})"))
        rows += [(name, f"max abs diff {r['max_abs_diff_vs_onnxruntime']:.3g} vs onnxruntime "
                        f"({r['version']}, {r['device']} {r['precision']})")
                 for name, r in self.runtimes.items()]
        rows += [("note", n) for n in self.notes]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _kb(n: int) -> str:
    return f"{n / 1024:.1f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MB"


def size_on_disk(path: str | os.PathLike) -> int:
    """Bytes of a file, or of every file under a directory."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size


def output_error(ref: np.ndarray, out: np.ndarray) -> tuple[float, float]:
    """``(max abs difference, cosine similarity)`` of two arrays, flattened."""
    ref = np.asarray(ref, np.float64).ravel()
    out = np.asarray(out, np.float64).ravel()
    if ref.shape != out.shape:
        raise DataError(f"outputs differ in size: {ref.size} vs {out.size}")
    denom = np.linalg.norm(ref) * np.linalg.norm(out)
    cos = float(ref @ out / denom) if denom > 0 else float(np.array_equal(ref, out))
    return float(np.max(np.abs(ref - out))) if ref.size else 0.0, cos


def random_input(input_size: int, batch: int = 4, steps: int = 50, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal input ``(batch, steps, input_size)``, float32."""
    return np.random.default_rng(seed).standard_normal((batch, steps, input_size)
                                                       ).astype(np.float32)


def load_eval_data(path: str | os.PathLike, model=None) -> dict[str, np.ndarray]:
    """Evaluation data as ``{x (N, T, I), y (N,) or (N, T), lengths (N,)?}``.

    Args:
        path: ``.npz`` with ``x``, ``y`` and optional ``lengths``; or any
            dataset spec :func:`edgelstm.training.data.load_dataset` reads (a UEA
            ``.ts`` file or folder, the FSDD folder), whose test split is used.
        model: the float model; its front end turns audio into features and
            its labels map the data's class names to output indices.
    """
    path = Path(path)
    if path.suffix != ".npz":
        return _dataset_eval_data(path, model)
    data = read_npz(path)
    x, y = data["x"], data["y"]
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"x must be a float array (N, T, I), got {x.dtype} {x.shape}")
    if y.shape not in ((x.shape[0],), x.shape[:2]) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"y must be integer labels (N,) or (N, T) for x {x.shape}, "
                        f"got {y.dtype} {y.shape}")
    out = {"x": x.astype(np.float32), "y": y.astype(np.int64)}
    if "lengths" in data:
        lengths = np.asarray(data["lengths"]).astype(np.int64)
        if lengths.shape != (x.shape[0],) or lengths.min() < 1 or lengths.max() > x.shape[1]:
            raise DataError(f"lengths must be (N,) in [1, {x.shape[1]}], got {lengths.shape}")
        out["lengths"] = lengths
    return out


def _dataset_eval_data(path: Path, model) -> dict[str, np.ndarray]:
    from edgelstm.training.data import load_dataset
    from edgelstm.training.train import class_indices

    features = getattr(model, "features", None)
    data = load_dataset(path, split="test", features=features)
    y = class_indices(model, data) if model is not None and hasattr(model, "labels") else data.y
    out = {"x": data.x, "y": y.astype(np.int64)}
    if data.lengths is not None:
        out["lengths"] = data.lengths.astype(np.int64)
    return out


def accuracy(predict: Predict, data: dict[str, np.ndarray], batch: int = 128) -> float:
    """Fraction of correct argmax predictions of ``predict`` on ``data``.

    Labels ``(N,)`` against per-frame outputs use each sequence's last valid
    frame; labels ``(N, T)`` count only valid frames.
    """
    x, y, lengths = data["x"], data["y"], data.get("lengths")
    correct = total = 0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        lb = None if lengths is None else lengths[i:i + batch]
        out = np.asarray(predict(xb, lb))
        yb = y[i:i + batch]
        steps = np.full(len(xb), x.shape[1]) if lb is None else lb
        if yb.ndim == 1:
            if out.ndim == 3:
                out = out[np.arange(len(xb)), steps - 1]
            correct += int(np.sum(out.argmax(-1) == yb))
            total += len(yb)
        else:
            if out.ndim != 3:
                raise DataError("per-frame labels y (N, T) need a per-frame model output")
            valid = (np.arange(x.shape[1])[None, :] < steps[:, None]) & (yb >= 0)
            correct += int(np.sum((out.argmax(-1) == yb) & valid))
            total += int(valid.sum())
    return correct / max(total, 1)
