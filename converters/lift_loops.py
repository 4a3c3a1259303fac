"""Lift a ``Loop`` or ``Scan`` whose body is one LSTM/GRU step (see :mod:`lift_graph`)."""

from __future__ import annotations

import numpy as np

from edgelstm.converters import lift_algebra as A
from edgelstm.converters.lift_cells import attrs_of
from edgelstm.converters.lift_graph import (
    _DEFAULT,
    _body_states,
    _Emitter,
    _float_input,
    _is_one,
    _Plan,
    _record,
    _root,
    _scan_outputs_ok,
    _unused,
)

_PASS = ("Identity", "Cast")
T = "T"  # a bound equal to the gathered sequence's length


def _outer_bound(name, outer, prod, data):
    """An int constant, ``T`` (``Shape(data)[0]``), or None, for an outer tensor."""
    name = _root(name, prod, _PASS)
    if name in outer:
        v = np.asarray(outer[name])
        return int(v.reshape(-1)[0]) if v.size == 1 and np.issubdtype(v.dtype, np.integer) \
            else None
    p = prod.get(name)
    if p is None or p.domain not in _DEFAULT:
        return None
    op = p.op_type
    if op in ("Squeeze", "Reshape", "Unsqueeze"):
        return _outer_bound(p.input[0], outer, prod, data)
    src, idx0 = None, False
    if op == "Gather" and len(p.input) > 1 and int(attrs_of(p).get("axis", 0)) == 0:
        iv = outer.get(p.input[1])
        src, idx0 = p.input[0], iv is not None and np.asarray(iv).size == 1 and \
            int(np.ravel(iv)[0]) == 0
    elif op == "Slice" and len(p.input) >= 3:
        vals = [outer.get(n) for n in p.input[1:4]] + [None]
        starts, ends, axes = vals[0], vals[1], vals[2] if len(p.input) > 3 else np.array([0])
        if starts is not None and ends is not None and axes is not None:
            src = p.input[0]
            idx0 = (np.ravel(starts).tolist() == [0] and np.ravel(ends).tolist() == [1]
                    and np.ravel(axes).tolist() == [0])
    if src is None or not idx0:
        return None
    sp = prod.get(_root(src, prod, _PASS))
    if sp is None or sp.op_type != "Shape" or int(attrs_of(sp).get("start", 0)) != 0:
        return None
    return T if _root(sp.input[0], prod) == _root(data, prod) else None


def _init_true(name, outer, prod, data) -> bool:
    """The Loop's first condition holds whenever the proven count is at least 1."""
    if not name:
        return True
    name = _root(name, prod, _PASS)
    if name in outer:
        return bool(np.all(np.asarray(outer[name])))
    p = prod.get(name)
    if p is None or p.domain not in _DEFAULT:
        return False
    if p.op_type == "And":
        return all(_init_true(n, outer, prod, data) for n in p.input)
    if p.op_type == "Less":
        a = _outer_bound(p.input[0], outer, prod, data)
        b = _outer_bound(p.input[1], outer, prod, data)
        # 0 < T is the proven count being nonzero; a constant test must hold now
        return isinstance(a, int) and ((b == T and a <= 0) or (isinstance(b, int) and a < b))
    return False


class _Cond:
    """Steps a Loop body's condition allows: a list of int/``T`` bounds (None: unknown)."""

    def __init__(self, body, env, prod, kinds, vin, vout, init_names, outer, oprod, data):
        self.env, self.prod, self.kinds = env, prod, kinds
        self.it, self.cnd = body.input[0].name, body.input[1].name
        self.vin, self.vout, self.init = vin, vout, init_names
        self.outer, self.oprod, self.data = outer, oprod, data
        self.carried = False

    def bound(self, name):
        name = _root(name, self.prod, _PASS)
        v = self.env.get(name)
        if isinstance(v, A.Const):
            a = np.asarray(v.value)
            return int(a.reshape(-1)[0]) if a.size == 1 and np.issubdtype(a.dtype, np.integer) \
                else None
        if name in self.vin:
            j = self.vin.index(name)
            if self.kinds[j] != "pass":
                return None
            name = self.init[j]
        elif name in self.prod:
            return None
        return _outer_bound(name, self.outer, self.oprod, self.data)

    def counter_of(self, name):
        """(t0, step offset) when ``name`` is a counter (0: before, 1: after the add)."""
        name = _root(name, self.prod, _PASS)
        if name == self.it:
            return 0, 0
        if name in self.vin:
            k = self.kinds[self.vin.index(name)]
            return (k[1], 0) if isinstance(k, tuple) else None
        p = self.prod.get(name)
        if p is not None and p.op_type == "Add":
            ins = [n for n in p.input if not _is_one(self.env.get(n))]
            if len(ins) == 1 and len(p.input) == 2:
                c = self.counter_of(ins[0])
                return None if c is None or c[1] else (c[0], 1)
        return None

    def terms(self, name):
        name = _root(name, self.prod, ("Identity",))
        if name == self.cnd:
            self.carried = True
            return []
        v = self.env.get(name)
        if isinstance(v, A.Const):
            return [] if bool(np.all(v.value)) else None
        p = self.prod.get(name)
        if p is None:
            return None
        if p.op_type == "And":
            parts = [self.terms(n) for n in p.input]
            return None if any(t is None for t in parts) else parts[0] + parts[1]
        if p.op_type == "Less":
            c, b = self.counter_of(p.input[0]), self.bound(p.input[1])
            if c is None or b is None:
                return None
            t0, after = c
            # after iteration i the test reads t0 + i + after < b: runs b - t0 - after + 1 steps
            if b == T:
                return [(T, 1 - t0 - after)]
            return [b - t0 - after + 1]
        return None


def _count(bounds, static_len):
    """(slice count or None, ok): how many leading steps of x the loop consumes.

    ``bounds`` holds ints and ``(T, k)`` (the sequence length plus ``k``).
    """
    ints = [b for b in bounds if not isinstance(b, tuple)]
    offsets = [b[1] for b in bounds if isinstance(b, tuple)]
    if any(k < 0 for k in offsets):
        return None, False  # stops before the end of x by a data-dependent count
    has_t = 0 in offsets
    if not ints:
        return None, has_t
    c = min(ints)
    if c < 1:
        return None, False
    if static_len is not None and c >= static_len:
        # more steps than x holds would fail in Gather: only exact when T bounds it
        return None, c == static_len or has_t
    return c, True


def _body(node):
    return next((a.g for a in node.attribute if a.name == "body" and a.type == a.GRAPH), None)


def lift_loop(node, ctx, outer, oprod, used, graph_outputs):
    body = _body(node)
    n = len(node.input) - 2
    # malformed arities are the runner's to report; here they are just not a cell
    if body is None or n < 1 or len(body.input) != n + 2 or \
            len(body.output) != len(node.output) + 1 or len(node.output) < n:
        return None
    init = list(node.input[2:])
    found = _body_states(body, ctx, outer, 2, n, init, allow_counters=True)
    if found is None:
        return None
    env, prod, kinds, cell, j_h, j_c = found
    vin = [i.name for i in body.input[2:]]
    vout = [o.name for o in body.output[1:1 + n]]
    scans = [o.name for o in body.output[1 + n:]]
    if not _scan_outputs_ok(env, scans, env[vout[j_h]]):
        return None
    # x_t = Gather(x, t) with t the iteration number or a counter from 0
    g = prod.get(cell.x)
    if g is None or g.op_type != "Gather" or int(attrs_of(g).get("axis", 0)) != 0:
        return None
    data = g.input[0]
    if data in vin:
        j = vin.index(data)
        if kinds[j] != "pass":
            return None
        data = init[j]
    elif data in prod or any(i.name == data for i in body.input):
        return None
    idx = _root(g.input[1], prod, ("Identity",))
    if not (idx == body.input[0].name or (idx in vin and kinds[vin.index(idx)] == ("counter", 0))):
        return None
    if ctx.rank(data) != 3 or not _float_input(ctx, data):
        return None  # x [T, B, I] must be known: a rank-4 x would batch the cell differently
    if not ctx.same_batch([init[j_h]] + ([init[j_c]] if j_c is not None else []), data, 1):
        return None
    cond = _Cond(body, env, prod, kinds, vin, vout, init, outer, oprod, data)
    bounds = cond.terms(body.output[0].name)
    if bounds is None:
        return None
    if node.input[0]:
        m = _outer_bound(node.input[0], outer, oprod, data)
        if m is None:
            return None
        bounds.append((T, 0) if m == T else m)
    if not _init_true(node.input[1], outer, oprod, data):
        return None
    shape = ctx.shapes.get(data)
    count, ok = _count(bounds, shape[0] if shape else None)
    if not ok:
        return None
    finals = list(node.output[:n])
    extra = [finals[j] for j in range(n) if j not in (j_h, j_c)]
    if not _unused(used, extra, graph_outputs):
        return None
    em = _Emitter(ctx, node.name or node.output[0])
    X = data if count is None else em.head(data, count)
    return _emit(em, cell, X, init, finals, j_h, j_c, list(node.output[n:]), [0] * len(scans),
                 "loop", node)


def _emit(em, cell, X, init, finals, j_h, j_c, scan_outs, out_axes, form, node):
    h0 = em.unsqueeze(init[j_h], [0])
    c0 = em.unsqueeze(init[j_c], [0]) if j_c is not None else None
    live_scans = [s for s in scan_outs if s]
    Y, Yh, Yc = em.rnn(cell, X, h0, c0, want_y=bool(live_scans))
    for name, axis in zip(scan_outs, out_axes, strict=True):
        if not name:
            continue
        if axis == 0:
            em.squeeze(Y, [1], name)
        else:
            em.node("Transpose", [em.squeeze(Y, [1])], [name], perm=[1, 0, 2])
    if finals[j_h]:
        em.squeeze(Yh, [0], finals[j_h])
    if j_c is not None and finals[j_c]:
        em.squeeze(Yc, [0], finals[j_c])
    return _Plan(em.nodes, em.inits, _record(em, cell, form, [node.name or node.output[0]]))


def lift_scan(node, ctx, outer, used, graph_outputs):
    if ctx.opset < 9:
        return None
    at = attrs_of(node)
    body = _body(node)
    n = len(node.input) - 1
    k = len(node.output) - n
    if body is None or at.get("num_scan_inputs") != 1 or n < 1 or k < 0 or \
            len(body.input) != n + 1 or len(body.output) != len(node.output):
        return None
    in_axes = list(at.get("scan_input_axes", [0]))
    out_axes = list(at.get("scan_output_axes", [0] * k))
    if in_axes not in ([0], [1], [-2]) or len(out_axes) != k or \
            any(a not in (0, 1, -2) for a in out_axes):
        return None
    if any(at.get("scan_input_directions", [0])) or any(at.get("scan_output_directions", [0])):
        return None
    init = list(node.input[:n])
    found = _body_states(body, ctx, outer, 0, n, init, allow_counters=False)
    if found is None:
        return None
    env, prod, kinds, cell, j_h, j_c = found
    if cell.x != body.input[n].name:
        return None
    scans = [o.name for o in body.output[n:]]
    if not _scan_outputs_ok(env, scans, env[body.output[j_h].name]):
        return None
    finals = list(node.output[:n])
    extra = [finals[j] for j in range(n) if j not in (j_h, j_c)]
    x = node.input[n]
    if not _unused(used, extra, graph_outputs) or ctx.rank(x) != 3 or not _float_input(ctx, x):
        return None
    if not ctx.same_batch([init[j_h]] + ([init[j_c]] if j_c is not None else []), x,
                          0 if in_axes == [1] else 1):
        return None
    em = _Emitter(ctx, node.name or node.output[0])
    X = x if in_axes == [0] else em.node("Transpose", [x], perm=[1, 0, 2])
    out_axes = [0 if a == 0 else 1 for a in out_axes]
    return _emit(em, cell, X, init, finals, j_h, j_c, list(node.output[n:]), out_axes, "scan",
                 node)
