"""Execution backends of the streaming engine: MLX and ONNX Runtime.

A backend runs one chunk for a batch of streams: ``run(x, state)`` with
``x`` ``(B, T, I)`` float32 and the recurrent state as a list of arrays
``(L, B, H)`` (``[h, c]`` for LSTM, ``[h]`` for GRU/RNN) returns the
output and the new state. Per-frame heads give ``(B, T, C)``; per-sequence
heads give ``(B, C)``: the head on the hidden state after the chunk's last
frame. Backends are built once and never mutated (the session is shared).
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from edgelstm.errors import UnsupportedError
from edgelstm.streaming.onnx_state import OnnxStateBackend

BIDIRECTIONAL = ("cannot stream a bidirectional model: its reverse direction needs the "
                 "whole sequence before it emits the first output; use a unidirectional model")
MEAN_POOL = ("cannot stream a mean-pooling model (pool: mean): its head averages every step "
             "of the whole sequence; run it offline with `edgelstm run`, or train with the "
             "last-step head (--pool last) to stream")

STEM = ("cannot stream a model with a conv stem: the stem's input window is not carried "
        "as state; run it offline with `edgelstm run`, or train with --stem none to stream")

FCN = ("cannot stream a model with an fcn branch: its convolution windows and pooled "
       "features are not carried as state; run it offline with `edgelstm run`, or train "
       "with --fcn none to stream")


class MLXBackend:
    """Runs a native edgelstm model (``SequenceModel`` or a bare recurrent stack).

    Args:
        model: the module; put in eval mode.
        compile: wrap the chunk step in ``mx.compile`` (one trace per chunk
            shape), which removes most per-op dispatch cost. Default: ``True``.
    """

    name = "mlx"

    def __init__(self, model, compile: bool = True):
        import mlx.core as mx

        from edgelstm.nn.model import SequenceModel

        rnn = model.rnn if isinstance(model, SequenceModel) else model
        if not hasattr(rnn, "cell_type"):
            raise UnsupportedError(f"cannot stream a {type(model).__name__}: "
                                   "not an edgelstm model")
        if rnn.bidirectional:
            raise UnsupportedError(BIDIRECTIONAL)
        if isinstance(model, SequenceModel) and "stem" in model:
            raise UnsupportedError(STEM)
        if isinstance(model, SequenceModel) and "fcn" in model:
            raise UnsupportedError(FCN)
        if getattr(model, "pool", "last") != "last":
            raise UnsupportedError(MEAN_POOL)
        model.eval()
        self.model = model
        self.config = model.config()
        self.is_lstm = rnn.cell_type == "lstm"
        self.num_layers = rnn.num_layers
        self.hidden_size = rnn.hidden_size
        self.input_size = rnn.input_size
        self.per_sequence = isinstance(model, SequenceModel) and model.head_type == "sequence"
        self._seq = isinstance(model, SequenceModel)
        self._mx = mx
        self._compiled = mx.compile(self._forward) if compile else None
        self.compile_error: str | None = None  # why the compiled step was dropped, if it was
        # Where the fused kernels run the step, small batches skip the compiled step:
        # on computed inputs the kernels run eagerly, without MLX's stream thread
        # (edgelstm.fast.dispatch.EAGER_MAX_BATCH); a compiled step always waits on it.
        from edgelstm.fast import dispatch

        self._kernels = dispatch

    def _forward(self, x, *state):
        st = tuple(state) if self.is_lstm else state[0]
        if self._seq:
            y, final = self.model(x, state=st, return_state=True)
        else:
            y, final = self.model(x, st)
        return (y, *final) if self.is_lstm else (y, final)

    def zero_state(self, batch: int = 1) -> list:
        z = self._mx.zeros((self.num_layers, batch, self.hidden_size))
        self._mx.eval(z)  # computed, so even the first chunk may run eagerly
        return [z, z] if self.is_lstm else [z]

    def to_native(self, a):
        return self._mx.array(np.asarray(a, dtype=np.float32))

    def to_numpy(self, a) -> np.ndarray:
        return np.array(a, copy=False) if isinstance(a, np.ndarray) else np.array(a)

    def concat(self, states: list, axis: int = 1):
        return self._mx.concatenate(states, axis=axis)

    def run(self, x: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """One chunk: ``x`` ``(B, T, I)``; returns numpy output and MLX state."""
        mx = self._mx
        xa = mx.array(np.ascontiguousarray(x, dtype=np.float32))
        out = None
        eager = self._kernels.available() and self._kernels.eager_batch(x.shape[0])
        if self._compiled is not None and not eager:
            try:
                out = self._compiled(xa, *state)
            except (RuntimeError, ValueError) as exc:
                # mx.compile refuses some graphs while tracing (MLX raises these two);
                # run eagerly from now on, and say so once. A bad input fails eagerly too.
                self._compiled = None
                self.compile_error = " ".join(str(exc).split())
                warnings.warn(f"edgelstm: compiled streaming step unavailable, running eagerly "
                              f"({self.compile_error})", RuntimeWarning, stacklevel=2)
        if out is None:
            out = self._forward(xa, *state)
        mx.eval(out)
        return np.array(out[0]), list(out[1:])


class ORTBackend(OnnxStateBackend):
    """Runs an ONNX graph with state inputs/outputs with ONNX Runtime.

    edgelstm's streaming export takes ``[<input>, "h0", "c0" (LSTM only)]`` and
    returns ``[<output>, "h_n", "c_n" (LSTM only)]``, states ``(L, B, H)``;
    other names pair up as :func:`~edgelstm.streaming.onnx_state.state_pairs`
    says. The model's config is the JSON in ``metadata_props["edgelstm_config"]``.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads. Default: ``1`` (latency,
            and one process may serve many streams).
        states: explicit ``{state input: state output}``.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1,
                 states: dict[str, str] | None = None):
        super().__init__(path, "onnxruntime", threads=threads, states=states)
