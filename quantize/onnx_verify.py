"""Check a quantized ONNX graph: generated inputs, ONNX Runtime and the MLX executor.

``quantize`` compares any graph, not only edgelstm's ``(B, T, I)`` exports:
:func:`graph_feeds` builds one input per graph input from its declared type
and shape (symbolic dims get sizes from ``dims`` or :data:`DEFAULT_DIMS`;
state inputs such as ``h``/``c`` start at zero; other float inputs are
seeded standard normal; integer and bool inputs, e.g. a sample-rate scalar,
take their values from ``consts``). :func:`compare_outputs` gives the error of
every output, and :func:`check_runtime` runs the quantized file on another
runtime, which must agree with ONNX Runtime.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ConfigError, ConversionError, DataError, EdgeLSTMError, UnsupportedError
from edgelstm.limits import check_elements

#: Sizes of symbolic dims by name (case-insensitive substring), else by position.
DEFAULT_DIMS = (("batch", 4), ("time", 50), ("seq", 50))
DEFAULT_FIRST_DIM = 4  # an unnamed leading dim is a batch
DEFAULT_DIM = 64  # long enough for a convolution front end's padding and strides
#: Runtimes beyond ONNX Runtime that ``quantize`` can check the written file on.
CHECK_RUNTIMES = ("mlx", "openvino")


def parse_consts(items) -> dict[str, np.ndarray]:
    """``["sr=16000", "gain=0.5,1"]`` or a dict -> ``{name: array}`` (numbers, comma lists)."""
    if isinstance(items, dict):
        return {k: np.asarray(v) for k, v in items.items()}
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ConfigError(f"{item!r} is not NAME=VALUE")
        try:
            nums = [float(v) for v in value.split(",")]
        except ValueError:
            raise ConfigError(f"{item!r}: the value must be a number or comma-separated "
                              "numbers") from None
        arr = np.array(nums)
        if np.all(arr == np.round(arr)) and "." not in value and "e" not in value.lower():
            arr = arr.astype(np.int64)
        out[name.strip()] = arr if len(nums) > 1 else arr.reshape(())
    return out


def parse_dims(items) -> dict[str, int]:
    """``["samples=288"]`` or a dict -> ``{symbolic dim name: size}``."""
    if isinstance(items, dict):
        return {k: int(v) for k, v in items.items()}
    out = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        if not sep or not value.strip().isdigit() or int(value) < 1:
            raise ConfigError(f"{item!r} is not NAME=SIZE with a positive SIZE")
        out[name.strip()] = int(value)
    return out


def _dim_size(d, axis: int, dims: dict[str, int]) -> int:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    name = d.dim_param
    if name in dims:
        return dims[name]
    low = name.lower()
    for key, size in DEFAULT_DIMS:
        if key in low:
            return size
    return DEFAULT_FIRST_DIM if axis == 0 and not name else DEFAULT_DIM


def graph_feeds(model, consts: dict | None = None, dims: dict | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """One generated array per graph input of ``model`` (see the module docstring).

    Args:
        model: ``onnx.ModelProto``.
        consts: ``{input name: value}``, e.g. ``{"sr": 16000}`` or a whole array
            (whose shape then sizes the symbolic dims it has); cast to the
            declared type.
        dims: ``{symbolic dim name: size}``.
        seed: seed of the float inputs.

    Raises:
        ConfigError: a name in ``consts`` that is not an input, or a value whose
        size does not fit; UnsupportedError: an integer/bool input without a
        value, or a non-tensor input.
    """
    from onnx import helper

    from edgelstm.converters.state_names import state_pairs

    consts, dims = dict(consts or {}), dict(dims or {})
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    names = [i.name for i in inputs]
    unknown = sorted(set(consts) - set(names))
    if unknown:
        raise ConfigError(f"{unknown[0]!r} (--const/--feeds) is not an input of the graph "
                          f"(inputs: {', '.join(names)})")
    for vi in inputs:  # whole arrays given (--feeds) size the symbolic dims they carry
        value = np.asarray(consts.get(vi.name, ()))
        d = vi.type.tensor_type.shape.dim
        if value.size > 1 and value.ndim == len(d):
            for k, dim in enumerate(d):
                if dim.dim_param and dim.dim_param not in dims:
                    dims[dim.dim_param] = value.shape[k]
    states = {i for i, _ in state_pairs(names, [o.name for o in model.graph.output])}
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in inputs:
        if vi.type.WhichOneof("value") != "tensor_type":
            raise UnsupportedError(f"input {vi.name!r} is not a tensor; quantize generates "
                                   "tensor inputs only")
        t = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        shape = [_dim_size(d, k, dims) for k, d in enumerate(t.shape.dim)]
        check_elements(shape, f"ONNX input {vi.name!r}")
        if vi.name in consts:
            feeds[vi.name] = _const(vi.name, consts[vi.name], dtype, shape, t)
        elif vi.name in states:
            feeds[vi.name] = np.zeros(shape, dtype)
        elif np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        else:
            raise UnsupportedError(f"input {vi.name!r} ({dtype} {_fmt(shape)}) needs a value: "
                                   f"--const {vi.name}=VALUE")
    return feeds


def _const(name, value, dtype, shape, t) -> np.ndarray:
    arr = np.asarray(value).astype(dtype)
    if not t.HasField("shape") or list(arr.shape) == shape:
        return arr
    if arr.size == 1 and np.prod(shape, dtype=np.int64) == 1:
        return arr.reshape(shape)
    if arr.size == 1:
        return np.full(shape, arr.reshape(()), dtype)
    if arr.size != np.prod(shape, dtype=np.int64):
        raise ConfigError(f"--const {name}: {arr.size} values do not fill shape {_fmt(shape)}")
    return arr.reshape(shape)


def _fmt(shape) -> str:
    return "(" + ", ".join(map(str, shape)) + ")" if len(shape) else "scalar"


def compare_outputs(ref: dict, out: dict) -> dict[str, dict]:
    """``{output: {"max_abs_error", "cosine"}}`` of ``out`` against ``ref``, by name."""
    from edgelstm.quantize.report import output_error

    result = {}
    for name, r in ref.items():
        max_abs, cos = output_error(r, out[name])
        result[name] = {"max_abs_error": max_abs, "cosine": cos}
    return result


def check_runtime(name: str, path, feeds: dict, ort_out: dict, dst) -> tuple[dict, dict]:
    """Run the written file on runtime ``name``; every output must agree with ONNX Runtime.

    The tolerance is :data:`edgelstm.converters.DEFAULT_ATOL` times the
    output's magnitude (at least 1).

    Returns:
        ``(entry, diffs)``: ``{"max_abs_diff_vs_onnxruntime", "version",
        "precision", "device"}`` and ``{output: max abs diff}``.

    Raises:
        ConversionError: the runtime cannot run the file or differs above tolerance.
    """
    from edgelstm.converters import DEFAULT_ATOL, run_onnx

    try:
        out = run_onnx(path, feeds, backend=name)
    except EdgeLSTMError as exc:
        raise ConversionError(f"cannot check on {name}: {exc}; {dst} was not written "
                              f"(--verify-on onnxruntime skips the {name} check)") from None
    diffs = {}
    for k, ref in ort_out.items():
        ref64 = np.asarray(ref, np.float64)
        got = np.asarray(out[k], np.float64)
        if got.shape != ref64.shape:
            raise ConversionError(f"{name} gives output {k!r} of shape {got.shape}, onnxruntime "
                                  f"{ref64.shape}; {dst} was not written")
        diff = float(np.max(np.abs(got - ref64))) if ref64.size else 0.0
        tol = DEFAULT_ATOL * max(1.0, float(np.max(np.abs(ref64))) if ref64.size else 1.0)
        if not diff <= tol:
            raise ConversionError(f"{name} differs from onnxruntime by {diff:.3g} on output "
                                  f"{k!r} (tolerance {tol:.3g}) on the quantized file; {dst} "
                                  "was not written")
        diffs[k] = diff
    return _entry(name, max(diffs.values(), default=0.0)), diffs


def _entry(name: str, diff: float) -> dict:
    if name == "mlx":
        import mlx.core as mx

        return {"max_abs_diff_vs_onnxruntime": diff, "version": mx.__version__,
                "precision": "f32", "device": str(mx.default_device())}
    from edgelstm.converters.conversion import _runtime_entry

    entry = _runtime_entry(name, diff)
    entry["max_abs_diff_vs_onnxruntime"] = entry.pop("max_abs_diff")
    return entry


def run_reference(path, feeds: dict) -> dict[str, np.ndarray]:
    """Every output of ``path`` on ONNX Runtime, a failure one line with a hint."""
    from edgelstm.converters import run_onnx

    try:
        return run_onnx(path, feeds)
    except DataError as exc:
        shapes = ", ".join(f"{k} {_fmt(v.shape)}" for k, v in feeds.items())
        raise DataError(f"{exc} (generated inputs: {shapes}; set symbolic sizes with "
                        "--dim NAME=SIZE and input values with --const NAME=VALUE)") from None


__all__ = ["CHECK_RUNTIMES", "check_runtime", "compare_outputs", "graph_feeds", "parse_consts",
           "parse_dims", "run_reference"]
