"""Offline inference on arrays, for any model format and backend.

:func:`run_model` is what ``edgelstm run`` calls. A native model takes its
first input name (``input`` by default) as ``x`` ``(B, T, I)`` or ``(T, I)``,
and optionally ``lengths`` ``(B,)``, ``h0`` and ``c0`` ``(L*dirs, B, H)``;
it returns its first output name plus ``h_n`` (and ``c_n`` for LSTM).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError, EdgeLSTMError

BACKENDS = ("mlx", "onnxruntime")


def read_inputs(path: str | os.PathLike, input_names: list[str]) -> dict[str, np.ndarray]:
    """Read ``.npy`` (feeds the first input) or ``.npz`` (feeds inputs by name).

    Headers are checked against the file's size before any allocation
    (:mod:`edgelstm.frontend.arrays`).
    """
    from edgelstm.frontend.arrays import load_npy, load_npz

    path = Path(path)
    if path.suffix == ".npy":
        return {input_names[0]: load_npy(path)}
    if path.suffix == ".npz":
        return load_npz(path)
    raise DataError(f"input must be .npy or .npz, got {path.name}")


def check_feeds(feeds: dict[str, np.ndarray], first: str, batch_first: bool | None = True
                ) -> None:
    """The checks every backend shares: finite floats, sizes, ``lengths`` in ``[0, T]``.

    Args:
        feeds: ``{name: array}``; ``first`` is the main input ``(B, T, I)``/``(T, I)``.
        batch_first: the layout of ``first`` (``False``: ``(T, B, I)``; ``None``:
            unknown, as for an ONNX graph, so ``T`` is the larger leading dim).

    Raises:
        NonFiniteError: NaN/Inf anywhere (the policy of :mod:`edgelstm.frontend.arrays`).
        LimitError: an input larger than :data:`~edgelstm.limits.MAX_ELEMENTS`.
        DataError: ``lengths`` not integer, negative or longer than ``T``.
    """
    from edgelstm.frontend.arrays import check_finite
    from edgelstm.limits import check_elements

    for name, value in feeds.items():
        arr = np.asarray(value)
        check_elements(arr.shape, f"input {name!r}")
        check_finite(f"input {name!r}", arr)
    lengths, x = feeds.get("lengths"), feeds.get(first)
    if lengths is None:
        return
    lengths = np.asarray(lengths)
    if lengths.size and not np.issubdtype(lengths.dtype, np.integer):
        if not np.issubdtype(lengths.dtype, np.floating) or (lengths != np.round(lengths)).any():
            raise DataError(f"lengths must hold integers, got {lengths.dtype}")
    if lengths.size and lengths.min() < 0:
        k = int(np.argmin(lengths))
        raise DataError(f"lengths[{k}] = {lengths.flat[k]} is negative")
    if x is not None and np.ndim(x) == 3 and lengths.size:
        shape = np.shape(x)
        T = max(shape[:2]) if batch_first is None else shape[1 if batch_first else 0]
        if lengths.max() > T:
            k = int(np.argmax(lengths))
            raise DataError(f"lengths[{k}] = {lengths.flat[k]} exceeds the {T} steps of "
                            f"input {first!r}")


def model_io(model) -> tuple[list[str], list[str]]:
    """Input and output names of a native model."""
    ins = list(getattr(model, "input_names", None) or ["input"])
    outs = list(getattr(model, "output_names", None) or ["output"])
    return ins, outs


def run_native(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a native (MLX) model on numpy feeds; see the module docstring."""
    import mlx.core as mx

    ins, outs = model_io(model)
    known = {ins[0], "lengths", "h0", "c0"}
    unknown = sorted(set(feeds) - known)
    if unknown:
        raise DataError(f"unknown input {unknown[0]!r}; this model takes {', '.join(sorted(known))}")
    if ins[0] not in feeds:
        raise DataError(f"missing input {ins[0]!r}")
    rnn = getattr(model, "rnn", model)
    check_feeds(feeds, ins[0], batch_first=getattr(rnn, "batch_first", True))
    x = np.asarray(feeds[ins[0]])
    if x.ndim not in (2, 3) or not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"input {ins[0]!r} must be a float array (B, T, I) or (T, I), "
                        f"got {x.dtype} {x.shape}")
    size = model.input_size
    if x.shape[-1] != size:
        raise DataError(f"input {ins[0]!r} has {x.shape[-1]} features, the model takes {size}")
    is_lstm = _cell_type(model) == "lstm"
    state = None
    if "h0" in feeds:
        h0 = mx.array(feeds["h0"].astype(np.float32))
        if is_lstm:
            if "c0" not in feeds:
                raise DataError("an LSTM needs c0 with h0")
            state = (h0, mx.array(feeds["c0"].astype(np.float32)))
        else:
            state = h0
    lengths = feeds.get("lengths")
    if lengths is not None:
        lengths = mx.array(np.asarray(lengths).astype(np.int32))
    from edgelstm.nn.model import SequenceModel

    xa = mx.array(x.astype(np.float32))
    if isinstance(model, SequenceModel):
        y, final = model(xa, state=state, lengths=lengths, return_state=True)
    else:
        y, final = model(xa, state, lengths=lengths)
    result = {outs[0]: y}
    if is_lstm:
        result["h_n"], result["c_n"] = final
    else:
        result["h_n"] = final
    mx.eval(result)
    return {k: np.array(v) for k, v in result.items()}


def _onnx_dims(path) -> dict[str, list]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    return {v.name: [d.dim_param or (d.dim_value if d.HasField("dim_value") else None)
                     for d in v.type.tensor_type.shape.dim]
            for v in [*m.graph.input, *m.graph.output] if v.name not in inits}


def _rank(path, name: str) -> int:
    return len(_onnx_dims(path)[name])


def _onnx_batch_axes(path) -> dict[str, int]:
    """``{input or output name: batch axis}`` of a rank-3 main-input graph.

    The batch axis of the first input is the symbolic dim named like a batch
    (``batch``, ``B``, ``N``), else axis 0; every other tensor with the same
    symbolic dim has its batch axis there. Empty when the first input is not
    rank 3 or has no symbolic batch dim (then inputs pass through unchanged).
    """
    dims = _onnx_dims(path)
    names = list(dims)
    if not names or len(dims[names[0]]) != 3:
        return {}
    first = dims[names[0]]
    axis = next((k for k, d in enumerate(first) if isinstance(d, str)
                 and d.lower() in ("batch", "batch_size", "b", "n")), None)
    if axis is None:
        return {}
    sym = first[axis]
    return {n: d.index(sym) for n, d in dims.items() if sym in d}


def _cell_type(model) -> str:
    rnn = getattr(model, "rnn", model)
    return getattr(rnn, "cell_type", "")


def run_model(path: str | os.PathLike, feeds: dict[str, np.ndarray] | np.ndarray,
              backend: str | None = None) -> dict[str, np.ndarray]:
    """Run any supported model file on numpy inputs.

    Args:
        path: checkpoint directory, ``.onnx`` or another importable format.
        feeds: ``{input name: array}``, or one array for the first input.
        backend: ``"mlx"`` or ``"onnxruntime"`` (default: ``mlx`` for
            native models, ``onnxruntime`` for ``.onnx``).

    Returns:
        ``{output name: array}``.
    """
    from edgelstm.io.checkpoint import detect_format, load

    if backend is not None and backend not in BACKENDS:
        raise EdgeLSTMError(f"unknown backend {backend!r}; choose mlx or onnxruntime")
    fmt = detect_format(path)
    if fmt == "onnx":
        from edgelstm.converters import onnx_io_names, run_onnx

        first = onnx_io_names(path)[0][0]
        if isinstance(feeds, np.ndarray):
            feeds = {first: feeds}
        # run_onnx applies check_feeds, the one input policy of every backend
        batched = _onnx_batch_axes(path)
        axis = batched.get(first)
        if axis is None or np.ndim(feeds.get(first)) != 2:
            return run_onnx(path, feeds, backend=backend or "onnxruntime")
        # One rule with native models: a (T, F) input is one unbatched sequence,
        # run as batch 1 and returned without the batch axis.
        feeds = {k: (np.expand_dims(v, batched[k]) if k in batched and k != first
                     and np.ndim(v) == _rank(path, k) - 1 else v) for k, v in feeds.items()}
        feeds[first] = np.expand_dims(feeds[first], axis)
        outputs = run_onnx(path, feeds, backend=backend or "onnxruntime")
        return {k: (np.squeeze(v, batched[k]) if k in batched and np.ndim(v) > batched[k]
                    and np.shape(v)[batched[k]] == 1 else v) for k, v in outputs.items()}
    if backend == "onnxruntime":
        raise EdgeLSTMError(f"{path} is not an ONNX file; convert it first "
                            "(edgelstm convert MODEL model.onnx) or use --backend mlx")
    model = load(path)
    if isinstance(feeds, np.ndarray):
        feeds = {model_io(model)[0][0]: feeds}
    return run_native(model, feeds)
