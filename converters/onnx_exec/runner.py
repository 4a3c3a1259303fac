"""Execute an ONNX graph with MLX: recurrent ops on edgelstm.nn.recurrent, the rest on mx.

>>> runner = OnnxMLXRunner("model.onnx")
>>> outputs = runner.run({"x": x})          # {output name: np.ndarray}
>>> outputs = run_onnx("model.onnx", {"x": x})

The runner is built once (attributes checked, constant subgraphs folded,
``Shape``/``Size`` of tensors shape inference proves static folded, nodes
that reach no output dropped, static recurrent weights converted on
first use and cached) and can be run many times, e.g. by the streaming
engine: from the second call with the same input shapes on, the plan runs as
``mx.compile``d segments (:mod:`.compiled`), recurrent nodes on the fused
kernels inside them. The call that compiles a signature pays for the trace and,
for fused elementwise kernels MLX has not built on this machine before, its C++
JIT (about a second each the first time; cached on disk after);
``compile_after=None`` never compiles. Anything it does not implement
exactly raises :class:`edgelstm.errors.UnsupportedError` naming the node.
Subgraphs of ``If``/``Loop``/``Scan`` are prepared the same way and see the
names of every enclosing graph (outer scope).
"""

from __future__ import annotations

from collections import ChainMap
from os import PathLike
from typing import Any

import mlx.core as mx
import numpy as np
import onnx
from onnx import AttributeProto, helper, numpy_helper

from edgelstm.converters.lift_cells import lift_cells
from edgelstm.converters.onnx_exec import (  # noqa: F401  (register ops)
    compiled,
    ops_control,
    ops_elementwise,
    ops_nn,
    ops_reduce,
    ops_resize,
    ops_shape,
    ops_signal,
    ops_tensor,
    qdq_ops,
    rnn_ops,
)
from edgelstm.converters.onnx_exec.ops import (
    DTYPES,
    REGISTRY,
    NodeCtx,
    check_type,
    freeze,
    to_mx,
    to_np,
    type_name,
)
from edgelstm.errors import ConversionError, DataError, UnsupportedError

__all__ = ["OnnxMLXRunner", "run_onnx", "supported_ops"]

_DEFAULT_DOMAINS = ("", "ai.onnx")
# attributes naming an output element type, checked at load time
_TYPE_ATTRS = ("to", "dtype", "output_dtype", "output_datatype")


def supported_ops() -> list[str]:
    """Sorted names of the ops the runner executes (``domain.Op`` outside the default domain)."""
    return sorted(op if not dom else f"{dom}.{op}" for dom, op in REGISTRY)


def _load(model: onnx.ModelProto | str | PathLike) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    try:
        return onnx.load(str(model))
    except Exception as e:  # protobuf raises assorted types on bad files
        raise ConversionError(f"cannot read ONNX model {str(model)!r}: {e}") from e


def _check_value_info(vi, what: str) -> None:
    kind = vi.type.WhichOneof("value")
    if kind is None:
        return
    if kind != "tensor_type":
        kind = kind.removesuffix("_type")
        raise UnsupportedError(f"{what} '{vi.name}': {kind} values are not supported")
    check_type(vi.type.tensor_type.elem_type, f"{what} '{vi.name}'")


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Names of the top-level graph whose shapes ONNX shape inference proves static."""
    if not any(n.op_type in ("Shape", "Size") for n in model.graph.node):
        return {}  # nothing would fold: skip the inference (it copies the model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is an optimisation; graphs it cannot read still run
        return {}
    g = inferred.graph
    out = {}
    for vi in [*g.input, *g.value_info, *g.output]:
        t = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and t.HasField("shape") and all(
                d.HasField("dim_value") for d in t.shape.dim):
            out[vi.name] = tuple(d.dim_value for d in t.shape.dim)
    return out


class _Graph:
    """A graph or subgraph prepared for execution.

    Args:
        graph: the ``GraphProto``.
        opsets: domain -> opset version of the model.
        outer_known: names visible from enclosing graphs.
        outer_consts: static values of enclosing graphs (name -> numpy).
        compile_after: as :class:`OnnxMLXRunner`'s, for this graph and its subgraphs
            (``None``: always op by op).
        static_shapes: name -> static shape from ONNX shape inference; ``Shape`` and
            ``Size`` of those names fold to constants at load time.
    """

    def __init__(self, graph, opsets: dict[str, int], outer_known=frozenset(), outer_consts=None,
                 compile_after: int | None = None, static_shapes: dict | None = None):
        self.opsets = opsets
        self.compile_after = compile_after
        # name -> shape ONNX shape inference proved static (top-level graph only)
        self.static_shapes = static_shapes or {}
        self.shapes_folded = False
        for t in graph.initializer:
            check_type(t.data_type, f"initializer '{t.name}'")
        for vi in graph.input:
            _check_value_info(vi, "input")
        for vi in graph.output:
            _check_value_info(vi, "output")
        for vi in graph.value_info:
            _check_value_info(vi, "value")
        inits = {t.name: freeze(numpy_helper.to_array(t)) for t in graph.initializer}
        self.input_names = [i.name for i in graph.input if i.name not in inits]
        self.optional_input_names = [i.name for i in graph.input if i.name in inits]
        self.output_names = [o.name for o in graph.output]
        self.input_types = {
            i.name: i.type.tensor_type.elem_type
            for i in graph.input
            if i.type.HasField("tensor_type")
        }
        self.defaults = {n: inits[n] for n in self.optional_input_names}
        # static values: initializers that cannot be overridden, plus folded constants
        own = {k: v for k, v in inits.items() if k not in self.defaults}
        self.consts = ChainMap(own, outer_consts if outer_consts is not None else {})
        # names bound by this graph hide outer constants of the same name
        for n in list(self.input_names) + list(self.optional_input_names):
            if n in self.consts and n not in own:
                own[n] = None
        self.plan: list[tuple[NodeCtx, Any]] = []
        self.known = set(outer_known) | set(inits) | set(self.input_names)
        for node in graph.node:
            self._prepare(node)
        for name in self.output_names:
            if name not in self.known:
                raise ConversionError(
                    f"graph output '{name}' is not produced by any node, input or initializer"
                )
        self._own = {k: v for k, v in own.items() if v is not None}
        self.plan = compiled.remove_dead(self.plan, self.output_names)
        self.compiled = None if compile_after is None else compiled.CompiledPlan(
            self.plan, self.output_names, self.consts, compile_after, self.defaults)

    def _is_static(self, name: str) -> bool:
        return name == "" or self.consts.get(name) is not None

    def _prepare(self, node) -> None:
        domain = "" if node.domain in _DEFAULT_DOMAINS else node.domain
        ctx = NodeCtx(node=node, opset=self.opsets.get(domain, 1))
        entry = REGISTRY.get((domain, node.op_type))
        if entry is None:
            where = f" (domain '{domain}')" if domain else ""
            raise UnsupportedError(f"{ctx.label}: op '{node.op_type}'{where} is not supported")
        fn, allowed = entry
        for name in node.input:
            if name and name not in self.known:
                raise ConversionError(f"{ctx.label}: input '{name}' is not produced before use")
        for attr in node.attribute:
            if attr.name not in allowed:
                raise UnsupportedError(f"{ctx.label}: attribute '{attr.name}' is not supported")
            if attr.type == AttributeProto.GRAPH:
                ctx.graphs[attr.name] = _Graph(attr.g, self.opsets, self.known, self.consts,
                                               self.compile_after)
                continue
            if attr.type == AttributeProto.TENSOR:
                check_type(attr.t.data_type, f"{ctx.label}: attribute '{attr.name}'")
            elif attr.name in _TYPE_ATTRS and attr.type == AttributeProto.INT:
                check_type(attr.i, f"{ctx.label}: attribute '{attr.name}'")
            ctx.attrs[attr.name] = helper.get_attribute_value(attr)
        self.known.update(node.output)
        ctx.static = tuple(self._is_static(n) for n in node.input)
        foldable = node.input or node.op_type == "Constant"
        if node.op_type in ("Shape", "Size") and node.input[0] in self.static_shapes:
            # the shape is known at load: fold it (feeds are checked against the graph's
            # declared dims, which the inference started from)
            shape = self.static_shapes[node.input[0]]
            outs = fn(ctx, [np.broadcast_to(np.zeros((), np.bool_), shape)])
            self.consts.maps[0][node.output[0]] = freeze(to_np(outs[0]))
            self.shapes_folded = True
            return
        if all(ctx.static) and foldable and not ctx.graphs:
            outs = fn(ctx, [self.consts.get(n) if n else None for n in node.input])
            for name, v in zip(node.output, outs, strict=False):
                if name:
                    self.consts.maps[0][name] = freeze(to_np(v))
            return
        self.plan.append((ctx, fn))

    def run(self, env: ChainMap) -> list:
        """Execute the plan in ``env`` (inputs and outer names bound); outputs in graph order."""
        if self.compiled is not None:
            self.compiled.run(env)
            return [env[n] for n in self.output_names]
        for ctx, fn in self.plan:
            ins = [env[n] if n else None for n in ctx.node.input]
            if ctx.graphs:
                ctx.scope = env
            outs = fn(ctx, ins)
            ctx.scope = None
            for name, v in zip(ctx.node.output, outs, strict=False):
                if name:
                    env[name] = v
        return [env[n] for n in self.output_names]

    def scope(self, outer: ChainMap | None, bound: dict) -> ChainMap:
        """A fresh environment: ``bound`` inputs, this graph's constants, then ``outer``."""
        return ChainMap({}, bound, self._own, *(outer.maps if outer is not None else ()))

    def call(self, outer: ChainMap | None, values: list) -> list:
        """Run as a subgraph: ``values`` bind the inputs in order."""
        bound = dict(zip(self.input_names, values, strict=False))
        return self.run(self.scope(outer, bound))


class OnnxMLXRunner:
    """An ONNX model prepared for repeated execution with MLX.

    Args:
        model: a ``ModelProto`` or a path to a ``.onnx`` file.
        lift: replace hand-written LSTM/GRU cells (tf2onnx ``Loop``s, ``Scan``s,
            unrolled steps) by fused recurrent nodes where they match exactly
            (:func:`edgelstm.converters.lift_cells.lift_cells`). Default: True.
        compile_after: op-by-op calls per input signature (shapes, dtypes) before
            that signature runs compiled; ``None`` never compiles.

    Attributes:
        lifted: the cells replaced at load time (``Lifted`` records; empty if none).
        input_names: graph inputs that must be fed (those without an initializer).
        optional_input_names: graph inputs with an initializer as default value.
        output_names: graph outputs, in graph order.

    Raises:
        UnsupportedError: an op, attribute, attribute value or tensor type
            (float8, int4, string, ...) is not implemented.
        ConversionError: the file cannot be read, or a name is used before
            any node, input or initializer produces it.
    """

    def __init__(self, model: onnx.ModelProto | str | PathLike, lift: bool = True,
                 compile_after: int | None = 1):
        model = _load(model)
        model, self.lifted = lift_cells(model) if lift else (model, [])
        self.opsets = {
            ("" if o.domain in _DEFAULT_DOMAINS else o.domain): o.version
            for o in model.opset_import
        }
        self._graph = _Graph(model.graph, self.opsets, compile_after=compile_after,
                             static_shapes=_static_shapes(model))
        self._declared = {
            vi.name: [d.dim_value if d.HasField("dim_value") else None
                      for d in vi.type.tensor_type.shape.dim]
            for vi in model.graph.input
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape")
        }
        self.input_names = self._graph.input_names
        self.optional_input_names = self._graph.optional_input_names
        self.output_names = self._graph.output_names
        self._known = frozenset(self.input_names) | frozenset(self.optional_input_names)
        self._compiled = self._graph.compiled

    def _feed(self, name: str, value) -> mx.array:
        t = self._graph.input_types.get(name, 0)
        want = DTYPES.get(t)
        if isinstance(value, mx.array):
            if want is None or value.dtype == want[1]:
                return value  # no round trip through numpy (streamed states)
            value = to_np(value)
        arr = np.asarray(value)
        if want is not None and arr.dtype != want[0]:
            if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
                raise DataError(f"input '{name}': cannot use dtype {arr.dtype}")
            arr = arr.astype(want[0])
        try:
            return to_mx(arr)
        except UnsupportedError:
            raise DataError(
                f"input '{name}': cannot use dtype {arr.dtype} (declared {type_name(t)})"
            ) from None

    def _check_shape(self, name: str, shape) -> None:
        want = self._declared.get(name)
        if want is None:
            return
        if len(want) != len(shape) or any(w is not None and w != g
                                          for w, g in zip(want, shape, strict=True)):
            dims = ", ".join("?" if w is None else str(w) for w in want)
            raise DataError(f"input '{name}' must have shape ({dims}), got {tuple(shape)}")

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
        known = self._known
        if not known.issuperset(feeds):
            unknown = sorted(set(feeds) - known)
            raise DataError(f"unknown input(s) {unknown}; the model takes {sorted(known)}")
        if not all(n in feeds for n in self.input_names):
            missing = [n for n in self.input_names if n not in feeds]
            raise DataError(f"missing input(s) {missing}")
        bound = dict(self._graph.defaults)
        for name, value in feeds.items():
            bound[name] = v = self._feed(name, value)
            if self._graph.shapes_folded:
                self._check_shape(name, v.shape)
        outs = self._graph.run(self._graph.scope(None, bound))
        result = {n: to_mx(v) for n, v in zip(self.output_names, outs, strict=True)}
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
