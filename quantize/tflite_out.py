"""``quantize MODEL out.tflite``: int8 gate weights in a LiteRT flatbuffer, checked on LiteRT.

The MLX int8 model (symmetric per-row int8, :func:`quantize_mlx`) is
exported by :mod:`edgelstm.converters.tflite_export`: int8 weight tensors
with TFLite per-channel quantization parameters, dequantized in the graph.
The written file runs on the LiteRT interpreter inside the atomic output and
must agree with the MLX int8 model within :func:`tolerance`; otherwise
nothing is written.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgelstm.errors import ConversionError
from edgelstm.quantize.config import Format, QuantConfig
from edgelstm.quantize.report import (
    QuantReport,
    accuracy,
    output_error,
    random_input,
    size_on_disk,
)

#: LiteRT int8 export vs the MLX int8 model (both float32 compute on the same weights).
TFLITE_ATOL = 1e-4
#: The hybrid form also quantizes activations (per batch row, asymmetric) and, in the
#: sequence LSTM/RNN ops, re-quantizes weights per tensor, so its error is of the order
#: of weight quantization itself: the bound is ``HYBRID_RTOL * max(1, max |int8 out|)``
#: plus twice the MLX int8 model's own error against the float model. Measured on the
#: shipped models (random input, batch 1): 1.5e-3..5.5e-2 against int8-vs-float errors
#: of 1.9e-3..3.1e-2.
HYBRID_RTOL = 2e-2


def tolerance(int8: str, q_ref: np.ndarray, float_ref: np.ndarray) -> float:
    """The allowed max abs difference of a LiteRT int8 form from the MLX int8 model."""
    if int8 != "hybrid" or not q_ref.size:
        return TFLITE_ATOL
    scale = max(1.0, float(np.max(np.abs(q_ref))))
    return HYBRID_RTOL * scale + 2 * float(np.max(np.abs(q_ref - float_ref)))


def tflite_predict(path, batch_first: bool = True):
    """``predict(x, lengths)`` of a batch-1 ``.tflite`` file, one sequence at a time.

    With ``lengths`` each sequence runs on its valid steps only; per-step
    outputs past a length are zeros.
    """
    from edgelstm.converters.litert_run import run_tflite

    axis = 0 if batch_first else 1

    def predict(x, lengths=None):
        outs = []
        for b in range(x.shape[axis]):
            seq = np.take(x, [b], axis=axis)
            steps = x.shape[1 - axis] if lengths is None else int(lengths[b])
            out = run_tflite(path, seq[:, :steps] if batch_first else seq[:steps])
            if out.ndim == 3 and steps < x.shape[1 - axis]:
                pad = [(0, 0)] * 3
                pad[1 - axis] = (0, x.shape[1 - axis] - steps)
                out = np.pad(out, pad)
            outs.append(out)
        return np.concatenate(outs, axis=axis if outs[0].ndim == 3 else 0)

    return predict


def to_tflite_int8(src, dst, config: QuantConfig, data, force: bool, seed: int,
                   float_model, int8: str = "dequantize") -> QuantReport:
    """Quantize ``float_model`` (loaded from ``src``) and write the int8 ``.tflite``.

    ``int8``: ``"dequantize"`` or ``"hybrid"`` (see
    :func:`edgelstm.converters.tflite_export.build_tflite`).
    """
    from edgelstm.converters import litert_run
    from edgelstm.converters.tflite_export import build_tflite, check_exportable
    from edgelstm.io.checkpoint import load
    from edgelstm.io.fileio import atomic_output
    from edgelstm.quantize.api import mlx_predict
    from edgelstm.quantize.mlx_quant import quantize_mlx

    check_exportable(float_model)
    litert_run._interpreter_class()  # missing LiteRT is reported before anything is written
    qmodel = quantize_mlx(load(src), config)
    batch_first = float_model.rnn.batch_first if hasattr(float_model, "rnn") \
        else float_model.batch_first
    x = random_input(float_model.input_size, seed=seed)
    ref = mlx_predict(float_model)(x)
    q_ref = mlx_predict(qmodel)(x)
    acc_before = accuracy(mlx_predict(float_model), data) if data is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        float_file = Path(tmp) / "float.tflite"
        float_file.write_bytes(build_tflite(float_model))
        before = size_on_disk(float_file)
    with atomic_output(dst, force=force) as out:
        Path(out).write_bytes(build_tflite(qmodel, int8=int8))
        # score the written file inside the atomic output: a failure leaves no dst
        predict = tflite_predict(out, batch_first)
        got = predict(x)
        vs_mlx = float(np.max(np.abs(got - q_ref)))
        tol = tolerance(int8, q_ref, ref)
        if not vs_mlx <= tol:
            raise ConversionError(f"verification failed: LiteRT ({int8}) differs from the MLX "
                                  f"int8 model by {vs_mlx:.3g} (tolerance {tol:.3g}); {dst} was "
                                  "not written")
        max_abs, cos = output_error(ref, got)
        acc_after = accuracy(predict, data) if data is not None else None
    return QuantReport(
        src=str(src), dst=str(dst), format=Format.TFLITE.value, scheme=config.label,
        bytes_before=before, bytes_after=size_on_disk(dst), max_abs_error=max_abs, cosine=cos,
        input_shape=x.shape, backend="litert", accuracy_before=acc_before,
        accuracy_after=acc_after,
        notes=[f"LiteRT {litert_run.version()} ({int8} int8 weights) vs the MLX int8 model: "
               f"max abs diff {vs_mlx:.3g} (tolerance {tol:.3g})"])
