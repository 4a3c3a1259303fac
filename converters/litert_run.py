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
    """Run a single-input model on ``x`` from zero state.

    Args:
        path: ``.tflite`` file or its bytes.
        x: ``(B, T, I)`` float32 (``(T, B, I)`` for a time-major export);
            ``T`` may be any length, ``B`` must be the exported batch size.

    Returns:
        The first output, e.g. ``(B, C)`` or ``(B, T, C)``.
    """
    Interpreter = _interpreter_class()
    try:
        if isinstance(path, (bytes, bytearray)):
            interp = Interpreter(model_content=bytes(path))
        else:
            interp = Interpreter(model_path=str(path))
    except Exception as exc:  # LiteRT raises ValueError/RuntimeError with long text
        raise UnsupportedError(f"LiteRT cannot load the model: {_first_line(exc)}") from None
    inp = interp.get_input_details()[0]
    x = np.ascontiguousarray(x, np.float32)
    sig = list(inp.get("shape_signature", inp["shape"]))
    if len(sig) != x.ndim or any(d not in (-1, n) for d, n in zip(sig, x.shape, strict=False)):
        raise DataError(f"input must have shape {tuple(int(d) if d >= 0 else '?' for d in sig)}"
                        f" (batch fixed at export), got {x.shape}")
    try:
        interp.resize_tensor_input(inp["index"], list(x.shape))
        interp.allocate_tensors()
        interp.reset_all_variables()  # states are variable tensors: start from zeros
        interp.set_tensor(inp["index"], x)
        interp.invoke()
    except Exception as exc:
        raise DataError(f"LiteRT failed on the model: {_first_line(exc)}") from None
    return np.array(interp.get_tensor(interp.get_output_details()[0]["index"]))


def _first_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
