"""Streaming backend for ONNX graphs that take raw samples and return their state.

Voice-activity detectors and similar models are published as one model
step: ``N + M`` samples (``N`` new ones after ``M`` of left context), the
recurrent state, and constant inputs such as the sample rate, e.g.::

    input (B, M + N), sr (), h (L, B, H), c (L, B, H) -> output (B, 1), hn, cn

:class:`OnnxSampleBackend` runs such a graph once per step on ONNX Runtime or
the MLX executor, with the windows cut by
:class:`edgelstm.frontend.samples.SampleFrames` (its ``frontend``), so a
:class:`~edgelstm.streaming.session.StreamingSession` feeds it audio as it
does a speech model. States pair up as
:func:`~edgelstm.streaming.onnx_state.state_pairs` says (or explicitly) and
must have the batch on axis 1, as ONNX's recurrent ops do. The main output
(the first that is not a state, or ``output``) gives one row per step,
flattened: ``(B, T, C)`` for ``T`` steps.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelstm.errors import CheckpointError, ConfigError, DataError, EdgeLSTMError, UnsupportedError
from edgelstm.frontend.samples import SampleFrames
from edgelstm.streaming.onnx_state import ENGINES, NumpyStates, open_engine, state_pairs


class OnnxSampleBackend(NumpyStates):
    """Runs a raw-sample ONNX step graph for a batch of streams (module docstring).

    Args:
        path: the ``.onnx`` file.
        frames: the framing (``N``, ``M``, sample rate).
        engine: ``"onnxruntime"`` or ``"mlx"`` (edgelstm's MLX executor of ONNX).
        consts: ``{input name: value}`` for every input that is neither the
            samples nor a state (cast to the declared type), e.g. ``{"sr": 16000}``.
        states: explicit ``{state input: state output}``; default: by name.
        output: the output to report; default: the first that is not a state.
        threads: ONNX Runtime intra-op threads.
    """

    per_sequence = False

    def __init__(self, path: str | os.PathLike, frames: SampleFrames, engine: str = "onnxruntime",
                 consts: dict | None = None, states: dict[str, str] | None = None,
                 output: str | None = None, threads: int = 1):
        import onnx
        from onnx import helper

        if engine not in ENGINES:
            raise ConfigError(f"unknown engine {engine!r}; choose onnxruntime or mlx")
        self.name = engine
        self.frontend = frames
        self.config: dict = {}
        file = Path(path).name
        if Path(path).is_dir() or Path(path).suffix.lower() != ".onnx":
            raise ConfigError(f"{path}: raw-sample streaming (--frame-samples) takes an .onnx "
                              "graph")
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # onnx raises DecodeError and friends
            raise CheckpointError(f"cannot read {path}: {exc}") from None
        init = {i.name for i in proto.graph.initializer}
        inputs = {i.name: i for i in proto.graph.input if i.name not in init}
        outs = [o.name for o in proto.graph.output]
        pairs = state_pairs(list(inputs), outs, states)
        if not pairs:
            raise UnsupportedError(f"{file}: no state input/output pair (such as h -> hn or "
                                   f"state -> stateN) among inputs {list(inputs)} and outputs "
                                   f"{outs}; name them with --state IN=OUT")
        if len(pairs) > 2:
            raise UnsupportedError(f"{file}: {len(pairs)} state pairs; streaming takes a hidden "
                                   "state and at most a cell state")
        self.state_names = [i for i, _ in pairs]
        consts = dict(consts or {})
        unknown = sorted(set(consts) - set(inputs))
        if unknown:
            raise ConfigError(f"--const {unknown[0]}: {file} has no input {unknown[0]!r} "
                              f"(inputs: {', '.join(inputs)})")
        data = [n for n in inputs if n not in self.state_names and n not in consts]
        if len(data) != 1:
            need = [n for n in data if not _is_float(inputs[n])]
            hint = f"; give {', '.join(need)} with --const NAME=VALUE" if need else ""
            raise UnsupportedError(f"{file}: expected one sample input besides the states and "
                                   f"constants, found {data}{hint}")
        self.input_name = data[0]
        x_t = inputs[self.input_name].type.tensor_type
        if not _is_float(inputs[self.input_name]) or len(x_t.shape.dim) != 2:
            raise UnsupportedError(f"{file}: sample input {self.input_name!r} must be float "
                                   "(batch, samples)")
        width = x_t.shape.dim[1]
        if width.HasField("dim_value") and width.dim_value != frames.num_features:
            raise ConfigError(f"{file}: input {self.input_name!r} takes {width.dim_value} "
                              f"samples per step; frame {frames.frame_samples} + context "
                              f"{frames.context_samples} = {frames.num_features}")
        self.consts = {n: _cast(n, v, inputs[n], helper) for n, v in consts.items()}
        state_outs = dict(pairs)
        main = [o for o in outs if o not in state_outs.values()]
        if output is not None and output not in outs:
            raise ConfigError(f"{file} has no output {output!r} (outputs: {', '.join(outs)})")
        if output is None and not main:
            raise UnsupportedError(f"{file}: no output besides the states")
        self.output_names = [output or main[0], *(state_outs[n] for n in self.state_names)]
        self._state_shapes = [_state_shape(inputs[n], file) for n in self.state_names]
        dims = [x_t.shape.dim[0]] + [inputs[n].type.tensor_type.shape.dim[1]
                                     for n in self.state_names]
        self.batch_one = any(d.HasField("dim_value") for d in dims)  # graph fixed at batch 1
        self.is_lstm = len(pairs) == 2
        self.num_layers = self._state_shapes[0][0]
        self.hidden_size = self._state_shapes[0][-1]
        self.input_size = frames.num_features
        self._runner, self._session = open_engine(proto, engine, threads)

    def zero_state(self, batch: int = 1) -> list:
        return [np.zeros((s[0], batch, *s[2:]), np.float32) for s in self._state_shapes]

    def _call(self, x: np.ndarray, state: list) -> list:
        feeds = {self.input_name: x, **self.consts}
        feeds.update(zip(self.state_names, state, strict=True))
        try:
            if self.name == "mlx":
                got = self._runner.run(feeds)
                return [np.asarray(got[n]) for n in self.output_names]
            return self._session.run(self.output_names, feeds)
        except EdgeLSTMError:
            raise
        except Exception as exc:  # ORT's own error types; MLX's ValueError/RuntimeError
            from edgelstm.converters import _ort_message

            raise DataError(f"{self.name} failed on a step of {x.shape[1]} samples: "
                            f"{_ort_message(exc)}") from None

    def step(self, x: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """One model step: ``x`` ``(B, M + N)``; returns ``(B, C)`` and the new state."""
        x = np.ascontiguousarray(x, np.float32)
        state = [np.ascontiguousarray(s, np.float32) for s in state]
        if self.batch_one and len(x) > 1:  # run the streams one at a time
            rows = [self.step(x[b:b + 1], [s[:, b:b + 1] for s in state]) for b in range(len(x))]
            return (np.concatenate([r[0] for r in rows]),
                    [np.concatenate([r[1][k] for r in rows], axis=1) for k in range(len(state))])
        out = self._call(x, state)
        y = np.asarray(out[0], np.float32)
        if y.ndim == 0 or y.shape[0] != len(x):
            raise UnsupportedError(f"output {self.output_names[0]!r} has shape {y.shape}; "
                                   f"expected the batch ({len(x)}) first")
        return y.reshape(len(x), -1), [np.asarray(s, np.float32) for s in out[1:]]

    def run(self, x: np.ndarray, state: list) -> tuple[np.ndarray, list]:
        """``T`` steps: ``x`` ``(B, T, M + N)``; returns ``(B, T, C)`` and the final state."""
        rows = []
        for t in range(x.shape[1]):
            y, state = self.step(x[:, t], state)
            rows.append(y)
        if not rows:
            return np.zeros((x.shape[0], 0, 0), np.float32), state
        return np.stack(rows, axis=1), state


def _is_float(vi) -> bool:
    return vi.type.tensor_type.elem_type in (1, 10, 11, 16)  # float, float16, double, bfloat16


def _cast(name: str, value, vi, helper) -> np.ndarray:
    """``value`` as input ``name`` declares it (type; shape when it has one element)."""
    t = vi.type.tensor_type
    arr = np.asarray(value).astype(helper.tensor_dtype_to_np_dtype(t.elem_type))
    if t.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else 1 for d in t.shape.dim]
        if arr.size == int(np.prod(shape, dtype=np.int64)):
            arr = arr.reshape(shape)
        elif arr.size != 1 or len(shape) != arr.ndim:
            raise ConfigError(f"--const {name}: {arr.size} values do not fit input {name!r} "
                              f"of rank {len(shape)}")
    return arr


def _state_shape(vi, file: str) -> list[int]:
    dims = vi.type.tensor_type.shape.dim
    if len(dims) < 2:
        raise UnsupportedError(f"{file}: state input {vi.name!r} has rank {len(dims)}; streaming "
                               "takes states with the batch on axis 1, e.g. (layers, batch, "
                               "hidden)")
    shape = []
    for k, d in enumerate(dims):
        if k == 1:
            shape.append(0)
        elif d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        else:
            raise UnsupportedError(f"{file}: state input {vi.name!r} dim {k} is dynamic; only "
                                   "the batch (axis 1) may be")
    return shape
