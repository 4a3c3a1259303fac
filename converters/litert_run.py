"""Run a ``.tflite`` file on the LiteRT interpreter (``ai-edge-litert``, CPU)."""

from __future__ import annotations

import os

import numpy as np

from edgelstm.errors import DataError, UnsupportedError

INSTALL_HINT = "pip install 'edgelstm[litert]' (or pip install ai-edge-litert)"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise UnsupportedError(f"LiteRT is not installed; {INSTALL_HINT}") from None
    return Interpreter


def available() -> bool:
    """Whether ``ai_edge_litert`` imports."""
    try:
        _interpreter_class()
    except UnsupportedError:
        return False
    return True


def version() -> str:
    """The installed ``ai-edge-litert`` version."""
    from importlib.metadata import version as _version

    return _version("ai-edge-litert")


def run_tflite(path: str | os.PathLike | bytes, x: np.ndarray) -> np.ndarray:
    """Run a model on ``x`` from zero state; its first output.

    Args:
        path: ``.tflite`` file or its bytes.
        x: ``(B, T, I)`` float32 (``(T, B, I)`` for a time-major export);
            ``T`` may be any length, ``B`` must be the exported batch size.
            State inputs of a streaming export (``h0``/``c0``) get zeros.

    Returns:
        The first output, e.g. ``(B, C)`` or ``(B, T, C)``.
    """
    return next(iter(run_tflite_all(path, x).values()))


def run_tflite_all(path: str | os.PathLike | bytes, x: np.ndarray,
                   state: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run a model on ``x`` (the first input); every output by name.

    Args:
        path, x: as for :func:`run_tflite`.
        state: values of the other inputs by name (a streaming export's
            ``h0``/``c0`` ``(L, B, H)``); missing ones are zeros.
    """
    Interpreter = _interpreter_class()
    try:
        if isinstance(path, (bytes, bytearray)):
            interp = Interpreter(model_content=bytes(path))
        else:
            interp = Interpreter(model_path=str(path))
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError with long text
        raise UnsupportedError(f"LiteRT cannot load the model: {_first_line(exc)}") from None
    inp, *others = interp.get_input_details()
    x = np.ascontiguousarray(x, np.float32)
    sig = list(inp.get("shape_signature", inp["shape"]))
    if len(sig) != x.ndim or any(d not in (-1, n) for d, n in zip(sig, x.shape, strict=False)):
        raise DataError(f"input must have shape {tuple(int(d) if d >= 0 else '?' for d in sig)}"
                        f" (batch fixed at export), got {x.shape}")
    state = dict(state or {})
    feeds = []
    for d in others:
        value = np.ascontiguousarray(state.pop(d["name"], np.zeros(d["shape"], np.float32)),
                                     np.float32)
        if value.shape != tuple(d["shape"]):
            raise DataError(f"state {d['name']} must have shape {tuple(d['shape'])}, "
                            f"got {value.shape}")
        feeds.append((d["index"], value))
    if state:
        raise DataError(f"the model has no input(s) {', '.join(sorted(state))}")
    try:
        interp.resize_tensor_input(inp["index"], list(x.shape))
        interp.allocate_tensors()
        interp.reset_all_variables()  # builtin ops' states are variable tensors: start from zeros
        interp.set_tensor(inp["index"], x)
        for index, value in feeds:
            interp.set_tensor(index, value)
        interp.invoke()
    except Exception as exc:
        raise DataError(f"LiteRT failed on the model: {_first_line(exc)}") from None
    return {d["name"]: np.array(interp.get_tensor(d["index"]))
            for d in interp.get_output_details()}


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
