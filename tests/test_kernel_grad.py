"""Gradients through the fused kernels (C++ BPTT) against pure-MLX autodiff
(``fast=False``) and PyTorch's autograd (when installed)."""

from __future__ import annotations

import itertools

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from gradient_checks import distinct_loss as _loss
from mlx.utils import tree_flatten

from edgelstm.errors import EdgeLSTMError
from edgelstm.fast import dispatch as kernels
from edgelstm.fast import stacks
from edgelstm.nn import recurrent as R
from edgelstm.nn.layers import GRU, LSTM, RNN

pytestmark = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}")

B, T, I, H = 3, 6, 5, 7
RTOL, ATOL = 1e-4, 1e-5  # float32 BPTT in another summation order
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
CELLS = [
    ("lstm", {}),
    ("lstm", {"train": True}),
    ("gru", {"linear_before_reset": True}),
    ("gru", {"linear_before_reset": False}),
    ("rnn", {}),
    ("rnn", {"activations": (R.A.spec("relu"),)}),
]
CELL_IDS = ["lstm", "lstm_saved", "gru_lbr", "gru_onnx", "rnn_tanh", "rnn_relu"]
LENGTHS = [6, 2, 0]  # full, short, empty


def _arr(rng, shape, scale=0.5):
    return mx.array(rng.normal(0, scale, shape).astype(np.float32))


def _params(kind, rng):
    """x (B,T,I), Wx, Wh, bias, h0 (B,H), c0 (B,H), bhn (H,)."""
    G = GATES[kind] * H
    return [_arr(rng, (B, T, I), 1.0), _arr(rng, (G, I)), _arr(rng, (G, H)), _arr(rng, (G,)),
            _arr(rng, (B, H)), _arr(rng, (B, H)), _arr(rng, (H,))]


def _run(kind, opts, args, lengths, reverse, fast):
    x, Wx, Wh, b, h0, c0, bhn = args
    if kind == "lstm":
        # train (opts): the forward saves its activations for the backward
        y, (h, c) = R.lstm(x, Wx, Wh, b, h0=h0, c0=c0, lengths=lengths, reverse=reverse,
                           fast=fast, **opts)
        return y, h, c
    if kind == "gru":
        y, h = R.gru(x, Wx, Wh, b, bhn, h0=h0, lengths=lengths, reverse=reverse, fast=fast,
                     **opts)
    else:
        y, h = R.rnn(x, Wx, Wh, b, h0=h0, lengths=lengths, reverse=reverse, fast=fast, **opts)
    return y, h


def _assert_grads(got, want):
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(np.array(g), np.array(w), rtol=RTOL, atol=ATOL,
                                   err_msg=f"gradient {k}")


@pytest.mark.parametrize(("kind", "opts"), CELLS, ids=CELL_IDS)
@pytest.mark.parametrize(("reverse", "lengths"),
                         list(itertools.product([False, True], [None, LENGTHS])))
def test_cell_gradients_match_pure(kind, opts, reverse, lengths, rng):
    args = _params(kind, rng)
    argnums = tuple(range(len(args)))

    def grads(fast):
        f = lambda *a: _loss(_run(kind, opts, a, lengths, reverse, fast))  # noqa: E731
        return mx.grad(f, argnums=argnums)(*args)

    _assert_grads(grads(True), grads(False))


@pytest.mark.parametrize(("kind", "opts"), CELLS, ids=CELL_IDS)
def test_without_bias_or_states(kind, opts, rng):
    x, Wx, Wh, *_ = _params(kind, rng)

    def grads(fast):
        def f(x, Wx, Wh):
            run = {"lstm": R.lstm, "gru": R.gru, "rnn": R.rnn}[kind]
            out = run(x, Wx, Wh, fast=fast, **opts)
            return _loss([out[0]])

        return mx.grad(f, argnums=(0, 1, 2))(x, Wx, Wh)

    _assert_grads(grads(True), grads(False))


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_low_level_time_major_projected_input(kind, rng):
    """The primitive without in-kernel projection: gradient w.r.t. xp, time-major."""
    G = GATES[kind] * H
    xp, Wh, h0 = _arr(rng, (T, B, G), 1.0), _arr(rng, (G, H)), _arr(rng, (B, H))
    lengths = mx.array(LENGTHS, dtype=mx.int32)

    def fused(xp, Wh, h0):
        fn = {"lstm": kernels.lstm_seq, "gru": kernels.gru_seq, "rnn": kernels.rnn_seq}[kind]
        kw = {"bhn": None} if kind == "gru" else {}
        y, s = fn(xp, Wh, h0=h0, lengths=lengths, reverse=True, **kw)
        return _loss([y, *(s if isinstance(s, tuple) else (s,))])

    def pure(xp, Wh, h0):
        # Identity projection: x = xp, Wx = I, so xp is what the cell sees.
        eye = mx.eye(G)
        out = _run(kind, {}, [xp.transpose(1, 0, 2), eye, Wh, None, h0, None, None],
                   lengths, True, False)
        return _loss([out[0].transpose(1, 0, 2), *out[1:]])

    got = mx.grad(fused, argnums=(0, 1, 2))(xp, Wh, h0)
    want = mx.grad(pure, argnums=(0, 1, 2))(xp, Wh, h0)
    _assert_grads(got, want)


MODELS = {
    "lstm": (LSTM, {}),
    "gru_lbr": (GRU, {}),
    "gru_onnx": (GRU, {"linear_before_reset": False}),
    "rnn_relu": (RNN, {"nonlinearity": "relu"}),
}


def _model_grads(model, x, state, lengths, fast):
    def loss(m, x, state):
        y, s = m(x, state, lengths=lengths, fast=fast)
        return _loss([y, *(s if isinstance(s, tuple) else (s,))])

    mx.random.seed(1)  # the same dropout masks for both paths
    _, g = nn.value_and_grad(model, loss)(model, x, state)
    state_grad = None if state is None else mx.grad(lambda s: loss(model, x, s))(state)
    return dict(tree_flatten(g)), state_grad


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("bidirectional", "batch_first"), [(False, True), (True, True),
                                                             (False, False)])
def test_model_gradients_match_pure(name, bidirectional, batch_first, rng):
    """Stacks: the stack primitive (unidirectional) or one fused call per layer and
    direction (bidirectional), with lengths and initial states."""
    cls, opts = MODELS[name]
    model = cls(I, H, num_layers=2, bidirectional=bidirectional, batch_first=batch_first,
                **opts)
    model.train()
    mx.eval(model.parameters())
    x = _arr(rng, (B, T, I) if batch_first else (T, B, I), 1.0)
    shape = (2 * model.num_directions, B, H)
    state = (_arr(rng, shape), _arr(rng, shape)) if name == "lstm" else _arr(rng, shape)
    lengths = mx.array(LENGTHS, dtype=mx.int32)
    if not bidirectional:
        assert isinstance(stacks.plan_stack(model, x, state, None), list)  # fused in training
    got, got_s = _model_grads(model, x, state, lengths, None)
    want, want_s = _model_grads(model, x, state, lengths, False)
    assert got.keys() == want.keys()
    _assert_grads([got[k] for k in sorted(got)], [want[k] for k in sorted(want)])
    _assert_grads([v for _, v in tree_flatten(got_s)], [v for _, v in tree_flatten(want_s)])


def test_dropout_in_training_runs_fused_per_layer(rng, monkeypatch):
    model = LSTM(I, H, num_layers=3, dropout=0.3)
    model.train()
    mx.eval(model.parameters())
    x = _arr(rng, (B, T, I), 1.0)
    assert "dropout" in stacks.plan_stack(model, x, None, None)
    calls = []
    real = kernels.lstm_seq
    monkeypatch.setattr(kernels, "lstm_seq", lambda *a, **k: calls.append(1) or real(*a, **k))
    got, _ = _model_grads(model, x, None, None, None)
    assert len(calls) == 3  # every layer fused, dropout between them
    monkeypatch.undo()
    want, _ = _model_grads(model, x, None, None, False)
    _assert_grads([got[k] for k in sorted(got)], [want[k] for k in sorted(want)])


def test_compiled_training_step(rng):
    model = GRU(I, H, num_layers=2)
    model.train()
    mx.eval(model.parameters())
    x = _arr(rng, (B, T, I), 1.0)

    params = model.trainable_parameters()

    def loss(params, x):
        model.update(params)
        return _loss([model(x)[0]])

    _, got = mx.compile(mx.value_and_grad(loss))(params, x)
    model.update(params)
    _, want = nn.value_and_grad(model, lambda m, x: _loss([m(x, fast=False)[0]]))(model, x)
    got, want = dict(tree_flatten(got)), dict(tree_flatten(want))
    _assert_grads([got[k] for k in sorted(got)], [want[k] for k in sorted(want)])


def test_int8_weights_have_no_gradient(rng):
    from edgelstm.quantize import QuantConfig, quantize_mlx

    model = LSTM(I, H, num_layers=1)
    model.eval()
    q = quantize_mlx(model, QuantConfig())
    x = _arr(rng, (1, T, I), 1.0)
    with pytest.raises((RuntimeError, EdgeLSTMError), match="int8 weights have no gradient"):
        mx.eval(mx.grad(lambda x: q(x)[0].sum())(x))


# -- PyTorch's autograd as an independent oracle --------------------------------------


def _torch_case(kind, rng, reverse_ok=False):
    torch = pytest.importorskip("torch")
    G = GATES[kind] * H
    w = {k: rng.normal(0, 0.5, s).astype(np.float32) for k, s in
         {"w_ih": (G, I), "w_hh": (G, H), "b_ih": (G,), "b_hh": (G,)}.items()}
    x = rng.normal(0, 1, (B, T, I)).astype(np.float32)
    h0 = rng.normal(0, 0.5, (B, H)).astype(np.float32)
    c0 = rng.normal(0, 0.5, (B, H)).astype(np.float32)
    return torch, w, x, h0, c0


@pytest.mark.parametrize("kind", ["lstm", "lstm_saved", "gru", "rnn_tanh", "rnn_relu"])
def test_gradients_match_pytorch(kind, rng):
    base = kind.split("_")[0]
    torch, w, x, h0, c0 = _torch_case(base, rng)
    cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[base]
    kw = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    net = cls(I, H, batch_first=True, **kw)
    with torch.no_grad():
        for name, v in w.items():
            getattr(net, f"weight_{name[2:]}_l0" if name.startswith("w") else
                    f"bias_{name[2:]}_l0").copy_(torch.from_numpy(v))
    tx = torch.from_numpy(x).requires_grad_()
    th0 = torch.from_numpy(h0)[None].clone().requires_grad_()
    tc0 = torch.from_numpy(c0)[None].clone().requires_grad_()
    y, s = net(tx, (th0, tc0) if base == "lstm" else th0)
    outs = [y, *(s if isinstance(s, tuple) else (s,))]
    total = 0
    for k, o in enumerate(outs):
        o = o[0] if o.ndim == 3 and k > 0 else o
        wt = torch.sin(torch.arange(o.numel(), dtype=torch.float32) * (0.37 + k)).reshape(o.shape)
        total = total + (o * wt).sum() + 0.1 * (o * o).sum()
    total.backward()

    H_ = H
    if base == "gru":  # b: r, z summed; n input bias alone; bhn separate
        b = np.concatenate([w["b_ih"][: 2 * H_] + w["b_hh"][: 2 * H_], w["b_ih"][2 * H_:]])
        bhn = mx.array(w["b_hh"][2 * H_:])
    else:
        b, bhn = w["b_ih"] + w["b_hh"], None
    opts = {"activations": (R.A.spec("relu"),)} if kind == "rnn_relu" else {}
    if kind == "lstm_saved":
        opts = {"train": True}
    args = [mx.array(x), mx.array(w["w_ih"]), mx.array(w["w_hh"]), mx.array(b),
            mx.array(h0), mx.array(c0), bhn]
    nums = (0, 1, 2, 3, 4) + ((5,) if base == "lstm" else ()) + ((6,) if base == "gru" else ())

    def f(*a):
        return _loss(_run(base, opts, a, None, False, True))

    g = mx.grad(f, argnums=nums)(*args)
    want = [tx.grad, net.weight_ih_l0.grad, net.weight_hh_l0.grad, net.bias_ih_l0.grad,
            th0.grad[0]]
    if base == "lstm":
        want.append(tc0.grad[0])
    got = list(g)
    if base == "gru":
        # d b (r, z) = d b_ih = d b_hh there; d b (n) = d b_ih (n); d bhn = d b_hh (n).
        want.append(net.bias_hh_l0.grad[2 * H_:])
    _assert_grads(got, [t.detach().numpy() for t in want])


@pytest.mark.parametrize(("kind", "opts"), CELLS, ids=CELL_IDS)
def test_nan_propagates_like_pure(kind, opts, rng):
    """A NaN / inf in one sequence: the kernel's outputs are NaN exactly where MLX's are."""
    args = _params(kind, rng)
    x = np.array(args[0])
    x[0, 2, 1] = np.nan
    x[1, 3, 0] = np.inf
    x[2, 1, 2] = -np.inf
    args[0] = mx.array(x)
    got = _run(kind, opts, args, None, False, True)
    want = _run(kind, opts, args, None, False, False)
    for g, w in zip(got, want, strict=True):
        g, w = np.array(g), np.array(w)
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_allclose(g, w, rtol=0, atol=1e-5)  # NaNs compare equal
