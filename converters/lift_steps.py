"""Lift single LSTM/GRU steps written out in the main graph (see :mod:`lift_cells`).

A step reads ``x [B, I]`` and ``h`` (and ``c``) ``[B, H]`` and writes the new
state under its original name(s). The replacement is
``Unsqueeze -> LSTM/GRU (one step) -> Squeeze``, placed where the first of the
new state tensors was computed; the step's own ops are then dropped when
nothing else reads them (an intermediate read elsewhere, e.g. a gate that is
also a graph output, keeps its ops).
"""

from __future__ import annotations

from edgelstm.converters import lift_algebra as A
from edgelstm.converters.lift_cells import cell_from_gru, cell_from_lstm, evaluate
from edgelstm.converters.lift_graph import _Emitter, _float_input, _record, _walk_graphs


def _ancestors(start_nodes, stop: set, prod) -> set:
    """ids of nodes computing ``start_nodes``' inputs, not looking past ``stop`` names."""
    seen, todo = set(), list(start_nodes)
    while todo:
        n = todo.pop()
        if id(n) in seen:
            continue
        seen.add(id(n))
        for i in n.input:
            if i and i not in stop and i in prod:
                todo.append(prod[i])
    return seen


def _find(nodes, ctx, env, prod):
    """Recognised steps: list of (cell, h_new name, c_new name or None)."""
    found, seen = [], set()
    for node in nodes:
        if node.op_type == "Identity":
            continue
        for out in node.output:
            v = env.get(out)
            if not isinstance(v, (A.GRUOut, A.LSTMOut)) or id(v) in seen:
                continue
            seen.add(id(v))
            if isinstance(v, A.GRUOut):
                cell, c_new = cell_from_gru(v), None
            else:
                cell = cell_from_lstm(v)
                c_new = next((n for n, val in env.items() if val is v.cnew
                              and n in prod and prod[n].op_type != "Identity"), None)
                if c_new is None:
                    continue
            if cell is None:
                continue
            leaves = [cell.x, cell.h] + ([cell.c] if cell.c else [])
            if any(ctx.rank(n) != 2 for n in leaves) or not _float_input(ctx, cell.x) or \
                    not ctx.same_batch(leaves[1:], cell.x, 0):
                continue
            found.append((cell, out, c_new))
    return found


def lift_steps(g, ctx, outer_consts=None, where: str = "") -> list:
    """Lift every recognised step of graph ``g`` in place; returns the :class:`Lifted` list.

    ``outer_consts`` (name -> array) are constants a subgraph reads from its
    enclosing graph; ``where`` names the subgraph in the records.
    """
    import onnx

    overridable = {i.name for i in g.input}
    inits = {k: v for k, v in (outer_consts or {}).items() if k not in overridable}
    inits.update({t.name: onnx.numpy_helper.to_array(t) for t in g.initializer
                  if t.name not in overridable})
    nodes = list(g.node)  # one set of wrapper objects: ids stay valid below
    env = evaluate(nodes, inits, ctx.opset)
    prod = {o: n for n in nodes for o in n.output}
    steps = _find(nodes, ctx, env, prod)
    if not steps:
        return []
    order = {id(n): k for k, n in enumerate(nodes)}
    insert: dict = {}
    drop: set = set()
    cell_nodes: set = set()
    plans = []
    for cell, h_new, c_new in steps:
        outs = [prod[h_new]] + ([prod[c_new]] if c_new else [])
        stop = {cell.x, cell.h} | ({cell.c} if cell.c else set()) | set(inits)
        members = _ancestors(outs, stop, prod)
        em = _Emitter(ctx, outs[0].name or h_new)
        X = em.unsqueeze(cell.x, [0])
        h0 = em.unsqueeze(cell.h, [0])
        c0 = em.unsqueeze(cell.c, [0]) if cell.c else None
        _, Yh, Yc = em.rnn(cell, X, h0, c0, want_y=False)
        em.squeeze(Yh, [0], h_new)
        if c_new:
            em.squeeze(Yc, [0], c_new)
        at = min(order[id(n)] for n in outs)
        insert.setdefault(at, []).extend(em.nodes)
        drop.update(id(n) for n in outs)
        cell_nodes |= members
        plans.append((em, cell, members))
    new = []
    for k, n in enumerate(nodes):
        new.extend(insert.get(k, []))
        if id(n) not in drop:
            new.append(n)
    new, removed = _dce(nodes, new, cell_nodes, {o.name for o in g.output})
    del g.node[:]
    g.node.extend(new)
    lifted = []
    for em, cell, members in plans:
        g.initializer.extend(em.inits)
        names = [n.name or n.output[0] for n in removed if id(n) in members]
        lifted.append(_record(em, cell, "step", names))
        lifted[-1].graph = where
    return lifted


def _dce(old, nodes, candidates: set, graph_outputs: set):
    """Drop candidate nodes whose outputs nobody reads; returns (kept, removed incl. replaced)."""
    kept = {id(n) for n in nodes}
    removed = [n for n in old if id(n) in candidates and id(n) not in kept]
    while True:
        used = set(graph_outputs)
        for n in nodes:
            used.update(n.input)
            for sub in (a.g for a in n.attribute if a.type == a.GRAPH):
                for gg in _walk_graphs(sub):
                    for m in gg.node:
                        used.update(m.input)
        dead = [n for n in nodes if id(n) in candidates and not any(o in used for o in n.output)]
        if not dead:
            return nodes, removed
        ids = {id(n) for n in dead}
        removed += dead
        nodes = [n for n in nodes if id(n) not in ids]
