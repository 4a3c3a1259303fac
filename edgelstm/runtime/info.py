"""``describe`` and ``environment``: what a model is and what runs it, for ``edgelstm info``."""

from __future__ import annotations

import math
import os
import platform
import sys
from importlib import metadata
from pathlib import Path


def _size_on_disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def describe(path: str | os.PathLike) -> dict:
    """Summarise a model file as a JSON-able dict.

    Keys: ``format``, ``path``, ``file_bytes``, ``blas``, and for native
    models ``architecture``, ``parameters``, ``weight_bytes``,
    ``bits_per_weight``, ``quantization``, ``inputs``/``outputs`` (name and
    shape, ``B``/``T`` symbolic), ``labels``; for ONNX ``opset``, ``ops``,
    ``inputs``/``outputs`` and ``metadata``.
    """
    from edgelstm.fast import blas as _blas
    from edgelstm.io.checkpoint import detect_format

    path = Path(path)
    fmt = detect_format(path)
    from edgelstm.fast import dispatch as kernels

    info = {"path": str(path), "format": fmt, "file_bytes": _size_on_disk(path),
            "blas": _blas.MLX_BLAS, "kernels": kernels.reason(),
            "placement": placement_rule()}
    if fmt == "onnx":
        info.update(_describe_onnx(path))
    else:
        from edgelstm.io.checkpoint import load

        info.update(describe_model(load(path)))
    return info


def placement_rule() -> str:
    """Where recurrent calls run in this process, in one line."""
    import mlx.core as mx

    from edgelstm.fast import dispatch as kernels

    device = kernels.default_device()
    if not kernels.available():
        return f"pure MLX on {device} (fused kernels unavailable)"
    if device == mx.cpu:
        return "fused CPU kernel (default device is the CPU)"
    return (f"fused CPU kernel for batch <= {kernels.GPU_KERNEL_MAX_BATCH} and streaming, "
            f"pure MLX on {device} above")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """What runs models here: versions, devices, kernels, BLAS and the placement rule."""
    import mlx.core as mx

    from edgelstm import __version__
    from edgelstm.fast import blas as _blas
    from edgelstm.fast import dispatch as kernels

    gpu = mx.is_available(mx.gpu)
    kernels.available()
    return {
        "edgelstm": __version__,
        "python": platform.python_version(),
        "platform": f"{sys.platform} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "versions": {d: _version(d) for d in ("mlx", "numpy", "onnx", "onnxruntime", "click")},
        "default_device": str(mx.default_device()),
        "gpu_available": bool(gpu),
        "kernels": kernels.reason(),
        "kernel_blas": kernels.blas_info() if kernels.available() else None,
        "kernel_threads": _kernel_threads(kernels),
        "mlx_blas": _blas.MLX_BLAS,
        "placement": placement_rule(),
    }


_THREAD_SOURCES = {
    "set": "set by set_blas_threads / set_recurrent_threads",
    "EDGELSTM_NUM_THREADS": "from EDGELSTM_NUM_THREADS",
    "blas": "the kernels' BLAS count",
    "cores": "the core count",
}


def _kernel_threads(kernels) -> str | None:
    """Threads a fused LSTM step may use and why; None without kernels."""
    if not kernels.available():
        return None
    n, source = kernels.recurrent_threads()
    return (f"{n} ({_THREAD_SOURCES.get(source, source)}); an LSTM step takes one per "
            f"{kernels.step_min_macs()} multiply-adds, so small steps run on one")


def count_parameters(model) -> int:
    """Logical weights of a native model: each weight once, int8 ones as one each.

    The one count ``info`` gives for a checkpoint and for its ONNX export
    (which is counted by importing it, see :func:`_onnx_parameters`).
    """
    from mlx.utils import tree_flatten

    logical = getattr(model, "logical_parameter_count", None)
    if callable(logical):
        return int(logical())
    return int(sum(v.size for _, v in tree_flatten(model.parameters())))


def _onnx_parameters(path: Path, m) -> tuple[int, str]:
    """``(count, how)``: an importable graph is counted as the model it imports to.

    Raw initializers would count what the graph format adds, not the model:
    the all-zero recurrence half of an LSTM's ``B``, shape constants, int8
    scales and zero points. A graph ``from_onnx`` cannot map falls back to
    the float initializers.
    """
    try:
        from edgelstm.converters import from_onnx

        return count_parameters(from_onnx(str(path))), "model"
    except Exception:  # any graph the importer cannot map: count its float tensors
        import onnx

        floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                  onnx.TensorProto.BFLOAT16}
        return sum(math.prod(i.dims) for i in m.graph.initializer
                   if i.data_type in floats), "float initializers"


def describe_model(model) -> dict:
    """Summarise a loaded native model (see :func:`describe`)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from edgelstm.io.checkpoint import model_config
    from edgelstm.runtime.inference import model_io

    params = dict(tree_flatten(model.parameters()))
    config = model_config(model)
    quant = config.get("quantization")
    n_params = count_parameters(model)
    n_bytes = sum(v.nbytes for v in params.values())
    rnn = getattr(model, "rnn", model)
    dirs = rnn.num_directions
    arch = (f"{rnn.cell_type.upper()} {rnn.num_layers}x{rnn.hidden_size}"
            f"{' bidirectional' if dirs == 2 else ''}, input {rnn.input_size}")
    width = getattr(model, "input_size", rnn.input_size)
    if "stem" in model:
        st = model.stem
        arch = (f"conv stem {width}->{st.channels} (kernel {st.kernel}, stride {st.stride}), "
                + arch)
    if "fcn" in model:
        fc = model.fcn
        arch += (f", fcn branch {width}->" + "->".join(map(str, fc.channels))
                 + f" (kernels {','.join(map(str, fc.kernels))}, mean over valid steps)")
    opts = {k: v for k, v in rnn.cell_options.items() if v not in (None, False)}
    if opts:
        arch += ", " + ", ".join(f"{k}={v}" for k, v in opts.items())
    head = getattr(model, "head_type", None)
    if head:
        arch += f", {head} head -> {model.num_outputs}"
    ins, outs = model_io(model)
    state_shape = [rnn.num_layers * dirs, "B", rnn.hidden_size]
    out_shape = (["B", model.num_outputs] if head == "sequence"
                 else ["B", "T", getattr(model, "num_outputs", rnn.output_size)])
    outputs = [{"name": outs[0], "shape": out_shape}, {"name": "h_n", "shape": state_shape}]
    if rnn.cell_type == "lstm":
        outputs.append({"name": "c_n", "shape": state_shape})
    del mx
    return {
        "architecture": arch,
        "config": config,
        "parameters": int(n_params),
        "weight_bytes": int(n_bytes),
        "bits_per_weight": round(8.0 * n_bytes / max(n_params, 1), 3),
        "quantization": quant,
        "inputs": [{"name": ins[0], "shape": ["B", "T", width]}],
        "outputs": outputs,
        "labels": getattr(model, "labels", None),
    }


def _describe_onnx(path: Path) -> dict:
    import onnx

    from edgelstm.errors import CheckpointError

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others on garbage
        raise CheckpointError(f"{path} is not a valid ONNX file: {exc}") from None
    if not m.graph.node and not m.graph.output:  # a 0-byte file parses as an empty model
        raise CheckpointError(f"{path} is not an ONNX model: it holds no graph")

    def shape(vi):
        dims = vi.type.tensor_type.shape.dim
        return [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?") for d in dims]

    inits = {i.name for i in m.graph.initializer}
    ops: dict[str, int] = {}
    for node in m.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
    n_params, counted = _onnx_parameters(path, m)
    return {
        "opset": {(o.domain or "ai.onnx"): o.version for o in m.opset_import},
        "producer": f"{m.producer_name} {m.producer_version}".strip(),
        "ops": ops,
        "parameters": n_params,
        "parameters_counted_as": counted,
        "inputs": [{"name": i.name, "shape": shape(i)} for i in m.graph.input
                   if i.name not in inits],
        "outputs": [{"name": o.name, "shape": shape(o)} for o in m.graph.output],
        "metadata": {p.key: p.value for p in m.metadata_props},
    }
