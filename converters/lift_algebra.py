"""Symbolic values for recognising hand-written LSTM/GRU steps (used by :mod:`lift_cells`).

A graph (or Loop/Scan body) is walked once in order; each tensor gets an
abstract value. Tensors nothing here understands are :class:`Leaf` symbols,
so any input, state or unknown computation can act as a cell's ``x``/``h``/``c``.
The values climb from affine projections to whole cell outputs:

- :class:`Lin`: ``sum_k leaf_k @ W_k + b`` with every ``W_k`` ``(K_k, N)`` and
  ``b`` ``(N,)``; built by ``MatMul``/``Gemm`` with a constant, ``Add`` of
  constants or other ``Lin``s, and column ``Split``/``Slice``.
- :class:`Act`: ``Sigmoid``/``Tanh`` of a ``Lin`` (one gate, ``N = H``).
- GRU pieces: ``r * h`` (:class:`RH`), ``r * Lin`` (:class:`RLin`), the
  candidate :class:`Cand` (``linear_before_reset`` 0 or 1), ``1 - z``
  (:class:`OneMinus`) and the output :class:`GRUOut` ``(1 - z) * n + z * h``
  (or ``n + z * (h - n)``).
- LSTM pieces: ``f * c`` (:class:`GateLeaf`), ``i * g`` (:class:`IG`), the new
  cell :class:`CNew` ``f * c + i * g``, ``tanh(c')`` and the output
  :class:`LSTMOut` ``o * tanh(c')``.

Only exactly these forms build up; anything else (another activation, an
extra scale, a peephole term, swapped update-gate roles) stays a ``Leaf`` and
the cell is not recognised. Everything is float32 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)
class Const:
    value: np.ndarray


@dataclass(eq=False)
class Leaf:
    name: str


@dataclass(eq=False)
class Lin:
    """``sum(leaf @ W) + b``; ``terms`` maps a key (a leaf name or ``RH`` id) to ``W (K, N)``."""

    terms: dict
    b: np.ndarray
    rh: dict = field(default_factory=dict)  # key -> RH for ``r * h`` inputs

    @property
    def n(self) -> int:
        return self.b.shape[0]


@dataclass(eq=False)
class Act:
    kind: str  # "sigmoid" or "tanh"
    lin: Lin
    name: str


@dataclass(eq=False)
class RH:  # r * h (GRU, linear_before_reset=0)
    r: Act
    h: str


@dataclass(eq=False)
class RLin:  # r * (h @ Rh + Rb) (GRU, linear_before_reset=1)
    r: Act
    lin: Lin


@dataclass(eq=False)
class CandPre:  # x @ Wh + Wb + r * (h @ Rh + Rb)
    lin_x: Lin
    r: Act
    lin_h: Lin


@dataclass(eq=False)
class Cand:
    """GRU candidate ``n``: ``lbr`` 1 (``pre`` a CandPre) or 0 (``pre`` a Lin with an RH term)."""

    lbr: int
    pre: object
    r: Act


@dataclass(eq=False)
class OneMinus:
    z: Act


@dataclass(eq=False)
class GateLeaf:  # sigmoid gate * leaf: LSTM f * c, GRU z * h
    gate: Act
    leaf: str


@dataclass(eq=False)
class ZN:  # (1 - z) * n
    z: Act
    cand: Cand


@dataclass(eq=False)
class HmN:  # h - n
    h: str
    cand: Cand


@dataclass(eq=False)
class GRUOut:
    z: Act
    cand: Cand
    h: str


@dataclass(eq=False)
class IG:  # i * g
    i: Act
    g: Act


@dataclass(eq=False)
class CNew:
    f: Act
    c: str
    i: Act
    g: Act


@dataclass(eq=False)
class TanhC:
    cnew: CNew


@dataclass(eq=False)
class LSTMOut:
    o: Act
    cnew: CNew


def _is_sig(v) -> bool:
    return isinstance(v, Act) and v.kind == "sigmoid"


def _ones(v) -> bool:
    return isinstance(v, Const) and v.value.size >= 1 and np.all(v.value == 1) and v.value.ndim <= 2


def _row_vector(c: Const, n: int) -> np.ndarray | None:
    """A constant broadcast along the batch: scalar, ``(n,)`` or ``(1, n)``; else None."""
    v = np.asarray(c.value)
    if v.dtype != np.float32 or v.ndim > 2 or (v.ndim == 2 and v.shape[0] != 1):
        return None
    v = v.reshape(-1)
    if v.size == 1:
        return np.full(n, v[0], np.float32)
    return v if v.size == n else None


def _add_lins(a: Lin, b: Lin) -> Lin | None:
    if a.n != b.n:
        return None
    terms = dict(a.terms)
    for k, w in b.terms.items():
        if k in terms:
            if terms[k].shape != w.shape:
                return None
            terms[k] = terms[k] + w
        else:
            terms[k] = w
    return Lin(terms, a.b + b.b, {**a.rh, **b.rh})


@dataclass(eq=False)
class _ZHmN:  # z * (h - n)
    z: Act
    h: str
    cand: Cand


def _cols(lin: Lin, lo: int, hi: int) -> Lin:
    return Lin({k: w[:, lo:hi] for k, w in lin.terms.items()}, lin.b[lo:hi].copy(), dict(lin.rh))


def _matmul(a, w: np.ndarray, a_name: str):
    """``a @ w`` for a leaf or ``r * h`` (a sigmoid gate times a leaf) and a ``(K, N)`` constant."""
    if w.ndim != 2 or w.dtype != np.float32:
        return None
    if isinstance(a, GateLeaf):  # g * leaf feeding a projection: GRU's r * h
        key = f"rh:{a_name}"
        return Lin({key: w}, np.zeros(w.shape[1], np.float32), {key: RH(a.gate, a.leaf)})
    if isinstance(a, Leaf):
        return Lin({a.name: w}, np.zeros(w.shape[1], np.float32))
    return None


def eval_add(a, b):
    for x, y in ((a, b), (b, a)):
        if isinstance(x, Lin) and isinstance(y, Const):
            row = _row_vector(y, x.n)
            return None if row is None else Lin(dict(x.terms), x.b + row, dict(x.rh))
        if isinstance(x, Lin) and isinstance(y, RLin):
            if set(x.terms) and all(not k.startswith("rh:") for k in x.terms):
                return CandPre(x, y.r, y.lin)
        if isinstance(x, GateLeaf) and isinstance(y, IG):
            return CNew(x.gate, x.leaf, y.i, y.g)
        if isinstance(x, GateLeaf) and isinstance(y, ZN) and x.gate is y.z:
            return GRUOut(x.gate, y.cand, x.leaf)
        if isinstance(x, Cand) and isinstance(y, _ZHmN) and y.cand is x:
            return GRUOut(y.z, x, y.h)
    if isinstance(a, Lin) and isinstance(b, Lin):
        return _add_lins(a, b)
    return None


def eval_mul(a, b):
    for x, y in ((a, b), (b, a)):
        if _is_sig(x) and isinstance(y, Leaf):
            return GateLeaf(x, y.name)
        if _is_sig(x) and isinstance(y, Lin) and not y.rh:
            return RLin(x, y)
        if _is_sig(x) and isinstance(y, Act) and y.kind == "tanh":
            return IG(x, y)
        if _is_sig(x) and isinstance(y, TanhC):
            return LSTMOut(x, y.cnew)
        if _is_sig(x) and isinstance(y, HmN):
            return _ZHmN(x, y.h, y.cand)
        if isinstance(x, OneMinus) and isinstance(y, Cand):
            return ZN(x.z, y)
    return None


def eval_sub(a, b):
    if _ones(a) and _is_sig(b):
        return OneMinus(b)
    if isinstance(a, Leaf) and isinstance(b, Cand):
        return HmN(a.name, b)
    if isinstance(a, Lin) and isinstance(b, Const):
        row = _row_vector(b, a.n)
        return None if row is None else Lin(dict(a.terms), a.b - row, dict(a.rh))
    return None


def eval_act(kind: str, a, name: str):
    if isinstance(a, Lin):
        rh = [k for k in a.terms if k.startswith("rh:")]
        if not rh:
            return Act(kind, a, name)
        if kind == "tanh" and len(rh) == 1:
            return Cand(0, a, a.rh[rh[0]].r)
        return None
    if kind == "tanh" and isinstance(a, CandPre):
        return Cand(1, a, a.r)
    if kind == "tanh" and isinstance(a, CNew):
        return TanhC(a)
    return None


def split_cols(a, sizes: list[int]):
    """Column blocks of a ``Lin`` (last axis), or None."""
    if not isinstance(a, Lin) or sum(sizes) != a.n:
        return None
    out, lo = [], 0
    for s in sizes:
        out.append(_cols(a, lo, lo + s))
        lo += s
    return out


def slice_cols(a, start: int, end: int):
    if not isinstance(a, Lin):
        return None
    n = a.n
    lo = max(0, start + n if start < 0 else start)
    hi = min(n, end + n if end < 0 else end)
    return _cols(a, lo, hi) if hi > lo else None


def matmul(a, b, a_name: str):
    if isinstance(b, Const):
        return _matmul(a, np.asarray(b.value), a_name)
    return None


def gemm(a, b, c, attrs: dict, a_name: str):
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    if not isinstance(b, Const):
        return None
    w = np.asarray(b.value)
    w = w.T if attrs.get("transB", 0) else w
    lin = _matmul(a, np.ascontiguousarray(w), a_name)
    if lin is None or c is None:
        return lin
    return eval_add(lin, c) if isinstance(c, Const) else None
