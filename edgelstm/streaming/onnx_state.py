"""Streaming backend for any ONNX graph that takes and returns its recurrent state.

A graph streams when its state tensors are inputs and outputs: edgelstm's
``--streaming`` export (``h0``/``c0`` -> ``h_n``/``c_n``), PyTorch exports
as users write them (``h``/``c`` -> ``hn``/``cn``, ``state`` -> ``stateN``),
or any pairs given explicitly (``--state IN=OUT``). States are ``(L, B, H)``
(the ONNX ``LSTM``/``GRU`` layout, batch on axis 1); the data input is
``(B, T, I)``. The graph runs on ONNX Runtime or on edgelstm's MLX executor
of ONNX graphs; the model's config (front end, labels) is the JSON in
``metadata_props["edgelstm_config"]`` when the graph has one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgelstm.converters.state_names import state_pairs
from edgelstm.errors import CheckpointError, ConfigError, UnsupportedError

LENGTHS = "lengths"
ENGINES = ("onnxruntime", "mlx")
__all__ = ["ENGINES", "LENGTHS", "NumpyStates", "OnnxStateBackend", "open_engine", "state_pairs"]


def open_engine(proto, engine: str, threads: int):
    """``(MLX executor, None)`` or ``(None, ONNX Runtime session)`` for ``proto``."""
    if engine == "mlx":
        from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner

        return OnnxMLXRunner(proto), None
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # failures become one DataError line, not a log too
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    return None, ort.InferenceSession(proto.SerializeToString(), opts,
                                      providers=["CPUExecutionProvider"])


class NumpyStates:
    """State conversions of the ONNX backends, whose states are numpy arrays."""

    def to_native(self, a):
        return np.asarray(a, dtype=np.float32)

    def to_numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def concat(self, states: list, axis: int = 1):
        return np.concatenate(states, axis=axis)


class OnnxStateBackend(NumpyStates):
    """Runs one chunk of an ONNX graph with state inputs/outputs (see module docstring).

    Args:
        path: the ``.onnx`` file.
        engine: ``"onnxruntime"`` or ``"mlx"`` (the MLX executor).
        threads: ONNX Runtime intra-op threads. Default: ``1``.
        states: explicit ``{state input: state output}``; default: by name.
    """

    def __init__(self, path: str | os.PathLike, engine: str = "onnxruntime", threads: int = 1,
                 states: dict[str, str] | None = None):
        import onnx

        from edgelstm.streaming.backends import BIDIRECTIONAL, MEAN_POOL

        if engine not in ENGINES:
            raise ConfigError(f"unknown engine {engine!r}; choose onnxruntime or mlx")
        self.name = engine
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise CheckpointError(f"cannot read {path}: {exc}") from None
        meta = {p.key: p.value for p in proto.metadata_props}
        try:
            self.config = json.loads(meta.get("edgelstm_config", "{}"))
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path}: bad edgelstm_config metadata: {exc}") from None
        rnn_cfg = self.config.get("rnn", self.config)
        if rnn_cfg.get("bidirectional") or any(
                _direction(n) == b"bidirectional" for n in proto.graph.node
                if n.op_type in ("LSTM", "GRU", "RNN")):
            raise UnsupportedError(BIDIRECTIONAL)
        if self.config.get("pool", "last") != "last":
            raise UnsupportedError(MEAN_POOL)
        init = {i.name for i in proto.graph.initializer}
        inputs = [i for i in proto.graph.input if i.name not in init]
        names = [i.name for i in inputs]
        outs = [o.name for o in proto.graph.output]
        pairs = state_pairs(names, outs, states)
        file = Path(path).name
        if not pairs:
            raise UnsupportedError(
                f"{file} is not a streaming export (no h0 input, and no state input/output "
                f"pair such as h -> hn among inputs {names} and outputs {outs}); re-export it "
                "with: edgelstm convert MODEL OUT.onnx --streaming, or name the pairs with "
                "--state IN=OUT")
        if len(pairs) > 2:
            raise UnsupportedError(f"{file}: {len(pairs)} state pairs; streaming takes a hidden "
                                   "state and at most a cell state")
        self.state_names = [i for i, _ in pairs]
        state_outs = [o for _, o in pairs]
        data = [n for n in names if n not in self.state_names and n != LENGTHS]
        if len(data) != 1:
            raise UnsupportedError(f"{file}: expected one data input besides the states, "
                                   f"found {data}; a model taking raw samples and constant "
                                   "inputs streams with --frame-samples N (and --const "
                                   "NAME=VALUE)")
        self.input_name = data[0]
        self.takes_lengths = LENGTHS in names  # a --lengths export: every chunk is full
        main = [o for o in outs if o not in state_outs]
        if not main:
            raise UnsupportedError(f"{file}: no output besides the states")
        self.output_names = [main[0], *state_outs]
        self.is_lstm = len(pairs) == 2
        dims = [inputs[names.index(n)].type.tensor_type.shape.dim for n in self.state_names]
        for n, d in zip(self.state_names, dims, strict=True):
            if len(d) != 3:
                raise UnsupportedError(f"{file}: state input {n!r} has rank {len(d)}; streaming "
                                       "takes states (layers, batch, hidden)")
        x_dims = inputs[names.index(self.input_name)].type.tensor_type.shape.dim
        self.num_layers = rnn_cfg.get("num_layers") or _static(dims[0][0], f"{pairs[0][0]} dim 0",
                                                                path)
        self.hidden_size = rnn_cfg.get("hidden_size") or _static(dims[0][2],
                                                                  f"{pairs[0][0]} dim 2", path)
        self.input_size = rnn_cfg.get("input_size") or _static(x_dims[-1], "input features", path)
        out_vi = next(o for o in proto.graph.output if o.name == main[0])
        rank = len(out_vi.type.tensor_type.shape.dim)
        self.per_sequence = self.config.get("head") == "sequence" or (
            "head" not in self.config and rank == 2)
        self._runner, self._session = open_engine(proto, engine, threads)

    def zero_state(self, batch: int = 1) -> list:
        z = np.zeros((self.num_layers, batch, self.hidden_size), dtype=np.float32)
        return [z, z.copy()] if self.is_lstm else [z]

    def run(self, x: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """One chunk: ``x`` ``(B, T, I)``, states ``(L, B, H)``; returns output and new states."""
        feeds = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        feeds.update((n, np.ascontiguousarray(s, dtype=np.float32))
                     for n, s in zip(self.state_names, state, strict=True))
        if self.takes_lengths:
            feeds[LENGTHS] = np.full(x.shape[0], x.shape[1], np.int32)
        if self.name == "mlx":
            got = self._runner.run(feeds)
            out = [np.asarray(got[n]) for n in self.output_names]
        else:
            out = self._session.run(self.output_names, feeds)
        return out[0], list(out[1:])


def has_state_io(path: str | os.PathLike, states: dict[str, str] | None = None) -> bool:
    """Whether the ONNX graph at ``path`` takes and returns state tensors (by name or ``states``)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # unreadable: let the backend say why
        return False
    init = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in init]
    outs = [o.name for o in proto.graph.output]
    try:
        return bool(state_pairs(names, outs, states))
    except ConfigError:
        return True  # an explicit mapping that does not fit: the backend reports it


def _direction(node):
    for a in node.attribute:
        if a.name == "direction":
            return a.s
    return b"forward"


def _static(dim, what: str, path) -> int:
    if dim.HasField("dim_value"):
        return int(dim.dim_value)
    raise UnsupportedError(f"{Path(path).name}: {what} is dynamic and there is no "
                           "edgelstm_config metadata to give it")
