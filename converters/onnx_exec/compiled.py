"""Run a prepared graph's plan as few MLX dispatches as it can: ``mx.compile``d segments.

Every MLX op on the CPU costs a dispatch, and a plan run op by op also costs
Python per node, so a streaming step of a small model is overhead-bound. Here
the plan is cut into *segments*: maximal runs of nodes that can be traced by
``mx.compile`` (all of them when nothing reads tensor data on the host), and
single *eager* nodes between them (``If``, whose condition is read on the
host, and any node found to read a traced value on the host, such as a
``Reshape`` whose target shape is computed from data, or a ``Loop`` whose
condition changes). A ``Scan``, and a ``Loop`` with a shape-derived trip count
and a pass-through condition, are traced with the body unrolled; subgraphs of
eager nodes get compiled plans of their own.

A compiled segment is keyed by its input signature: shapes and dtypes of its
MLX inputs, the values of its small numpy inputs (shape arithmetic) and
which overridable initializers were left at their defaults, so
shape computations (``Shape`` -> ``Gather`` -> ``Concat`` -> ``Reshape``) are
folded into the trace once per signature. A signature runs op by op the first
``compile_after`` times it is seen (one-shot calls never pay for a trace; the
first call also fills the ops' static caches, such as converted recurrent
weights) and compiled from then on. Tracing that fails marks the node that
failed eager and re-cuts the plan; the call itself then runs op by op, so a
failed trace never changes a result.
"""

from __future__ import annotations

import threading
from collections import ChainMap
from typing import Any

import mlx.core as mx
import numpy as np

# numpy inputs at most this big are part of a segment's key (shape values);
# bigger ones (overridable weights) are passed to the trace as MLX arrays
_SMALL = 64
# signatures remembered per segment (the oldest is dropped first): a caller with
# ever-new shapes must not grow the cache of traces without bound
MAX_SIGNATURES = 32
# depth > 0 while this thread traces a segment: plans of subgraphs met then run inline
# (no nested compile), so a Scan's body is unrolled into the enclosing trace
_TRACE = threading.local()


def _tracing() -> bool:
    return getattr(_TRACE, "depth", 0) > 0


def subgraph_reads(graphs: dict) -> set[str]:
    """Outer-scope names read in ``graphs`` (prepared subgraphs), nested ones included."""
    names: set[str] = set()
    for g in graphs.values():
        local = set(g.input_names) | set(g.optional_input_names) | set(g.consts.maps[0])
        reads = set(g.output_names)
        for ctx, _ in g.plan:
            reads |= node_reads(ctx)
            local.update(n for n in ctx.node.output if n)
        names |= reads - local
    return names


def node_reads(ctx) -> set[str]:
    """Names a node reads: its inputs, and outer-scope names of its subgraphs."""
    reads = {n for n in ctx.node.input if n}
    return reads | subgraph_reads(ctx.graphs) if ctx.graphs else reads


def remove_dead(plan: list, outputs: list[str]) -> list:
    """``plan`` without the nodes none of whose outputs reach ``outputs``."""
    live = set(outputs)
    kept = []
    for ctx, fn in reversed(plan):
        if any(n in live for n in ctx.node.output if n):
            kept.append((ctx, fn))
            live |= node_reads(ctx)
    return kept[::-1]


class _Segment:
    """Nodes ``plan[start:stop]``; ``eager`` runs them op by op always."""

    def __init__(self, plan, start, stop, eager, consts):
        self.nodes = plan[start:stop]
        self.start = start
        self.eager = eager
        produced: set[str] = set()
        reads: list[str] = []
        for ctx, _ in self.nodes:
            for n in sorted(node_reads(ctx)):
                if n not in produced and n not in reads:
                    reads.append(n)
            produced.update(n for n in ctx.node.output if n)
        self.produced = produced
        # static names (initializers, folded constants) are bound by reference, never keyed
        self.inputs = [n for n in reads if consts.get(n) is None]
        self.outputs: list[str] = []  # set by the plan: produced here and read later
        self.cache: dict[tuple, list] = {}  # key -> [calls seen, compiled fn, host outputs]


class CompiledPlan:
    """A plan (list of ``(ctx, fn)``) run as compiled segments; see the module docstring.

    Args:
        plan: the prepared nodes in order (dead ones already removed).
        outputs: names the caller reads after the run (graph outputs).
        consts: static values (name -> numpy), as the graph's ``consts``.
        compile_after: op-by-op calls of a signature before it is compiled.
        defaults: initializer defaults of overridable inputs (name -> numpy); when
            not overridden they are bound into the trace like constants.
    """

    def __init__(self, plan: list, outputs: list[str], consts, compile_after: int = 1,
                 defaults: dict | None = None):
        self.plan = plan
        self.output_names = list(outputs)
        self.consts = consts
        self.defaults = defaults or {}
        self.compile_after = compile_after
        self.enabled = True
        # If reads its condition on the host; a Scan (trip count from shapes) and a Loop
        # are traced with the body unrolled, unless a trace finds a host read (a Loop's
        # changing condition, a data-dependent trip count, a body reading data)
        self.eager_nodes = {i for i, (ctx, _) in enumerate(plan) if ctx.graphs
                            and ctx.node.op_type not in ("Scan", "Loop")}
        self._cut()

    def _cut(self) -> None:
        """Segments from ``eager_nodes``; each one's outputs are the names read later."""
        segs, start = [], 0
        for i in range(len(self.plan) + 1):
            if i == len(self.plan) or i in self.eager_nodes:
                if start < i:
                    segs.append(_Segment(self.plan, start, i, False, self.consts))
                if i < len(self.plan):
                    segs.append(_Segment(self.plan, i, i + 1, True, self.consts))
                start = i + 1
        needed = set(self.output_names)
        for seg in reversed(segs):
            seg.outputs = sorted(seg.produced & needed)
            needed |= set(seg.inputs)
        self.segments = segs

    @property
    def num_compiled(self) -> int:
        """Compiled segment functions built so far (all signatures)."""
        return sum(e[1] is not None for s in self.segments for e in s.cache.values())

    def run(self, env) -> None:
        """Run every segment in ``env`` (a ChainMap with inputs and outer names bound)."""
        for seg in list(self.segments):
            if seg.eager or not self.enabled or _tracing():  # a subgraph inside a trace: inline
                _run_nodes(seg.nodes, env)
            else:
                self._run_segment(seg, env)

    def _run_segment(self, seg: _Segment, env) -> None:
        args, host, key = [], {}, []
        for n in seg.inputs:
            v = env[n]
            if isinstance(v, mx.array):
                args.append(v)
                key.append((n, tuple(v.shape), v.dtype))
            elif v is None:
                host[n] = None
                key.append((n, None))
            elif v is self.defaults.get(n):  # an initializer default nobody overrode
                host[n] = v
                key.append((n, "default"))
            else:
                a = np.asarray(v)
                if a.size <= _SMALL and a.dtype != object:
                    host[n] = a
                    key.append((n, a.dtype.str, a.shape, a.tobytes()))
                else:  # a big overridable initializer: traced like any tensor
                    args.append(mx.array(a))
                    key.append((n, a.shape, a.dtype.str, "traced"))
        key = tuple(key)
        entry = seg.cache.get(key)
        if entry is None:
            if len(seg.cache) >= MAX_SIGNATURES:
                del seg.cache[next(iter(seg.cache))]
            entry = seg.cache[key] = [0, None, {}]
        entry[0] += 1
        if entry[0] <= self.compile_after:
            _run_nodes(seg.nodes, env)
            return
        if entry[1] is None:
            entry[1] = self._trace_fn(seg, host, entry[2])
        failed: list[int] = []
        try:
            outs = entry[1](*args, failed=failed)
        except Exception:
            # a node read a traced value on the host (or MLX cannot trace it): run it
            # eagerly from now on; this call goes op by op, so its result is unchanged
            if failed:
                self.eager_nodes.add(seg.start + failed[0])
                self._cut()
            else:
                self.enabled = False
            _run_nodes(seg.nodes, env)
            return
        arrays = iter(outs)
        for n in seg.outputs:
            env[n] = entry[2][n] if n in entry[2] else next(arrays)

    def _trace_fn(self, seg: _Segment, host: dict, host_outs: dict):
        """The segment as ``fn(*mx_inputs, failed) -> [mx outputs]`` under ``mx.compile``."""
        names = [n for n in seg.inputs if n not in host]
        consts = self.consts
        box: dict[str, Any] = {}

        def body(*arrays):
            env = ChainMap({}, {**host, **dict(zip(names, arrays, strict=True))}, consts)
            _TRACE.depth = getattr(_TRACE, "depth", 0) + 1
            try:
                for k, (ctx, fn) in enumerate(seg.nodes):
                    try:
                        _run_nodes([(ctx, fn)], env)
                    except Exception:
                        box["failed"] = k
                        raise
            finally:
                _TRACE.depth -= 1
            out = []
            host_outs.clear()
            for n in seg.outputs:
                v = env[n]
                if isinstance(v, mx.array):
                    out.append(v)
                else:  # numpy (shape values) or None: fixed for this signature
                    host_outs[n] = v
            return out

        compiled = mx.compile(body)

        def call(*arrays, failed: list):
            box.pop("failed", None)
            try:
                return compiled(*arrays)
            finally:
                if "failed" in box:
                    failed.append(box["failed"])

        return call


def _run_node(ctx, fn, env) -> None:
    ins = [env[n] if n else None for n in ctx.node.input]
    outs = fn(ctx, ins)
    for name, v in zip(ctx.node.output, outs, strict=False):
        if name:
            env[name] = v


def _run_nodes(nodes, env) -> None:
    for ctx, fn in nodes:
        if ctx.graphs:
            ctx.scope = env
        try:
            _run_node(ctx, fn, env)
        finally:
            ctx.scope = None
