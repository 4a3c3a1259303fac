"""Import an ONNX graph that is a recurrent stack plus a simple head as a native model.

The graph is walked once in topological order with an abstract value per
tensor: constants (folded with ``onnx.reference``), shape arithmetic, zero
states, the data path (axis labels ``B``/``T``/``F``/``D``/``H``), recurrent
states and the head. That covers what PyTorch's TorchScript and dynamo
exporters and edgelstm's own export write: Transpose/Squeeze/Reshape around
``LSTM``/``GRU``/``RNN`` nodes, zero initial states computed from the input
shape, ``Sub``/``Div`` normalisation, ``MatMul``+``Add`` or ``Gemm`` heads
on every frame or on the final hidden state(s). Recurrent nodes may take
``sequence_lens`` from an integer graph input named ``lengths`` (edgelstm's
``--lengths`` export), the same one in every layer: the native model takes
it as its ``lengths`` feed.

Anything else raises :class:`ConversionError` naming the node it could not
map; such graphs still run with ``edgelstm run --backend mlx``. Finally the
imported model is checked against onnxruntime on a random input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from edgelstm.converters.onnx_build import build_native, check_import
from edgelstm.errors import ConversionError, UnsupportedError

CHECK_ATOL = 1e-4
LENGTHS_NAME = "lengths"  # the feed name edgelstm.runtime.inference.run_native takes
_PASS = ("Identity", "Dropout", "Cast")
_DEFAULT_ACTS = {"lstm": ["Sigmoid", "Tanh", "Tanh"], "gru": ["Sigmoid", "Tanh"],
                 "rnn": ["Tanh"]}


# --- abstract values ------------------------------------------------------------


@dataclass
class Const:
    value: np.ndarray


@dataclass
class Shape:  # computed from tensor shapes only
    pass


@dataclass
class Zero:  # zeros whose shape follows the input
    pass


@dataclass
class StateIn:  # rows [lo, hi) of a state graph input
    name: str
    lo: int = 0
    hi: int | None = None


@dataclass
class Lengths:  # the graph input feeding sequence_lens (edgelstm's ``lengths``)
    name: str


@dataclass
class Opaque:  # not mapped; an error only if it reaches the model
    why: str


@dataclass
class Seq:
    """The data path. ``stage``: "in", "head", ("rnn", k), ("last", k), ("summary", rows)."""

    labels: tuple
    stage: object
    affine: list = field(default_factory=list)  # normalisation ops before the stack
    head: dict | None = None


@dataclass
class State:
    """Recurrent final states: ``rows`` are (layer, direction); labels use ``R`` for rows."""

    kind: str  # "h" or "c"
    rows: list
    labels: tuple


class RowSum(tuple):
    """A sum of final-state rows ``(layer, direction)``, e.g. ``h_n[-2] + h_n[-1]``."""


def _terms(row) -> tuple:
    return tuple(row) if isinstance(row, RowSum) else (row,)


def _add_rows(a, b):
    return RowSum(_terms(a) + _terms(b))


@dataclass
class _Layer:
    cell: str
    node: str
    dirs: int
    hidden: int
    attrs: dict
    W: np.ndarray
    R: np.ndarray
    B: np.ndarray | None
    P: np.ndarray | None
    state_inputs: list


# --- helpers --------------------------------------------------------------------


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [s.decode() for s in v]
        out[a.name] = v
    return out


def _label(node) -> str:
    return f"node '{node.name or node.output[0]}' ({node.op_type})"


class _Walker:
    def __init__(self, model):
        import onnx

        self.model = model
        self.graph = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          17)
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # inference is only a hint for Reshape ranks
            inferred = model
        self.ranks = {}
        for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
            if vi.type.tensor_type.HasField("shape"):
                self.ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        self.env: dict[str, object] = {}
        self.layers: list[_Layer] = []
        self.batch_first: bool | None = None

    # ----- the walk
    def run(self):
        from onnx import numpy_helper

        for t in self.graph.initializer:
            self.env[t.name] = Const(numpy_helper.to_array(t))
        data_inputs = [i for i in self.graph.input if i.name not in self.env]
        if not data_inputs:
            raise ConversionError("the graph has no input")
        self.input_name = data_inputs[0].name
        self.env[self.input_name] = Seq(("X0", "X1", "F"), "in")
        self.lengths_input = None
        for i in data_inputs[1:]:
            self.env[i.name] = Lengths(i.name) if _is_lengths(i) else StateIn(i.name)
        for node in self.graph.node:
            outs = self.visit(node)
            for name, v in zip(node.output, outs, strict=False):
                if name:
                    self.env[name] = v
        return self

    def visit(self, node) -> list:
        op = node.op_type
        ins = [self.env.get(n) if n else None for n in node.input]
        n_out = len(node.output)
        if node.domain not in ("", "ai.onnx"):
            return [Opaque(f"{_label(node)} is in domain '{node.domain}'")] * n_out
        if op == "Constant" or (ins and all(isinstance(v, Const) or v is None for v in ins)):
            return self.fold(node)
        if op in ("LSTM", "GRU", "RNN"):
            return self.recurrent(node, ins)
        if any(isinstance(v, Opaque) for v in ins):
            return [next(v for v in ins if isinstance(v, Opaque))] * n_out
        if op in ("Shape", "Size"):
            return [Shape()]
        if all(isinstance(v, (Const, Shape)) or v is None for v in ins):
            if op == "Expand" and isinstance(ins[0], Const) and not np.any(ins[0].value):
                return [Zero()]
            if op == "ConstantOfShape":
                val = _attrs(node).get("value")
                zero = val is None or not np.any(_tensor(val))
                return [Zero() if zero else Opaque(f"{_label(node)} fills a nonzero value")]
            return [Shape()] * n_out
        if op in ("Add", "Mul") and isinstance(ins[0], Const) and isinstance(ins[1], (Seq, State)):
            ins = ins[::-1]
        x = ins[0]
        if op in _PASS or (op == "Expand" and isinstance(x, Zero)):
            return [x] + [Opaque(f"{_label(node)} extra output")] * (n_out - 1)
        if isinstance(x, Zero) and op in ("Slice", "Gather", "Squeeze", "Unsqueeze", "Reshape",
                                          "Transpose", "Concat", "Tile"):
            if op != "Concat" or all(isinstance(v, Zero) for v in ins):
                return [Zero()]
        if isinstance(x, StateIn) and op == "Slice":
            return [self.slice_state_in(node, x, ins)]
        handler = getattr(self, f"op_{op}", None)
        if handler is not None and isinstance(x, (Seq, State)):
            out = handler(node, ins)
            if out is not None:
                return [out]
        return [Opaque(f"cannot map {_label(node)}")] * n_out

    def fold(self, node) -> list:
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        try:
            if node.op_type == "Constant":
                attrs = _attrs(node)
                if "value" in attrs:
                    return [Const(_tensor(attrs["value"]))]
            g = helper.make_graph([node], "fold", [], [
                helper.make_tensor_value_info(o, 0, None) for o in node.output if o])
            for n in node.input:
                if n:
                    g.initializer.append(_to_tensor(self.env[n].value, n))
            m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
            vals = ReferenceEvaluator(m).run(None, {})
        except Exception as exc:  # any failure: leave it unmapped, with the reason
            return [Opaque(f"cannot evaluate constant {_label(node)}: {exc}")] * len(node.output)
        vals = iter(vals)
        return [Const(np.asarray(next(vals))) if o else None for o in node.output]

    def const_ints(self, node, ins, idx, attr):
        """Integer list from input ``idx`` (opset >= 13 style) or attribute ``attr``."""
        if idx < len(ins) and ins[idx] is not None:
            if not isinstance(ins[idx], Const):
                return None
            return [int(v) for v in np.ravel(ins[idx].value)]
        a = _attrs(node).get(attr)
        return None if a is None else [int(v) for v in np.ravel(a)]

    def slice_state_in(self, node, x, ins):
        starts, ends = self.const_ints(node, ins, 1, "starts"), self.const_ints(node, ins, 2, "ends")
        axes = self.const_ints(node, ins, 3, "axes") or [0]
        steps = self.const_ints(node, ins, 4, "steps") or [1]
        if starts is None or ends is None or axes != [0] or steps != [1] or starts[0] < 0:
            return Opaque(f"cannot map {_label(node)} on state input '{x.name}'")
        return StateIn(x.name, x.lo + starts[0], x.lo + min(ends[0], 1 << 30))

    # ----- recurrent nodes
    def recurrent(self, node, ins) -> list:
        cell = node.op_type.lower()
        attrs = _attrs(node)
        k = len(self.layers)
        x = ins[0]
        layout = int(attrs.get("layout", 0))
        want = ("T", "B") if layout == 0 else ("B", "T")
        if not isinstance(x, Seq) or len(x.labels) != 3 or x.labels[2] != "F":
            raise ConversionError(f"{_label(node)}: its input X is not the model input or the "
                                  f"previous recurrent layer's output"
                                  + (f" ({x.why})" if isinstance(x, Opaque) else ""))
        if k == 0:
            if x.stage != "in":
                raise ConversionError(f"{_label(node)}: its input does not come from the graph input")
            first = {"X0": "B", "X1": "T"}
            if x.labels[:2] == ("X1", "X0"):
                self.batch_first = want == ("T", "B")
            elif x.labels[:2] == ("X0", "X1"):
                self.batch_first = want == ("B", "T")
            else:
                raise ConversionError(f"{_label(node)}: cannot tell the time axis of its input")
            if not self.batch_first:
                first = {"X0": "T", "X1": "B"}
            self.input_labels = tuple(first.get(a, a) for a in ("X0", "X1", "F"))
            self.affine = x.affine
        elif x.stage != ("rnn", k - 1) or x.labels[:2] != want:
            raise ConversionError(f"{_label(node)}: its input X is not layer {k - 1}'s output "
                                  "in time-major order")
        for i, what in ((1, "W"), (2, "R"), (3, "B"), (7, "P")):
            if i < len(ins) and ins[i] is not None and not isinstance(ins[i], Const):
                src = node.input[i]
                raise ConversionError(f"{_label(node)}: weight input {what} ('{src}') is not a "
                                      "constant; run the graph with edgelstm run --backend mlx")
        self.sequence_lens(node, ins, k)
        states = []
        for i in (5, 6):
            v = ins[i] if i < len(ins) else None
            if v is None or isinstance(v, (Zero, StateIn)):
                states.append(v)
            elif isinstance(v, Const) and not np.any(v.value):
                states.append(None)
            else:
                why = f" ({v.why})" if isinstance(v, Opaque) else ""
                raise ConversionError(f"{_label(node)}: initial state '{node.input[i]}' is not "
                                      f"zero or a graph input{why}")
        direction = attrs.get("direction", "forward")
        if direction == "reverse":
            raise UnsupportedError(f"{_label(node)}: direction 'reverse' alone has no native form")
        dirs = 2 if direction == "bidirectional" else 1
        W = ins[1].value
        get = lambda i: ins[i].value if i < len(ins) and ins[i] is not None else None  # noqa: E731
        hidden = _hidden_size(node, attrs, W, ins[2].value, dirs)
        self.layers.append(_Layer(cell, node.name or node.output[0], dirs, hidden, attrs, W,
                                  ins[2].value, get(3), get(7), states))
        ylab = ("T", "D", "B", "H") if layout == 0 else ("B", "T", "D", "H")
        slab = ("R", "B", "H") if layout == 0 else ("B", "R", "H")
        rows = [(k, d) for d in range(dirs)]
        outs = [Seq(ylab, ("rnn", k)), State("h", rows, slab), State("c", rows, slab)]
        return outs[: len(node.output)]

    def sequence_lens(self, node, ins, k):
        """Accept ``sequence_lens`` only as the ``lengths`` graph input, in every layer or none."""
        v = ins[4] if len(ins) > 4 else None
        name = v.name if isinstance(v, Lengths) else None
        if v is not None and name is None:
            raise UnsupportedError(f"{_label(node)}: a sequence_lens input cannot be imported "
                                   f"unless it is the integer graph input '{LENGTHS_NAME}' "
                                   f"(here '{node.input[4]}'); run it with edgelstm run "
                                   "--backend mlx")
        if k > 0 and name != self.lengths_input:
            # the native stack applies lengths to every layer; a partial use has no native form
            raise UnsupportedError(f"{_label(node)}: sequence_lens differs from the first "
                                   "recurrent node's; a native model applies lengths to every "
                                   "layer")
        self.lengths_input = name

    # ----- data-path ops (return None to leave unmapped)
    def op_Transpose(self, node, ins):
        x = ins[0]
        perm = _attrs(node).get("perm", list(range(len(x.labels)))[::-1])
        labels = tuple(x.labels[p] for p in perm)
        return _replace(x, labels)

    def op_Squeeze(self, node, ins):
        x = ins[0]
        axes = self.const_ints(node, ins, 1, "axes")
        if axes is None:
            return None
        axes = {a % len(x.labels) for a in axes}
        drop = [x.labels[a] for a in axes]
        if isinstance(x, State):
            if drop != ["R"] or len(x.rows) != 1:
                return None
            labels = tuple(lab for i, lab in enumerate(x.labels) if i not in axes)
            return State(x.kind, x.rows, labels)
        if not all(lab in ("D", "T1") for lab in drop):
            return None
        if "D" in drop and self.layers[x.stage[1]].dirs != 1:
            return None
        labels = tuple("F" if lab == "H" and "D" in drop else lab
                       for i, lab in enumerate(x.labels) if i not in axes)
        stage = ("last", x.stage[1]) if "T1" in drop else x.stage
        return Seq(labels, stage, x.affine, x.head)

    def op_Reshape(self, node, ins):
        x = ins[0]
        rank = self.ranks.get(node.output[0])
        if rank is None and isinstance(ins[1], Const):
            rank = ins[1].value.size
        labels = x.labels
        if rank == len(labels) - 1 and len(labels) >= 2:
            tail = labels[-2:]
            if isinstance(x, State) and tail == ("R", "H"):
                return Seq(labels[:-2] + ("F",), ("summary", tuple(x.rows)))
            if isinstance(x, Seq) and tail == ("D", "H"):
                return Seq(labels[:-2] + ("F",), x.stage, x.affine, x.head)
        if rank == len(labels) and isinstance(ins[1], Const) and labels[-1] == "F":
            # a no-op reshape keeping every axis, e.g. (0, 0, -1)
            shape = list(ins[1].value)
            if all(v in (0, -1) for v in shape[:-1]) and shape[-1] in (0, -1):
                return x
        return None

    def op_Gather(self, node, ins):
        x, idx = ins[0], ins[1]
        if not isinstance(idx, Const) or idx.value.ndim > 1:
            return None
        axis = int(_attrs(node).get("axis", 0)) % len(x.labels)
        if idx.value.ndim == 1:  # a list of rows, e.g. edgelstm's own summary export
            if not (isinstance(x, State) and x.labels[axis] == "R"):
                return None
            n = len(x.rows)
            if not all(-n <= int(i) < n for i in idx.value):
                return None
            return State(x.kind, [x.rows[int(i)] for i in idx.value], x.labels)
        i = int(idx.value)
        if isinstance(x, State) and x.labels[axis] == "R":
            row = x.rows[i]
            return State(x.kind, [row], tuple(lab for j, lab in enumerate(x.labels) if j != axis))
        if isinstance(x, Seq) and x.labels[axis] == "T" and i == -1 and "D" not in x.labels:
            return Seq(tuple(lab for j, lab in enumerate(x.labels) if j != axis),
                       ("last", x.stage[1]), x.affine)
        return None

    def op_Slice(self, node, ins):
        x = ins[0]
        starts, ends = self.const_ints(node, ins, 1, "starts"), self.const_ints(node, ins, 2, "ends")
        axes = self.const_ints(node, ins, 3, "axes") or list(range(len(starts or [])))
        steps = self.const_ints(node, ins, 4, "steps") or [1] * len(axes)
        if starts is None or ends is None or len(axes) != 1 or steps != [1]:
            return None
        axis = axes[0] % len(x.labels)
        if isinstance(x, State) and x.labels[axis] == "R":
            n = len(x.rows)
            return State(x.kind, x.rows[slice(starts[0], min(ends[0], n))], x.labels)
        if isinstance(x, Seq) and x.labels[axis] == "T" and starts[0] == -1 and ends[0] >= 1 << 30:
            labels = tuple("T1" if j == axis else lab for j, lab in enumerate(x.labels))
            return Seq(labels, x.stage, x.affine)
        return None

    def op_Concat(self, node, ins):
        axis = int(_attrs(node).get("axis", 0))
        if all(isinstance(v, (State, Seq)) for v in ins) and any(isinstance(v, Seq) for v in ins):
            # mixing selected states and summaries, e.g. cat([h[0] + h[1], h[-1]], 1)
            vs = [_as_summary(v) for v in ins]
            if all(isinstance(v, Seq) and _is_summary(v) and v.labels == ("B", "F")
                   for v in vs) and axis % 2 == 1:
                return Seq(("B", "F"), ("summary", tuple(r for v in vs for r in v.stage[1])))
            return None
        if not all(isinstance(v, State) for v in ins):
            return None
        x = ins[0]
        if any(v.labels != x.labels or v.kind != x.kind for v in ins):
            return None
        axis %= len(x.labels)
        rows = [r for v in ins for r in v.rows]
        if x.labels[axis] == "R":
            return State(x.kind, rows, x.labels)
        if x.labels == ("B", "H") and axis == 1:
            return Seq(("B", "F"), ("summary", tuple(rows)))
        return None

    def _affine(self, node, ins, op):
        x, c = ins
        if not (isinstance(x, Seq) and x.stage == "in" and isinstance(c, Const)):
            return None
        if x.labels[-1] != "F" or c.value.ndim > len(x.labels) or any(
                d != 1 for d in c.value.shape[:-1]):
            return None
        return Seq(x.labels, "in", x.affine + [(op, np.ravel(c.value).astype(np.float32))])

    def op_Sub(self, node, ins):
        return self._affine(node, ins, "sub")

    def op_Div(self, node, ins):
        return self._affine(node, ins, "div")

    def op_Mul(self, node, ins):
        return self._affine(node, ins, "mul")

    def op_Add(self, node, ins):
        x, c = ins
        if isinstance(x, State) and isinstance(c, State):  # h_n[-2] + h_n[-1]
            if x.kind != c.kind or x.labels != c.labels or len(x.rows) != len(c.rows):
                return None
            return State(x.kind, [_add_rows(a, b) for a, b in zip(x.rows, c.rows, strict=True)],
                         x.labels)
        x, c = _as_summary(x), _as_summary(c)
        if (isinstance(x, Seq) and isinstance(c, Seq) and x.labels == c.labels == ("B", "F")
                and _is_summary(x) and _is_summary(c) and len(x.stage[1]) == len(c.stage[1])):
            rows = tuple(_add_rows(a, b) for a, b in zip(x.stage[1], c.stage[1], strict=True))
            return Seq(("B", "F"), ("summary", rows))
        if isinstance(x, Seq) and x.stage == "in":
            return self._affine(node, ins, "add")
        if (isinstance(x, Seq) and x.stage == "head" and isinstance(c, Const)
                and x.head["b"] is None and c.value.size == x.head["W"].shape[0]):
            return Seq(x.labels, "head", head={**x.head, "b": np.ravel(c.value)})
        return None

    def op_MatMul(self, node, ins):
        x, w = _as_summary(ins[0]), ins[1]
        if not (isinstance(x, Seq) and isinstance(w, Const) and w.value.ndim == 2
                and x.labels[-1] == "F" and _is_stack_output(x)):
            return None
        return Seq(x.labels[:-1] + ("C",), "head", head={"W": w.value.T, "b": None, "src": x})

    def op_Gemm(self, node, ins):
        x, w = _as_summary(ins[0]), ins[1]
        a = _attrs(node)
        if not (isinstance(x, Seq) and isinstance(w, Const) and _is_stack_output(x)
                and a.get("transA", 0) == 0 and x.labels[-1] == "F"):
            return None
        W = w.value if a.get("transB", 0) else w.value.T
        W = W * a.get("alpha", 1.0) if a.get("alpha", 1.0) != 1.0 else W
        b = None
        if len(ins) > 2 and ins[2] is not None:
            if not isinstance(ins[2], Const):
                return None
            b = np.ravel(ins[2].value) * a.get("beta", 1.0)
            b = np.broadcast_to(b, (W.shape[0],)) if b.size == 1 else b
        return Seq(x.labels[:-1] + ("C",), "head", head={"W": W, "b": b, "src": x})


def _hidden_size(node, attrs, W, R, dirs) -> int:
    """``hidden_size`` checked against the limits and the real ``W``/``R`` shapes."""
    from edgelstm.limits import MAX_HIDDEN, check_int

    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[node.op_type]
    h = attrs.get("hidden_size", R.shape[-1] if R.ndim == 3 else None)
    h = check_int(f"{_label(node)}: hidden_size", h, 1, MAX_HIDDEN)
    for name, t, want in (("W", W, None), ("R", R, h)):
        if t.ndim != 3 or t.shape[:2] != (dirs, gates * h) or (want and t.shape[2] != want):
            raise ConversionError(f"{_label(node)}: {name} has shape {t.shape}, which does not "
                                  f"match hidden_size {h} and {dirs} direction(s)")
    return h


def _is_lengths(vi) -> bool:
    """A graph input named ``lengths`` holding integers (any rank: checked where used)."""
    from onnx import TensorProto

    t = vi.type.tensor_type
    return vi.name == LENGTHS_NAME and t.elem_type in (TensorProto.INT32, TensorProto.INT64)


def _as_summary(x):
    """A selected final hidden state ``(B, H)`` used as features is a per-sequence summary."""
    if isinstance(x, State) and x.kind == "h" and x.labels == ("B", "H"):
        return Seq(("B", "F"), ("summary", tuple(x.rows)))
    return x


def _is_summary(x: Seq) -> bool:
    return isinstance(x.stage, tuple) and x.stage[0] == "summary"


def _is_stack_output(x: Seq) -> bool:
    return isinstance(x.stage, tuple)


def _replace(x, labels):
    if isinstance(x, State):
        return State(x.kind, x.rows, labels)
    return Seq(labels, x.stage, x.affine, x.head)


def _tensor(t) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(t) if hasattr(t, "data_type") else np.asarray(t)


def _to_tensor(value, name):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value), name)


def from_onnx(path: str | os.PathLike, check: bool = True, atol: float = CHECK_ATOL):
    """Import an ONNX recurrent stack plus simple head as an edgelstm model.

    Args:
        path: ``.onnx`` file (or an ``onnx.ModelProto``).
        check: run the graph (onnxruntime) and the imported model on one
            random input and fail if they differ by more than ``atol``.
        atol: tolerance of that check. Default: ``1e-4``.

    Returns:
        A ``SequenceModel`` (eval mode) keeping the graph's input/output names.

    Raises:
        ConversionError: naming the node or tensor that could not be mapped.
        UnsupportedError: a recurrent attribute edgelstm has no native form for.
    """
    from edgelstm.converters import _load_onnx
    from edgelstm.converters.lift_cells import lift_cells

    model = _load_onnx(path)
    # hand-written cells (tf2onnx's Keras Loop, Scan, steps) become LSTM/GRU nodes first;
    # the check below still runs the original graph
    walker = _Walker(lift_cells(model)[0]).run()
    native = build_native(walker)
    if check:
        check_import(model, native, walker, atol)
    return native
