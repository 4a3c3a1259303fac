"""Converters: ONNX export and import, PyTorch/Keras/mlx.nn weight import, gate tables.

Everything here is imported lazily (onnx, onnxruntime, torch, h5py only when
a function needs them), so ``import edgelstm.converters`` is cheap.

>>> from edgelstm.converters import to_onnx, from_onnx, convert
>>> to_onnx(model, "model.onnx")                      # native -> ONNX
>>> model = from_onnx("model.onnx")                   # ONNX -> native
>>> report = convert("ckpt", "model.onnx", verify=True)

Gate orders of every framework live in :mod:`edgelstm.converters.gates`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from edgelstm.errors import ConversionError, DataError, UnsupportedError

__all__ = [
    "DEFAULT_ATOL",
    "convert",
    "from_onnx",
    "import_model",
    "onnx_io_names",
    "run_onnx",
    "to_onnx",
]

#: Default ``--verify`` tolerance (max abs difference, float32 outputs).
DEFAULT_ATOL = 1e-4

IMPORT_FORMATS = ("onnx", "torch", "safetensors", "keras")


def to_onnx(model, path, opset: int = 17, streaming: bool = False, force: bool = False,
            lengths: bool = False) -> Path:
    """Export an edgelstm model to ONNX; see :func:`edgelstm.converters.onnx_export.to_onnx`."""
    from edgelstm.converters.onnx_export import to_onnx as _to_onnx

    return _to_onnx(model, path, opset=opset, streaming=streaming, force=force, lengths=lengths)


def from_onnx(path, **options):
    """Import an ONNX recurrent stack (+ simple head) as a native model.

    See :func:`edgelstm.converters.onnx_import.from_onnx`.
    """
    from edgelstm.converters.onnx_import import from_onnx as _from_onnx

    return _from_onnx(path, **options)


def convert(src, dst, opset: int = 17, streaming: bool = False, verify: bool = False,
            force: bool = False, atol: float = DEFAULT_ATOL, lengths: bool = False,
            verify_on=("onnxruntime",), **options) -> dict:
    """Convert ``src`` (any format) to ``dst`` (``.onnx``, ``.tflite`` or checkpoint directory).

    See :func:`edgelstm.converters.conversion.convert`.
    """
    from edgelstm.converters.conversion import convert as _convert

    return _convert(src, dst, opset=opset, streaming=streaming, verify=verify, force=force,
                    atol=atol, lengths=lengths, verify_on=verify_on, **options)


def import_model(path: str | os.PathLike, fmt: str, **options):
    """Import a non-native model file as an edgelstm module in eval mode.

    Args:
        path: the file.
        fmt: ``"onnx"``, ``"torch"`` (``.pt``/``.pth``/``.bin`` state dict),
            ``"safetensors"`` (PyTorch or mlx.nn names, told apart by key) or
            ``"keras"`` (``.keras``/``.h5``).
        options: importer options, e.g. ``head="frame"``, ``cell="gru"``.

    Returns:
        ``edgelstm.LSTM``/``GRU``/``RNN`` or ``SequenceModel``.
    """
    if fmt == "onnx":
        extra = sorted(set(options) - {"check", "atol"})
        if extra:
            raise ConversionError(f"option {extra[0]!r} applies to weight files, not to ONNX "
                                  "(the graph defines the model)")
        return from_onnx(path, **options)
    if fmt in ("torch", "safetensors"):
        from edgelstm.converters import mlx_import, torch_import

        weights = torch_import.read_weights(path)
        if fmt == "safetensors" and mlx_import.is_mlx_weights(weights):
            return mlx_import.from_mlx_weights(weights, source=str(path), **options)
        return torch_import.from_state_dict(weights, source=str(path), **options)
    if fmt == "npz":
        from edgelstm.converters import mlx_import

        return mlx_import.from_mlx_file(path, **options)
    if fmt == "keras":
        from edgelstm.converters.keras_import import from_keras

        return from_keras(path, **options)
    raise ConversionError(f"cannot import format {fmt!r}; expected one of "
                          f"{', '.join(IMPORT_FORMATS)}")


def _load_onnx(path):
    import onnx

    if isinstance(path, onnx.ModelProto):
        return path
    if not Path(path).is_file():
        raise DataError(f"{path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf raises assorted types on a bad file
        raise ConversionError(f"{path} is not a readable ONNX model: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                              ) from None
    if not model.graph.node and not model.graph.output:  # e.g. a 0-byte file parses as empty
        raise ConversionError(f"{path} is not an ONNX model: it holds no graph")
    return model


def onnx_io_names(path) -> tuple[list[str], list[str]]:
    """Graph input names (initializers excluded) and output names of an ONNX model."""
    model = _load_onnx(path)
    inits = {t.name for t in model.graph.initializer}
    return ([i.name for i in model.graph.input if i.name not in inits],
            [o.name for o in model.graph.output])


def run_onnx(path, feeds: dict, backend: str = "onnxruntime") -> dict[str, np.ndarray]:
    """Run an ONNX model on numpy feeds.

    Args:
        path: ``.onnx`` file (or an ``onnx.ModelProto``).
        feeds: ``{input name: array}``.
        backend: ``"onnxruntime"`` (CPU provider), ``"openvino"`` (CPU plugin,
            float32; the optional extra ``openvino``) or ``"mlx"`` (edgelstm's
            MLX executor of ONNX graphs).

    Returns:
        ``{output name: array}`` for every graph output, in graph order.

    Raises:
        DataError: missing, unknown or mis-shaped inputs.
        NonFiniteError: NaN/Inf in a float input (the policy of ``run_model`` and the CLI).
        LimitError: an input larger than :data:`~edgelstm.limits.MAX_ELEMENTS`.
        ConversionError / UnsupportedError: unreadable or unsupported model.
    """
    # deferred: the one input policy run_model and the CLI apply (runtime sits above us)
    from edgelstm.runtime.inference import check_feeds

    if backend not in ("mlx", "openvino", "onnxruntime"):
        raise UnsupportedError(f"unknown backend {backend!r}; choose mlx, onnxruntime or "
                               "openvino")
    model = _load_onnx(path)  # read once for the check and the backend
    inputs = _proto_inputs(model)
    first = next((n for n, (_, _, required) in inputs.items() if required), None)
    check_feeds(feeds, first, batch_first=None)
    if backend == "mlx":
        from edgelstm.converters.onnx_exec.runner import run_onnx as _run_mlx

        return _run_mlx(model, _check_feeds(inputs, feeds))
    if backend == "openvino":
        from edgelstm.converters.openvino_run import run_openvino

        return run_openvino(model, _check_feeds(inputs, feeds))
    return _run_ort(path, feeds, model)


def ort_session(path, model=None):
    """An onnxruntime ``InferenceSession`` on the CPU provider, errors made one-line.

    ``model``: the already loaded ``ModelProto`` of ``path`` (saves a second read).
    """
    import onnxruntime as ort

    model = _load_onnx(path) if model is None else model
    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # run failures come back as one DataError line, no log
    try:
        return ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        raise UnsupportedError(f"onnxruntime cannot load {_label(path)}: {_ort_message(exc)}"
                               ) from None


def _run_ort(path, feeds: dict, model=None) -> dict[str, np.ndarray]:
    sess = ort_session(path, model)
    inputs = {i.name: (_ORT_TYPES.get(i.type), i.shape, True) for i in sess.get_inputs()}
    arrays = _check_feeds(inputs, feeds)
    try:
        values = sess.run(None, arrays)
    except Exception as exc:  # ORT's RuntimeException / InvalidArgument
        raise DataError(f"onnxruntime failed on {_label(path)}: {_ort_message(exc)}") from None
    return {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), values, strict=True)}


def _proto_inputs(model) -> dict:
    """Graph inputs as ``name -> (numpy dtype, shape, required)``; initializers are optional."""
    from onnx import helper

    inits = {i.name for i in model.graph.initializer}
    out = {}
    for vi in model.graph.input:
        t = vi.type.tensor_type
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type) if t.elem_type else None
        shape = ([d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                  for d in t.shape.dim] if t.HasField("shape") else None)
        out[vi.name] = (dtype, shape, vi.name not in inits)
    return out


def _check_feeds(inputs: dict, feeds: dict) -> dict[str, np.ndarray]:
    """Check feeds against ``name -> (dtype, shape, required)``; cast numeric dtypes.

    Raises:
        DataError: unknown or missing input, unusable dtype, wrong rank or fixed dim.
    """
    unknown = sorted(set(feeds) - set(inputs))
    if unknown:
        raise DataError(f"unknown input {unknown[0]!r}; the model takes "
                        f"{', '.join(inputs)}")
    missing = [n for n, (_, _, required) in inputs.items() if required and n not in feeds]
    if missing:
        raise DataError(f"missing input {missing[0]!r}")
    arrays = {}
    for name, value in feeds.items():
        arr = np.asarray(value)
        want, shape, _ = inputs[name]
        if want is not None and arr.dtype != want:
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise DataError(f"input {name!r}: cannot use dtype {arr.dtype}")
            arr = arr.astype(want)
        if shape is not None and len(shape) != arr.ndim:
            raise DataError(f"input {name!r} must have {len(shape)} dims "
                            f"{_fmt_shape(shape)}, got shape {arr.shape}")
        for want_dim, got in zip(shape or [], arr.shape, strict=False):
            if isinstance(want_dim, int) and want_dim != got:
                raise DataError(f"input {name!r} must have shape {_fmt_shape(shape)}, "
                                f"got {arr.shape}")
        arrays[name] = arr
    return arrays


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
}


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


def _label(path) -> str:
    return str(path) if isinstance(path, (str, os.PathLike)) else "the model"


def _ort_message(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # ORT prefixes "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : "; keep the reason
    if "] : " in text:
        text = text.split(" : ")[-1]
    # and drop a leading "/onnxruntime_src/<file>:<line> <C++ signature>(...)"
    text = re.sub(r"^/onnxruntime_src/\S+\s+\S+?\(.*?\)\s+", "", text)
    return text[:300]
