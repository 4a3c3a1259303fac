"""The ``WHILE``-loop form of a recurrent direction, for cells and options LiteRT has no op for.

Main graph: the input projection for all steps (``FULLY_CONNECTED`` with
``keepNumDims``), ``T`` from ``SHAPE``, a zero output ``(B, T, H)``, then
``WHILE`` over loop variables ``(t, T, h, [c], xp, y)``. The body gathers
step ``t`` of ``xp``, runs the cell step in elementwise ops (the same
formulas as :mod:`edgelstm.nn.recurrent`), writes ``h`` into ``y`` with
``DYNAMIC_UPDATE_SLICE`` and increments ``t``. Shapes: ``B`` batch (fixed),
``T`` time (dynamic), ``H`` hidden size, ``G`` gates (LSTM 4, GRU 3, RNN 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgelstm.converters.tflite_builder import Graph, ModelBuilder

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


@dataclass
class Ctx:
    """What every lowering needs: the model, batch, hidden size and layout."""

    m: ModelBuilder
    B: int
    H: int
    time_major: bool
    hybrid: bool = False  # int8 weights straight into LiteRT's dynamic-range kernels

    @property
    def t_axis(self) -> int:
        return 0 if self.time_major else 1


def cell_weight(g: Graph, cell, name: str, label: str, rows: slice | None = None,
                hybrid: str | None = None) -> int:
    """A weight ``(R, C)`` tensor of a cell.

    Float weights are float constants. Int8 (MLX-quantized) ones are int8
    tensors with the MLX per-row scales as per-channel parameters, then
    ``DEQUANTIZE`` (``hybrid=None``: float kernels on ``q * s``), or the int8
    tensor itself for a dynamic-range kernel: ``hybrid="channel"`` as is
    (``FULLY_CONNECTED``), ``"tensor"`` re-quantized to one scale for the
    whole tensor (the sequence LSTM/RNN kernels read a single scale).
    """
    spec = cell.get("_qspec")
    rows = rows or slice(None)
    if spec is None or name not in spec["names"]:
        return g.const(label, np.array(getattr(cell, name), np.float32)[rows])
    q = np.array(cell[name], np.int8)[rows]  # item access: the stored integers
    scales = np.array(cell[name + "_scales"], np.float32)[rows]
    if hybrid == "tensor":
        w = q * scales[:, None]
        scale = max(float(np.abs(w).max()) / 127, np.finfo(np.float32).tiny)
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
        scales = np.array([scale], np.float32)
    qt = g.tensor(label + (".int8" if hybrid is None else ""), q.shape, q, "int8",
                  quant={"scale": scales, "zero_point": np.zeros(len(scales)), "axis": 0})
    if hybrid is not None:
        return qt
    return g.op("DEQUANTIZE", [qt], [g.tensor(label, q.shape)])


def vec(cell, name: str, size: int) -> np.ndarray:
    v = cell.get(name)
    return np.zeros(size, np.float32) if v is None else np.array(v, np.float32)


def loop(ctx: Ctx, g: Graph, cell, kind: str, x: int, label: str, h0, c0):
    """The ``WHILE`` form; returns ``(y, h_n, c_n)``."""
    m, B, H, a = ctx.m, ctx.B, ctx.H, ctx.t_axis
    G = GATES[kind]
    wx_name = "Wxh" if kind == "rnn" else "Wx"
    bias = vec(cell, "b" if kind == "gru" else "bias", G * H)
    hy = "channel" if ctx.hybrid else None
    xp = g.op("FULLY_CONNECTED", [x, cell_weight(g, cell, wx_name, label + ".Wx", hybrid=hy),
                                  g.const(label + ".bx", bias)],
              [g.like(label + ".xp", x, last=G * H)], "FullyConnectedOptions", keepNumDims=True,
              asymmetricQuantizeInputs=ctx.hybrid)
    shape = g.op("SHAPE", [x], [g.tensor(label + ".shape", [3], dtype="int32")], "ShapeOptions",
                 outType=m.s.TensorType.INT32)
    steps = g.op("GATHER", [shape, g.const(label + ".t_index", a, "int32")],
                 [g.tensor(label + ".T", [], dtype="int32")], "GatherOptions", axis=0)
    first_h = g.op("STRIDED_SLICE", [xp, g.const(label + ".y0.begin", [0, 0, 0], "int32"),
                                     g.const(label + ".y0.end", [0, 0, H], "int32"),
                                     g.const(label + ".y0.strides", [1, 1, 1], "int32")],
                   [g.like(label + ".y0.slice", xp, last=H)], "StridedSliceOptions",
                   beginMask=0b111, endMask=0b011)
    y0 = g.op("ZEROS_LIKE", [first_h], [g.like(label + ".y0", first_h)])
    zeros = np.zeros((B, H), np.float32)
    h0 = g.const(label + ".h0", zeros) if h0 is None else h0
    init = [g.const(label + ".t0", 0, "int32"), steps, h0]
    if kind == "lstm":
        init.append(g.const(label + ".c0", zeros) if c0 is None else c0)
    init += [xp, y0]

    cond, body = m.graph(label + ".cond"), m.graph(label + ".body")
    for sub in (cond, body):
        sub.inputs = [_copy_tensor(sub, g, v, f"v{k}") for k, v in enumerate(init)]
    cond.outputs = [cond.op("LESS", cond.inputs[:2], [cond.tensor("keep", [], dtype="bool")])]
    body.outputs = _body(ctx, body, cell, kind, label)
    outs = [_copy_tensor(g, g, v, f"{label}.loop{k}") for k, v in enumerate(init)]
    g.op("WHILE", init, outs, "WhileOptions", condSubgraphIndex=cond.index,
         bodySubgraphIndex=body.index)
    return outs[-1], outs[2], outs[3] if kind == "lstm" else None


def _copy_tensor(dst: Graph, src: Graph, ref: int, name: str) -> int:
    t = src.tensors[ref]
    return dst.tensor(name, t.shape, dtype=src.dtypes[ref],
                      signature=None if t.shapeSignature is None else t.shapeSignature)


class _Ops:
    """Elementwise helpers on one subgraph, each returning its output tensor."""

    def __init__(self, g: Graph, shape, clip: float | None, hybrid: bool):
        self.g, self.shape, self.clip, self.hybrid = g, list(shape), clip, hybrid

    def _new(self, name, shape=None):
        return self.g.tensor(name, shape or self.shape)

    def binary(self, code, a, b, name, shape=None):
        return self.g.op(code, [a, b], [self._new(name, shape)])

    def unary(self, code, a, name):
        return self.g.op(code, [a], [self._new(name)])

    def clipped(self, a, name):
        """ONNX ``clip`` of a pre-activation: ``min(max(a, -clip), clip)``."""
        if self.clip is None:
            return a
        lo = self.binary("MAXIMUM", a, self.g.const(name + ".lo", -self.clip), name + ".lo_out")
        return self.binary("MINIMUM", lo, self.g.const(name + ".hi", self.clip), name + ".clipped")

    def split(self, a, n, name):
        g = self.g
        outs = [self._new(f"{name}{k}") for k in range(n)]
        return g.op("SPLIT", [g.const(name + ".axis", -1, "int32"), a], outs, "SplitOptions",
                    numSplits=n) if n > 1 else [a]

    def weight(self, cell, name, label, rows=None):
        return cell_weight(self.g, cell, name, label, rows, "channel" if self.hybrid else None)

    def fc(self, a, w, bias, name, width):
        return self.g.op("FULLY_CONNECTED", [a, w, -1 if bias is None else bias],
                         [self._new(name, [self.shape[0], width])], "FullyConnectedOptions",
                         asymmetricQuantizeInputs=self.hybrid)


def _body(ctx: Ctx, g: Graph, cell, kind: str, label: str) -> list[int]:
    """The loop body's outputs ``(t + 1, T, h, [c], xp, y)`` from its inputs."""
    B, H, a = ctx.B, ctx.H, ctx.t_axis
    t, steps, h, *rest = g.inputs
    c = rest[0] if kind == "lstm" else None
    xp, y = rest[-2], rest[-1]
    G = GATES[kind]
    opts = cell["_opts"]
    o = _Ops(g, [B, H], opts.get("clip"), ctx.hybrid)
    xt = g.op("GATHER", [xp, t], [g.tensor("xt", [B, G * H])], "GatherOptions", axis=a)
    if kind == "lstm":
        h_new, c_new = _lstm_step(o, cell, xt, h, c, H, label)
    elif kind == "gru":
        h_new, c_new = _gru_step(o, cell, xt, h, H, label), None
    else:
        pre = o.binary("ADD", xt, o.fc(h, o.weight(cell, "Whh", label + ".Wh"), None,
                                       "hp", H), "pre")
        act = (opts.get("activations") or [["tanh"]])[0][0]
        h_new = o.unary(act.upper(), o.clipped(pre, "pre"), "h")
    step_shape = [1, B, H] if ctx.time_major else [B, 1, H]
    h_step = g.op("RESHAPE", [h_new, g.const("step_shape", step_shape, "int32")],
                  [g.tensor("h_step", step_shape)], "ReshapeOptions", newShape=step_shape)
    unit = [0, 0, 0]
    unit[a] = 1
    t1 = g.op("RESHAPE", [t, g.const("one_shape", [1], "int32")],
              [g.tensor("t_vec", [1], dtype="int32")], "ReshapeOptions", newShape=[1])
    start = g.op("MUL", [t1, g.const("unit", unit, "int32")], [g.tensor("start", [3], dtype="int32")])
    y_new = g.op("DYNAMIC_UPDATE_SLICE", [y, h_step, start], [g.like("y_new", y)])
    t_next = g.op("ADD", [t, g.const("one", 1, "int32")], [g.tensor("t_next", [], dtype="int32")])
    return [t_next, steps, h_new, *([c_new] if kind == "lstm" else []), xp, y_new]


def _lstm_step(o: _Ops, cell, xt, h, c, H, label):
    """``i, f, g, o`` gates with optional peephole, clip and coupled input-forget."""
    g = o.g
    gates = o.binary("ADD", xt, o.fc(h, o.weight(cell, "Wh", label + ".Wh"), None, "hp",
                                     4 * H), "gates", [o.shape[0], 4 * H])
    i, f, gg, out = o.split(gates, 4, "gate")
    peep = cell.get("peephole")
    if peep is not None:
        p_i, p_f, p_o = (g.const(f"{label}.peephole_{n}", v)
                         for n, v in zip("ifo", np.split(np.array(peep, np.float32), 3), strict=True))
        i = o.binary("ADD", i, o.binary("MUL", p_i, c, "pi_c"), "i_peep")
        f = o.binary("ADD", f, o.binary("MUL", p_f, c, "pf_c"), "f_peep")
    i = o.unary("LOGISTIC", o.clipped(i, "i"), "i_act")
    if cell["_opts"].get("input_forget"):
        f = o.binary("SUB", g.const("one_f", 1.0), i, "f_act")
    else:
        f = o.unary("LOGISTIC", o.clipped(f, "f"), "f_act")
    gg = o.unary("TANH", o.clipped(gg, "g"), "g_act")
    c_new = o.binary("ADD", o.binary("MUL", f, c, "fc"), o.binary("MUL", i, gg, "ig"), "c")
    if peep is not None:
        out = o.binary("ADD", out, o.binary("MUL", p_o, c_new, "po_c"), "o_peep")
    out = o.unary("LOGISTIC", o.clipped(out, "o"), "o_act")
    return o.binary("MUL", out, o.unary("TANH", c_new, "c_act"), "h"), c_new


def _gru_step(o: _Ops, cell, xt, h, H, label):
    """``r, z, n`` gates; ``linear_before_reset`` picks PyTorch's or ONNX's ``n``."""
    g = o.g
    xr, xz, xn = o.split(xt, 3, "x_gate")
    bhn = vec(cell, "bhn", H)
    if cell["_opts"].get("linear_before_reset", True):
        hp = o.fc(h, o.weight(cell, "Wh", label + ".Wh"),
                  g.const(label + ".bh", np.concatenate([np.zeros(2 * H, np.float32), bhn])),
                  "hp", 3 * H)
        hr, hz, hn = o.split(hp, 3, "h_gate")
    else:
        hrz = o.fc(h, o.weight(cell, "Wh", label + ".Wh_rz", slice(0, 2 * H)), None,
                   "hrz", 2 * H)
        hr, hz = o.split(hrz, 2, "h_gate")
    r = o.unary("LOGISTIC", o.clipped(o.binary("ADD", xr, hr, "r_pre"), "r"), "r")
    z = o.unary("LOGISTIC", o.clipped(o.binary("ADD", xz, hz, "z_pre"), "z"), "z")
    if cell["_opts"].get("linear_before_reset", True):
        n_pre = o.binary("ADD", xn, o.binary("MUL", r, hn, "r_hn"), "n_pre")
    else:
        hn = o.fc(o.binary("MUL", r, h, "r_h"),
                  o.weight(cell, "Wh", label + ".Wh_n", slice(2 * H, 3 * H)),
                  g.const(label + ".bhn", bhn), "hn", H)
        n_pre = o.binary("ADD", xn, hn, "n_pre")
    n = o.unary("TANH", o.clipped(n_pre, "n"), "n")
    keep = o.binary("SUB", g.const("one_z", 1.0), z, "one_minus_z")
    return o.binary("ADD", o.binary("MUL", keep, n, "zn"), o.binary("MUL", z, h, "zh"), "h")
