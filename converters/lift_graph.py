"""Graph surgery for :mod:`lift_cells`: find Loop/Scan/step cells, emit LSTM/GRU nodes.

The Loop analysis proves how many steps the loop runs before it lifts it:
the body's condition must be ``Less`` tests on a counter that starts at a
constant and adds 1 each step (or on the iteration number), joined by
``And``, against bounds that are constants or ``Shape(x)[0]`` of the very
tensor the body gathers ``x_t`` from; the trip count ``M`` likewise. That is
what tf2onnx writes for Keras's ``while_loop``
(``And(Less(iter, max_iterations), Less(time + 1, time_steps))``). When the
proven count is a constant smaller than ``x``'s static length (or the length
is not static), ``x`` is sliced to it; when it equals the declared static
length no slice is added (inputs of another length violate the declared
shape).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelstm.converters import lift_algebra as A
from edgelstm.converters.lift_cells import (
    Lifted,
    cell_from_gru,
    cell_from_lstm,
    evaluate,
)

_DEFAULT = ("", "ai.onnx")


def _subgraphs(node):
    return [a.g for a in node.attribute if a.type == a.GRAPH] + \
        [g for a in node.attribute if a.type == a.GRAPHS for g in a.graphs]


def _walk_graphs(graph):
    yield graph
    for n in graph.node:
        for g in _subgraphs(n):
            yield from _walk_graphs(g)


class _Ctx:
    """Model-wide facts: ranks/dims/types from shape inference, names in use, constants."""

    def __init__(self, model):
        import onnx

        self.opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT), 1)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # inference is a hint only
            inferred = model
        self.shapes: dict = {}
        self.types: dict = {}
        self.names: set = set()
        for g in _walk_graphs(inferred.graph):
            for vi in list(g.input) + list(g.output) + list(g.value_info):
                t = vi.type.tensor_type
                if vi.type.HasField("tensor_type"):
                    self.types.setdefault(vi.name, t.elem_type)
                    if t.HasField("shape"):
                        self.shapes.setdefault(vi.name, [d.dim_value if d.HasField("dim_value")
                                                         else None for d in t.shape.dim])
        for g in _walk_graphs(model.graph):
            self.names.update(i.name for i in g.input)
            self.names.update(t.name for t in g.initializer)
            for n in g.node:
                self.names.update(n.input)
                self.names.update(n.output)
                if n.name:
                    self.names.add(n.name)
        self.counter = 0

    def rank(self, name):
        s = self.shapes.get(name)
        return None if s is None else len(s)

    def dim(self, name, axis):
        s = self.shapes.get(name)
        return None if s is None or axis >= len(s) else s[axis]

    def same_batch(self, states, x, x_axis) -> bool:
        """False when a state's batch may broadcast against x's (a fused node would refuse).

        Op by op, ``h [1, H]`` broadcasts against ``x [B, I]``; an LSTM/GRU node needs
        equal batches. Only a provable mismatch or a static 1 facing another size counts.
        """
        b = self.dim(x, x_axis)
        for s in states:
            d = self.dim(s, 0) if s else None
            if d is not None and b is not None and d != b:
                return False
            if (d == 1) != (b == 1) and (d == 1 or b == 1):
                return False
        return True

    def unique(self, base: str) -> str:
        while True:
            self.counter += 1
            name = f"{base}__lift{self.counter}"
            if name not in self.names:
                self.names.add(name)
                return name


@dataclass
class _Plan:
    nodes: list
    inits: list
    record: Lifted


# --- emission ---------------------------------------------------------------------------


class _Emitter:
    def __init__(self, ctx: _Ctx, base: str):
        from onnx import helper, numpy_helper

        self.ctx, self.base, self.h, self.nh = ctx, base, helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []

    def const(self, value, tag) -> str:
        name = self.ctx.unique(f"{self.base}/{tag}")
        self.inits.append(self.nh.from_array(np.asarray(value), name))
        return name

    def node(self, op, ins, outs=None, **attrs):
        outs = outs or [self.ctx.unique(f"{self.base}/{op}")]
        self.nodes.append(self.h.make_node(op, ins, outs, name=self.ctx.unique(
            f"{self.base}/{op}"), **attrs))
        return outs[0] if len(outs) == 1 else outs

    def _axes(self, op, x, axes, out=None):
        outs = [out] if out else None
        if self.ctx.opset >= 13:
            return self.node(op, [x, self.const(np.array(axes, np.int64), "axes")], outs)
        return self.node(op, [x], outs, axes=axes)

    def unsqueeze(self, x, axes, out=None):
        return self._axes("Unsqueeze", x, axes, out)

    def squeeze(self, x, axes, out=None):
        return self._axes("Squeeze", x, axes, out)

    def head(self, x, count: int):
        """``x[:count]`` along axis 0."""
        if self.ctx.opset >= 10:
            c = [self.const(np.array(v, np.int64), t) for v, t in
                 (([0], "starts"), ([count], "ends"), ([0], "axes"))]
            return self.node("Slice", [x, *c])
        return self.node("Slice", [x], starts=[0], ends=[count], axes=[0])

    def rnn(self, cell, X, h0, c0, want_y: bool):
        """The LSTM/GRU node; returns (Y or None, Y_h, Y_c or None) tensor names."""
        name = self.ctx.unique(f"{self.base}/{cell.kind.upper()}")
        ins = [X, self.const(cell.W, "W"), self.const(cell.R, "R"), self.const(cell.B, "B"), ""]
        ins += [h0 or ""] + ([c0 or ""] if cell.kind == "lstm" else [])
        while ins and not ins[-1]:
            ins.pop()
        outs = [self.ctx.unique(f"{name}/Y") if want_y else "", self.ctx.unique(f"{name}/Y_h")]
        if cell.kind == "lstm":
            outs.append(self.ctx.unique(f"{name}/Y_c"))
        attrs = {"hidden_size": cell.hidden}
        if cell.kind == "gru":
            attrs["linear_before_reset"] = int(cell.lbr)
        self.nodes.append(self.h.make_node(cell.kind.upper(), ins, outs, name=name, **attrs))
        self.rnn_name = name
        return (outs[0] or None, outs[1], outs[2] if len(outs) > 2 else None)


def _record(em: _Emitter, cell, form, replaced) -> Lifted:
    return Lifted(cell.kind, form, em.rnn_name, list(replaced), cell.hidden, cell.lbr)


# --- shared by Loop and Scan --------------------------------------------------------------


def _root(name, prod, ops=("Identity",)):
    while name in prod and prod[name].op_type in ops and prod[name].domain in _DEFAULT:
        name = prod[name].input[0]
    return name


def _is_one(v) -> bool:
    return isinstance(v, A.Const) and v.value.size == 1 and float(np.ravel(v.value)[0]) == 1


def _body_states(body, ctx, outer, n_lead, n_vars, init_names, allow_counters):
    """Classify carried values and find the cell.

    Returns ``(env, prod, kinds, cell, j_h, j_c)`` or None. ``kinds[j]`` is
    ``"pass"``, ``("counter", t0)``, ``"h"`` or ``"c"``.
    """
    vin = [i.name for i in body.input[n_lead:n_lead + n_vars]]
    vout = [o.name for o in body.output[(1 if n_lead == 2 else 0):][:n_vars]]
    prod = {o: n for n in body.node for o in n.output}
    consts = {k: v for k, v in outer.items()}
    for t in body.initializer:
        from onnx import numpy_helper

        consts[t.name] = numpy_helper.to_array(t)
    for i in body.input:
        consts.pop(i.name, None)
    kinds: list = [None] * n_vars
    for j in range(n_vars):
        if _root(vout[j], prod) == vin[j]:
            kinds[j] = "pass"
            if init_names[j] in outer:
                consts[vin[j]] = outer[init_names[j]]
    env = evaluate(body.node, consts, ctx.opset)
    cell_outs = {}
    for j in range(n_vars):
        if kinds[j] == "pass":
            continue
        p = prod.get(_root(vout[j], prod))
        if allow_counters and p is not None and p.op_type == "Add" and len(p.input) == 2 \
                and init_names[j] in outer:
            a, b = (env.get(n) for n in p.input)
            other = [n for n, v in zip(p.input, (a, b), strict=True) if not _is_one(v)]
            t0 = np.asarray(outer[init_names[j]])
            if other == [vin[j]] and t0.size == 1 and np.issubdtype(t0.dtype, np.integer):
                kinds[j] = ("counter", int(t0.reshape(-1)[0]))
                continue
        v = env.get(vout[j])
        if isinstance(v, (A.GRUOut, A.LSTMOut)):
            kinds[j] = "h"
        elif isinstance(v, A.CNew):
            kinds[j] = "c"
        else:
            return None
        cell_outs[kinds[j]] = cell_outs.get(kinds[j], []) + [j]
    hs, cs = cell_outs.get("h", []), cell_outs.get("c", [])
    if len(hs) != 1 or len(cs) > 1:
        return None
    j_h, j_c = hs[0], (cs[0] if cs else None)
    hv = env[vout[j_h]]
    if isinstance(hv, A.GRUOut):
        if j_c is not None:
            return None
        cell = cell_from_gru(hv, h=vin[j_h])
    else:
        if j_c is None or env[vout[j_c]] is not hv.cnew:
            return None
        cell = cell_from_lstm(hv, h=vin[j_h], c=vin[j_c])
    if cell is None:
        return None
    for name in (init_names[j_h], init_names[j_c] if j_c is not None else None):
        if name is not None and ctx.rank(name) not in (2, None):
            return None
    return env, prod, kinds, cell, j_h, j_c


def _unused(ctx_used, names, graph_outputs) -> bool:
    return all(not n or (n not in ctx_used and n not in graph_outputs) for n in names)


def _scan_outputs_ok(env, vout_scan, hv) -> bool:
    return all(env.get(s) is hv for s in vout_scan)


def _float_input(ctx, name) -> bool:
    from onnx import TensorProto

    return ctx.types.get(name, TensorProto.FLOAT) == TensorProto.FLOAT


def lift_model(model, forms):
    """See :func:`edgelstm.converters.lift_cells.lift_cells`."""
    import onnx

    from edgelstm.converters import lift_loops, lift_steps

    ctx = _Ctx(model)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    lifted: list = []
    if "loop" in forms or "scan" in forms:
        overridable = {i.name for i in g.input}
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer
                 if t.name not in overridable}
        env = evaluate(g.node, inits, ctx.opset)
        outer = {k: v.value for k, v in env.items() if isinstance(v, A.Const)}
        prod = {o: n for n in g.node for o in n.output}
        used = {i for gg in _walk_graphs(g) for n in gg.node for i in n.input}
        graph_outputs = {o.name for o in g.output}
        nodes = []
        for node in g.node:
            plan = None
            if node.domain in _DEFAULT and node.op_type == "Loop" and "loop" in forms:
                plan = lift_loops.lift_loop(node, ctx, outer, prod, used, graph_outputs)
            elif node.domain in _DEFAULT and node.op_type == "Scan" and "scan" in forms:
                plan = lift_loops.lift_scan(node, ctx, outer, used, graph_outputs)
            if plan is None:
                if "step" in forms and node.domain in _DEFAULT and \
                        node.op_type in ("Loop", "Scan"):
                    # the loop stays, but its body's step can still run as one fused cell
                    body = lift_loops._body(node)
                    if body is not None:
                        label = node.name or (node.output[0] if node.output else "?")
                        where = f"{node.op_type} '{label}' body"
                        lifted += lift_steps.lift_steps(body, ctx, outer, where)
                nodes.append(node)
                continue
            nodes.extend(plan.nodes)
            g.initializer.extend(plan.inits)
            lifted.append(plan.record)
        del g.node[:]
        g.node.extend(nodes)
    if "step" in forms:
        lifted += lift_steps.lift_steps(g, ctx)
    if not lifted:
        return model, []
    return m, lifted
