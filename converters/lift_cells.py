"""Lift hand-written LSTM/GRU cells to standard ONNX ``LSTM``/``GRU`` nodes.

tf2onnx writes a Keras GRU or LSTM as a ``Loop`` whose body is the cell spelled
out in ``MatMul``/``Add``/``Split``/``Sigmoid``/``Tanh``/``Mul``; other exporters
write the same cell as a ``Scan`` body or as a single unrolled step. This pass
recognises those cells where the arithmetic matches a standard cell EXACTLY
(gate roles, activations, bias placement, GRU ``linear_before_reset``) and
replaces them with one ``LSTM``/``GRU`` node, its ``W``/``R``/``B``
initializers in ONNX gate order, and the ``Unsqueeze``/``Squeeze``/
``Transpose``/``Slice`` glue that gives the replaced node's outputs their
original names and shapes. The result runs on the fused recurrence in the
MLX executor and maps to a native checkpoint in ``edgelstm convert``.
Anything that does not match stays as it is and still runs op by op.

>>> lifted_model, report = lift_cells(model)
>>> [(r.cell, r.form, r.replaced) for r in report]
[('gru', 'loop', ['sequential/gru/while_loop'])]

Forms (``B`` batch, ``T`` steps, ``I`` inputs, ``H`` hidden):

- ``loop``: ``Loop`` whose body reads ``x_t = Gather(x, t)`` from an outer
  ``x [T, B, I]`` (``t`` the iteration number or a counter from 0 step 1),
  carries ``h`` (and ``c``) ``[B, H]``, has weights as constants (outer,
  inner, or loop-invariant carried values) and scan outputs equal to the new
  ``h``. The trip count and condition must stop after a count provable from
  constants or from ``Shape(x)[0]`` (see :mod:`lift_loops`).
- ``scan``: ``Scan`` with one scan input ``[T, B, I]`` (or ``[B, T, I]`` with
  ``scan_input_axes=[1]``), forward directions.
- ``step``: one cell, ``x [B, I]``, ``h``/``c [B, H]`` in, new ``h``/``c``
  out, in the main graph or in the body of a Loop/Scan that is not lifted
  whole (e.g. its step count cannot be proven): the loop stays, each of its
  steps runs as one fused cell.

Only float32 cells are lifted. The lifted node computes the same arithmetic
in another order (fused projections), so results agree to float32 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgelstm.converters import lift_algebra as A

__all__ = ["Lifted", "lift_cells"]

_DEFAULT = ("", "ai.onnx")


@dataclass
class Lifted:
    """One lifted cell.

    Attributes:
        cell: ``"gru"`` or ``"lstm"``.
        form: ``"loop"``, ``"scan"`` or ``"step"``.
        node: name of the new ``LSTM``/``GRU`` node.
        replaced: names of the nodes it replaced (the Loop/Scan, or the step's ops).
        hidden_size: ``H``.
        linear_before_reset: GRU only: 1 for Keras ``reset_after=True``/PyTorch, else 0.
        graph: ``""`` for the main graph, else the Loop/Scan whose body holds the step.
    """

    cell: str
    form: str
    node: str
    replaced: list = field(default_factory=list)
    hidden_size: int = 0
    linear_before_reset: int | None = None
    graph: str = ""

    def __str__(self) -> str:
        lbr = "" if self.linear_before_reset is None else \
            f", linear_before_reset={self.linear_before_reset}"
        what = ", ".join(self.replaced) if len(self.replaced) <= 3 else \
            f"{len(self.replaced)} ops from {self.replaced[0]}"
        where = f" in {self.graph}" if self.graph else ""
        return (f"{self.form}{where} -> {self.cell.upper()} '{self.node}' "
                f"(H={self.hidden_size}{lbr}; replaced {what})")


# --- evaluation of a node list --------------------------------------------------------


def attrs_of(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _fold(node, ins, opset):
    """Evaluate a node whose inputs are all constant (onnx.reference); None on failure."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    if any(a.type == a.GRAPH for a in node.attribute):
        return None
    try:
        if node.op_type == "Constant":
            at = attrs_of(node)
            if "value" in at:
                return [numpy_helper.to_array(at["value"])]
        g = helper.make_graph([node], "fold", [], [
            helper.make_tensor_value_info(o, 0, None) for o in node.output if o])
        for n, v in zip(node.input, ins, strict=False):
            if n:
                g.initializer.append(numpy_helper.from_array(np.asarray(v.value), n))
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
        vals = iter(ReferenceEvaluator(m).run(None, {}))
        return [np.asarray(next(vals)) if o else None for o in node.output]
    except Exception:  # anything the reference cannot fold is just not a constant
        return None


def _ints(ins, node, idx, attr):
    if idx < len(node.input) and node.input[idx]:
        v = ins[idx]
        return [int(t) for t in np.ravel(v.value)] if isinstance(v, A.Const) else None
    a = attrs_of(node).get(attr)
    return None if a is None else [int(t) for t in np.ravel(a)]


def _split_sizes(node, ins, n_cols, opset):
    at = attrs_of(node)
    if int(at.get("axis", 0)) not in (-1, 1):
        return None
    sizes = _ints(ins, node, 1, "split")
    if sizes is None:
        k = len(node.output)
        if n_cols % k:
            return None
        sizes = [n_cols // k] * k
    return sizes if len(sizes) == len(node.output) else None


def evaluate(nodes, consts: dict, opset: int) -> dict:
    """Abstract value of every tensor produced by ``nodes`` (name -> value).

    ``consts`` maps known constant names (initializers, outer constants) to
    numpy arrays; any other input is a :class:`Leaf`.
    """
    env: dict = {k: A.Const(np.asarray(v)) for k, v in consts.items()}

    def get(n):
        if not n:
            return None
        v = env.get(n)
        return A.Leaf(n) if v is None else v

    for node in nodes:
        ins = [get(n) for n in node.input]
        outs = _eval_node(node, ins, opset)
        if outs is None or all(v is None for v in outs):
            outs = _retry_as_leaves(node, ins, opset)
        for i, name in enumerate(node.output):
            if name:
                v = outs[i] if outs is not None and i < len(outs) else None
                env[name] = A.Leaf(name) if v is None else v
    return env


def _retry_as_leaves(node, ins, opset):
    """No rule for these values: one of them may still be a plain input to a new cell
    (the ``h`` an earlier step produced), so retry with one, then all, as leaves."""
    idx = [k for k, v in enumerate(ins) if not (v is None or isinstance(v, (A.Const, A.Leaf)))]
    tries = [[k] for k in idx] + ([idx] if len(idx) > 1 else [])
    for which in tries:
        alt = [A.Leaf(node.input[k]) if k in which else v for k, v in enumerate(ins)]
        outs = _eval_node(node, alt, opset)
        if outs is not None and any(v is not None for v in outs):
            return outs
    return None


def _eval_node(node, ins, opset):
    op = node.op_type
    if node.domain not in _DEFAULT:
        return None
    present = [v for v in ins if v is not None]
    if op == "Constant" or (node.input and all(isinstance(v, A.Const) for v in present)):
        vals = _fold(node, ins, opset)
        return None if vals is None else [None if v is None else A.Const(v) for v in vals]
    if op == "Identity":
        return [ins[0]]
    if op == "MatMul":
        return [A.matmul(ins[0], ins[1], node.input[0])]
    if op == "Gemm":
        return [A.gemm(ins[0], ins[1], ins[2] if len(ins) > 2 else None, attrs_of(node),
                       node.input[0])]
    if op == "Add":
        return [A.eval_add(ins[0], ins[1])]
    if op == "Sub":
        return [A.eval_sub(ins[0], ins[1])]
    if op == "Mul":
        return [A.eval_mul(ins[0], ins[1])]
    if op in ("Sigmoid", "Tanh"):
        return [A.eval_act(op.lower(), ins[0], node.output[0])]
    if op == "Split" and isinstance(ins[0], A.Lin):
        sizes = _split_sizes(node, ins, ins[0].n, opset)
        return None if sizes is None else A.split_cols(ins[0], sizes)
    if op == "Slice" and isinstance(ins[0], A.Lin):
        starts, ends = _ints(ins, node, 1, "starts"), _ints(ins, node, 2, "ends")
        axes = _ints(ins, node, 3, "axes")
        steps = _ints(ins, node, 4, "steps") or [1]
        if starts is None or ends is None or axes not in ([-1], [1]) or steps != [1]:
            return None
        return [A.slice_cols(ins[0], starts[0], min(ends[0], 1 << 62))]
    return None


# --- from a recognised cell to ONNX weights ---------------------------------------------


@dataclass
class Cell:
    """A recognised cell: ONNX ``W [1, gH, I]``, ``R [1, gH, H]``, ``B [1, 2gH]``."""

    kind: str
    x: str
    h: str
    c: str | None
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray
    lbr: int | None = None

    @property
    def hidden(self) -> int:
        return self.R.shape[-1]


def _gate_w(lin: A.Lin, x: str, h: str, dims: dict, allowed=("x", "h")):
    """(Wx (H, I), Wh (H, H), b (H,)) of one gate, zeros where a source is absent.

    None when the gate reads a source other than those ``allowed``.
    """
    names = {"x": x, "h": h}
    if set(lin.terms) - {names[r] for r in allowed}:
        return None
    wx, wh = lin.terms.get(x), lin.terms.get(h)
    Wx = np.zeros((lin.n, dims["x"]), np.float32) if wx is None else wx.T
    Wh = np.zeros((lin.n, dims["h"]), np.float32) if wh is None else wh.T
    return Wx, Wh, lin.b


def _dims(lins, x, h):
    dims = {}
    for lin in lins:
        for key, role in ((x, "x"), (h, "h")):
            if key in lin.terms:
                k = lin.terms[key].shape[0]
                if dims.setdefault(role, k) != k:
                    return None
    return dims


def _pick_x(lins, h: str, rh_keys=()) -> str | None:
    others = {k for lin in lins for k in lin.terms if k != h and k not in rh_keys}
    return next(iter(others)) if len(others) == 1 else None


def cell_from_gru(out: A.GRUOut, h: str | None = None) -> Cell | None:
    """ONNX GRU weights (gate order z, r, h) of a recognised GRU output, or None."""
    z, cand, r = out.z, out.cand, out.cand.r
    h = out.h if h is None else h
    if out.h != h or z is r or z.kind != "sigmoid" or r.kind != "sigmoid":
        return None
    H = z.lin.n
    if cand.lbr == 1:
        lin_x, lin_h = cand.pre.lin_x, cand.pre.lin_h
        rh_keys = ()
    else:
        lin_x = cand.pre
        rh_keys = tuple(cand.pre.rh)
        if len(rh_keys) != 1:
            return None
        rh = cand.pre.rh[rh_keys[0]]
        if rh.r is not r or rh.h != h:
            return None
        lin_h = None
    lins = [z.lin, r.lin, lin_x] + ([lin_h] if lin_h is not None else [])
    if any(lin.n != H for lin in lins):
        return None
    x = _pick_x(lins, h, rh_keys)
    if x is None:
        return None
    dims = _dims(lins, x, h)
    if dims is None or "x" not in dims:
        return None
    if dims.setdefault("h", H) != H:
        return None
    gz, gr = _gate_w(z.lin, x, h, dims), _gate_w(r.lin, x, h, dims)
    if gz is None or gr is None:
        return None
    zero = np.zeros(H, np.float32)
    if cand.lbr == 1:
        nx = _gate_w(lin_x, x, h, dims, allowed=("x",))
        nh = _gate_w(lin_h, x, h, dims, allowed=("h",))
        if nx is None or nh is None:
            return None
        Wn, Rn, bxn, bhn = nx[0], nh[1], nx[2], nh[2]
    else:
        plain = A.Lin({k: w for k, w in lin_x.terms.items() if k not in rh_keys}, lin_x.b)
        nx = _gate_w(plain, x, h, dims, allowed=("x",))
        wr = lin_x.terms[rh_keys[0]]
        if nx is None or wr.shape != (H, H):
            return None
        Wn, Rn, bxn, bhn = nx[0], wr.T, nx[2], zero
    W = np.concatenate([gz[0], gr[0], Wn])[None]
    R = np.concatenate([gz[1], gr[1], Rn])[None]
    B = np.concatenate([gz[2], gr[2], bxn, zero, zero, bhn])[None]
    return Cell("gru", x, h, None, W.astype(np.float32), R.astype(np.float32),
                B.astype(np.float32), cand.lbr)


def cell_from_lstm(out: A.LSTMOut, h: str | None = None, c: str | None = None,
                   dims_hint: dict | None = None) -> Cell | None:
    """ONNX LSTM weights (gate order i, o, f, c) of a recognised LSTM output, or None."""
    o, cn = out.o, out.cnew
    i, f, g = cn.i, cn.f, cn.g
    if len({id(o), id(i), id(f), id(g)}) != 4 or (c is not None and cn.c != c):
        return None
    lins = [i.lin, o.lin, f.lin, g.lin]
    H = o.lin.n
    if any(lin.n != H for lin in lins):
        return None
    keys = {k for lin in lins for k in lin.terms}
    if cn.c in keys or any(k.startswith("rh:") for k in keys):
        return None
    if h is None:  # a single step: the source whose width is H is h (either, if both are)
        if len(keys) != 2:
            return None
        widths = {k: next(lin.terms[k].shape[0] for lin in lins if k in lin.terms) for k in keys}
        hs = sorted(k for k, w in widths.items() if w == H)
        if not hs:
            return None
        h = hs[-1]
    x = _pick_x(lins, h)
    if x is None:
        return None
    dims = _dims(lins, x, h)
    if dims is None or "x" not in dims or dims.setdefault("h", H) != H:
        return None
    gates = [_gate_w(lin, x, h, dims) for lin in lins]
    if any(gt is None for gt in gates):
        return None
    W = np.concatenate([gt[0] for gt in gates])[None]
    R = np.concatenate([gt[1] for gt in gates])[None]
    B = np.concatenate([gt[2] for gt in gates] + [np.zeros(4 * H, np.float32)])[None]
    return Cell("lstm", x, h, cn.c, W.astype(np.float32), R.astype(np.float32),
                B.astype(np.float32))


def lift_cells(model, forms=("loop", "scan", "step")):
    """Replace recognised hand-written cells in ``model``'s main graph.

    Args:
        model: an ``onnx.ModelProto`` (not modified).
        forms: which forms to look for.

    Returns:
        ``(new_model, lifted)``: a copy with the replacements (``model`` itself
        when nothing was lifted) and a list of :class:`Lifted`, in graph order.
    """
    from edgelstm.converters import lift_graph

    if not _has_sigmoid(model.graph):  # every cell has sigmoid gates: skip the walk
        return model, []
    return lift_graph.lift_model(model, forms)


def _has_sigmoid(graph) -> bool:
    for n in graph.node:
        if n.op_type == "Sigmoid" or any(
                _has_sigmoid(a.g) for a in n.attribute if a.type == a.GRAPH):
            return True
    return False
