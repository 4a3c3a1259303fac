"""Execution backends of the streaming engine: MLX and ONNX Runtime.

A backend runs one chunk for a batch of streams: ``run(x, state)`` with
``x`` ``(B, T, I)`` float32 and the recurrent state as a list of arrays
``(L, B, H)`` (``[h, c]`` for LSTM, ``[h]`` for GRU/RNN) returns the
output and the new state. Per-frame heads give ``(B, T, C)``; per-sequence
heads give ``(B, C)``: the head on the hidden state after the chunk's last
frame. Backends are built once and never mutated (the session is shared).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np

from edgelstm.errors import UnsupportedError

BIDIRECTIONAL = ("cannot stream a bidirectional model: its reverse direction needs the "
                 "whole sequence before it emits the first output; use a unidirectional model")
MEAN_POOL = ("cannot stream a mean-pooling model (pool: mean): its head averages every step "
             "of the whole sequence; run it offline with `edgelstm run`, or train with the "
             "last-step head (--pool last) to stream")


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

    def _forward(self, x, *state):
        st = tuple(state) if self.is_lstm else state[0]
        if self._seq:
            y, final = self.model(x, state=st, return_state=True)
        else:
            y, final = self.model(x, st)
        return (y, *final) if self.is_lstm else (y, final)

    def zero_state(self, batch: int = 1) -> list:
        z = self._mx.zeros((self.num_layers, batch, self.hidden_size))
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
        if self._compiled is not None:
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


class ORTBackend:
    """Runs a streaming ONNX export with ONNX Runtime.

    The graph takes ``[<input>, "h0", "c0" (LSTM only)]`` and returns
    ``[<output>, "h_n", "c_n" (LSTM only)]``, states ``(L, B, H)``; the model's
    config is the JSON in ``metadata_props["edgelstm_config"]``.

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime intra-op threads. Default: ``1`` (latency,
            and one process may serve many streams).
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        import onnx
        import onnxruntime as ort

        from edgelstm.errors import CheckpointError

        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # onnx raises DecodeError and friends
            raise CheckpointError(f"cannot read {path}: {exc}") from None
        meta = {p.key: p.value for p in proto.metadata_props}
        try:
            self.config = json.loads(meta.get("edgelstm_config", "{}"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: bad edgelstm_config metadata: {exc}") from None
        rnn_cfg = self.config.get("rnn", self.config)
        directions = {_attr(n, "direction") for n in proto.graph.node
                      if n.op_type in ("LSTM", "GRU", "RNN")}
        if rnn_cfg.get("bidirectional") or b"bidirectional" in directions:
            raise UnsupportedError(BIDIRECTIONAL)
        if self.config.get("pool", "last") != "last":
            raise UnsupportedError(MEAN_POOL)
        init = {i.name for i in proto.graph.initializer}
        inputs = [i for i in proto.graph.input if i.name not in init]
        names = [i.name for i in inputs]
        if "h0" not in names:
            raise UnsupportedError(f"{Path(path).name} is not a streaming export (no h0 input); "
                                   "re-export it with: edgelstm convert MODEL OUT.onnx --streaming")
        self.is_lstm = "c0" in names
        self.input_name = next(n for n in names if n not in ("h0", "c0", "lengths"))
        self.takes_lengths = "lengths" in names  # a --lengths export: every chunk is full
        self.state_names = ["h0", "c0"] if self.is_lstm else ["h0"]
        outs = [o.name for o in proto.graph.output]
        self.output_names = [outs[0], "h_n", "c_n"] if self.is_lstm else [outs[0], "h_n"]
        missing = [n for n in self.output_names if n not in outs]
        if missing:
            raise UnsupportedError(f"{Path(path).name} lacks streaming output {missing[0]!r}")
        h0 = inputs[names.index("h0")].type.tensor_type.shape.dim
        x_dims = inputs[names.index(self.input_name)].type.tensor_type.shape.dim
        self.num_layers = rnn_cfg.get("num_layers") or _static(h0[0], "h0 dim 0", path)
        self.hidden_size = rnn_cfg.get("hidden_size") or _static(h0[2], "h0 dim 2", path)
        self.input_size = rnn_cfg.get("input_size") or _static(x_dims[-1], "input features", path)
        self.per_sequence = self.config.get("head") == "sequence"
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def zero_state(self, batch: int = 1) -> list:
        z = np.zeros((self.num_layers, batch, self.hidden_size), dtype=np.float32)
        return [z, z.copy()] if self.is_lstm else [z]

    def to_native(self, a):
        return np.asarray(a, dtype=np.float32)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def concat(self, states: list, axis: int = 1):
        return np.concatenate(states, axis=axis)

    def run(self, x: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """One chunk: ``x`` ``(B, T, I)``; returns numpy output and state."""
        feeds = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        feeds.update(zip(self.state_names, state, strict=True))
        if self.takes_lengths:
            feeds["lengths"] = np.full(x.shape[0], x.shape[1], np.int32)
        out = self.session.run(self.output_names, feeds)
        return out[0], list(out[1:])


def _attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return a.s
    return b"forward"


def _static(dim, what: str, path) -> int:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    raise UnsupportedError(f"{Path(path).name}: {what} is dynamic and there is no "
                           "edgelstm_config metadata to give it")
