"""Execute an ONNX graph with MLX: recurrent ops on edgelstm.nn.recurrent, glue ops on mx.

>>> runner = OnnxMLXRunner("model.onnx")
>>> outputs = runner.run({"x": x})          # {output name: np.ndarray}
>>> outputs = run_onnx("model.onnx", {"x": x})

The runner is built once (attributes checked, constant subgraphs folded,
static recurrent weights converted on first use and cached) and can be run
many times, e.g. by the streaming engine. Anything it does not implement
exactly raises :class:`edgelstm.errors.UnsupportedError` naming the node.
"""

from __future__ import annotations

from os import PathLike
from typing import Any

import mlx.core as mx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgelstm.converters.onnx_exec import qdq_ops, rnn_ops  # noqa: F401  (register ops)
from edgelstm.converters.onnx_exec.ops import DTYPES, REGISTRY, NodeCtx, to_mx, to_np
from edgelstm.errors import ConversionError, DataError, UnsupportedError

__all__ = ["OnnxMLXRunner", "run_onnx", "supported_ops"]

_DEFAULT_DOMAINS = ("", "ai.onnx")


def supported_ops() -> list[str]:
    """Names of the ops the runner executes (``domain.Op`` outside the default domain)."""
    return sorted(op if not dom else f"{dom}.{op}" for dom, op in REGISTRY)


def _load(model: onnx.ModelProto | str | PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as e:  # protobuf raises assorted types on bad files
        raise ConversionError(f"cannot read ONNX model {str(model)!r}: {e}") from e


class OnnxMLXRunner:
    """An ONNX model prepared for repeated execution with MLX.

    Args:
        model: a ``ModelProto`` or a path to a ``.onnx`` file.

    Attributes:
        input_names: graph inputs that must be fed (those without an initializer).
        optional_input_names: graph inputs with an initializer as default value.
        output_names: graph outputs, in graph order.

    Raises:
        UnsupportedError: an op, attribute or attribute value is not implemented.
        ConversionError: the file cannot be read.
    """

    def __init__(self, model: onnx.ModelProto | str | PathLike):
        model = _load(model)
        graph = model.graph
        self.opsets = {
            ("" if o.domain in _DEFAULT_DOMAINS else o.domain): o.version
            for o in model.opset_import
        }
        inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.optional_input_names = [i.name for i in graph.input if i.name in inits]
        self.output_names = [o.name for o in graph.output]
        self._input_types = {
            i.name: i.type.tensor_type.elem_type
            for i in graph.input
            if i.type.HasField("tensor_type")
        }
        self._defaults = {n: inits[n] for n in self.optional_input_names}
        # static values: initializers that cannot be overridden, plus folded constants
        self._consts: dict[str, Any] = {k: v for k, v in inits.items() if k not in self._defaults}
        self._plan: list[tuple[NodeCtx, Any]] = []
        self._known = set(inits) | set(self.input_names)
        for node in graph.node:
            self._prepare(node)

    def _prepare(self, node) -> None:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        ctx = NodeCtx(node=node, opset=self.opsets.get(domain, 1))
        entry = REGISTRY.get((domain, node.op_type))
        if entry is None:
            where = f" (domain '{domain}')" if domain else ""
            raise UnsupportedError(f"{ctx.label}: op '{node.op_type}'{where} is not supported")
        fn, allowed = entry
        for name in node.input:
            if name and name not in self._known:
                raise ConversionError(f"{ctx.label}: input '{name}' is not produced before use")
        self._known.update(node.output)
        for attr in node.attribute:
            if attr.name not in allowed:
                raise UnsupportedError(f"{ctx.label}: attribute '{attr.name}' is not supported")
            ctx.attrs[attr.name] = helper.get_attribute_value(attr)
        ctx.static = tuple(n == "" or n in self._consts for n in node.input)
        if all(ctx.static) and (node.input or node.op_type == "Constant"):
            outs = fn(ctx, [self._consts.get(n) for n in node.input])
            for name, v in zip(node.output, outs, strict=False):
                if name:
                    self._consts[name] = to_np(v)
            return
        self._plan.append((ctx, fn))

    def _feed(self, name: str, value) -> mx.array:
        arr = np.asarray(value)
        want = DTYPES.get(self._input_types.get(name, 0))
        if want is not None and arr.dtype != want[0]:
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise DataError(f"input '{name}': cannot use dtype {arr.dtype}")
            arr = arr.astype(want[0])
        return mx.array(arr)

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run the graph.

        Args:
            feeds: input name -> array (numpy or MLX). Every name in
                ``input_names`` is required; names in ``optional_input_names``
                override their initializer.

        Returns:
            Output name -> numpy array, for every graph output.

        Raises:
            DataError: a required input is missing or a name is unknown.
        """
        return {k: to_np(v) for k, v in self.run_mx(feeds).items()}

    def run_mx(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Like :meth:`run`, but leaves outputs as MLX arrays (evaluated)."""
        known = set(self.input_names) | set(self.optional_input_names)
        unknown = sorted(set(feeds) - known)
        if unknown:
            raise DataError(f"unknown input(s) {unknown}; the model takes {sorted(known)}")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise DataError(f"missing input(s) {missing}")
        env: dict[str, Any] = dict(self._consts)
        env.update(self._defaults)
        for name, value in feeds.items():
            env[name] = self._feed(name, value)
        for ctx, fn in self._plan:
            ins = [env[n] if n else None for n in ctx.node.input]
            outs = fn(ctx, ins)
            for name, v in zip(ctx.node.output, outs, strict=False):
                if name:
                    env[name] = v
        result = {n: env[n] for n in self.output_names}
        result = {n: to_mx(v) for n, v in result.items()}
        mx.eval(list(result.values()))
        return result


def run_onnx(
    model_or_path: onnx.ModelProto | str | PathLike, feeds: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Execute an ONNX model once with MLX.

    Args:
        model_or_path: a ``ModelProto`` or a path to a ``.onnx`` file.
        feeds: input name -> array.

    Returns:
        Output name -> numpy array, by graph output name.
    """
    return OnnxMLXRunner(model_or_path).run(feeds)
