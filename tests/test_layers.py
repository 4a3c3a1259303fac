"""Layer API: mlx.nn and PyTorch parity, state carrying, lengths semantics."""

from __future__ import annotations

import itertools

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import edgelstm
from edgelstm.errors import ConfigError

ATOL = 1e-5
KINDS = {"lstm": edgelstm.LSTM, "gru": edgelstm.GRU, "rnn": edgelstm.RNN}
MLX_NN = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _close(a, b, atol=ATOL):
    np.testing.assert_allclose(np.array(a), np.array(b), atol=atol, rtol=1e-5)


def _mlx_nn_pair(kind, input_size, hidden):
    """An mlx.nn layer and a one-layer edgelstm stack (eval mode) with its weights."""
    ref = MLX_NN[kind](input_size, hidden)
    ours = KINDS[kind](input_size, hidden).eval()
    ours.layers[0].forward.update(ref.parameters())
    return ref, ours


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_mlx_nn_weights_load_unchanged(kind):
    ref, ours = _mlx_nn_pair(kind, 5, 7)
    x = mx.random.normal((3, 11, 5))
    y, _ = ours(x)
    want = ref(x)[0] if kind == "lstm" else ref(x)
    _close(y, want)
    # unbatched input and carried state agree with mlx.nn too
    y1, _ = ours(x[0])
    _close(y1, want[0])


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_mlx_nn_state_argument(kind):
    ref, ours = _mlx_nn_pair(kind, 4, 6)
    x = mx.random.normal((2, 5, 4))
    h0 = mx.random.normal((2, 6))
    if kind == "lstm":
        c0 = mx.random.normal((2, 6))
        want = ref(x, hidden=h0, cell=c0)[0]
        y, _ = ours(x, (h0[None], c0[None]))
    else:
        want = ref(x, hidden=h0)
        y, _ = ours(x, h0[None])
    _close(y, want)


def _torch_to_ours(kind, tmod, ours):
    """Copy torch nn.LSTM/GRU/RNN weights into an edgelstm stack (test-local mapping)."""
    for k, layer in enumerate(ours.layers):
        for d, cell in enumerate(ours._cells(layer)):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w_ih = getattr(tmod, "weight_ih" + sfx).detach().numpy()
            w_hh = getattr(tmod, "weight_hh" + sfx).detach().numpy()
            b_ih = getattr(tmod, "bias_ih" + sfx).detach().numpy()
            b_hh = getattr(tmod, "bias_hh" + sfx).detach().numpy()
            if kind == "lstm":
                cell.update({"Wx": mx.array(w_ih), "Wh": mx.array(w_hh),
                             "bias": mx.array(b_ih + b_hh)})
            elif kind == "gru":
                H = w_hh.shape[1]
                b = b_ih.copy()
                b[: 2 * H] += b_hh[: 2 * H]
                cell.update({"Wx": mx.array(w_ih), "Wh": mx.array(w_hh), "b": mx.array(b),
                             "bhn": mx.array(b_hh[2 * H:])})
            else:
                cell.update({"Wxh": mx.array(w_ih), "Whh": mx.array(w_hh),
                             "bias": mx.array(b_ih + b_hh)})


@pytest.mark.parametrize("kind,layers,bidir", list(itertools.product(
    ["lstm", "gru", "rnn"], [1, 2], [False, True])))
def test_torch_parity_stacks(kind, layers, bidir):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    tmod = tcls(5, 6, num_layers=layers, bidirectional=bidir, batch_first=True)
    ours = KINDS[kind](5, 6, num_layers=layers, bidirectional=bidir).eval()
    _torch_to_ours(kind, tmod, ours)
    x = np.random.randn(3, 8, 5).astype(np.float32)
    dirs = 2 if bidir else 1
    h0 = np.random.randn(layers * dirs, 3, 6).astype(np.float32)
    c0 = np.random.randn(layers * dirs, 3, 6).astype(np.float32)
    with torch.no_grad():
        if kind == "lstm":
            ty, (th, tc) = tmod(torch.from_numpy(x), (torch.from_numpy(h0), torch.from_numpy(c0)))
            y, (h, c) = ours(mx.array(x), (mx.array(h0), mx.array(c0)))
            _close(c, tc.numpy())
        else:
            ty, th = tmod(torch.from_numpy(x), torch.from_numpy(h0))
            y, h = ours(mx.array(x), mx.array(h0))
    _close(y, ty.numpy())
    _close(h, th.numpy())


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_torch_packed_sequence_matches_lengths(kind):
    torch = pytest.importorskip("torch")
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
    tmod = tcls(4, 5, num_layers=2, bidirectional=True, batch_first=True)
    ours = KINDS[kind](4, 5, num_layers=2, bidirectional=True).eval()
    _torch_to_ours(kind, tmod, ours)
    x = np.random.randn(3, 9, 4).astype(np.float32)
    lengths = [9, 4, 1]
    with torch.no_grad():
        packed = pack_padded_sequence(torch.from_numpy(x), lengths, batch_first=True,
                                      enforce_sorted=False)
        ty, tstate = tmod(packed)
        ty, _ = pad_packed_sequence(ty, batch_first=True, total_length=9)
    y, state = ours(mx.array(x), lengths=mx.array(lengths))
    _close(y, ty.numpy())
    th = tstate[0] if kind == "lstm" else tstate
    _close(state[0] if kind == "lstm" else state, th.numpy())


@pytest.mark.parametrize("kind,layers", list(itertools.product(["lstm", "gru", "rnn"], [1, 2])))
def test_chunked_state_carry_equals_full_pass(kind, layers):
    model = KINDS[kind](3, 8, num_layers=layers).eval()
    x = mx.random.normal((2, 23, 3))
    full, full_state = model(x)
    state, outs = None, []
    for a, b in [(0, 1), (1, 8), (8, 9), (9, 23)]:
        y, state = model(x[:, a:b], state)
        outs.append(y)
    _close(mx.concatenate(outs, axis=1), full)
    if kind == "lstm":
        _close(state[0], full_state[0])
        _close(state[1], full_state[1])
    else:
        _close(state, full_state)


@pytest.mark.parametrize("kind,bidir", list(itertools.product(["lstm", "gru", "rnn"], [False, True])))
def test_lengths_equal_running_each_truncated_sequence(kind, bidir):
    model = KINDS[kind](3, 6, num_layers=2, bidirectional=bidir).eval()
    x = mx.random.normal((3, 10, 3))
    lengths = [10, 6, 1]
    y, state = model(x, lengths=mx.array(lengths))
    h = state[0] if kind == "lstm" else state
    for b, n in enumerate(lengths):
        yb, sb = model(x[b : b + 1, :n])
        hb = sb[0] if kind == "lstm" else sb
        _close(y[b, :n], yb[0])
        assert float(mx.abs(y[b, n:]).max() if n < 10 else 0.0) == 0.0
        _close(h[:, b], hb[:, 0])


def test_zero_state_equals_no_state():
    model = edgelstm.LSTM(4, 5, num_layers=2, bidirectional=True).eval()
    x = mx.random.normal((2, 6, 4))
    _close(model(x)[0], model(x, model.zero_state(2))[0])


def test_time_major_input():
    model = edgelstm.GRU(4, 5, batch_first=False).eval()
    x = mx.random.normal((6, 2, 4))
    y, h = model(x)
    assert y.shape == (6, 2, 5) and h.shape == (1, 2, 5)
    model.batch_first = True
    _close(y, model(x.transpose(1, 0, 2))[0].transpose(1, 0, 2))


def test_shapes_and_float16():
    model = edgelstm.LSTM(4, 5, num_layers=3, bidirectional=True).eval()
    y, (h, c) = model(mx.random.normal((2, 7, 4)))
    assert y.shape == (2, 7, 10) and h.shape == (6, 2, 5) and c.shape == (6, 2, 5)
    model.set_dtype(mx.float16)
    y16, _ = model(mx.random.normal((2, 7, 4)).astype(mx.float16))
    assert y16.dtype == mx.float16


def test_dropout_only_in_training():
    model = edgelstm.LSTM(4, 8, num_layers=2, dropout=0.5)
    x = mx.random.normal((2, 5, 4))
    model.eval()
    _close(model(x)[0], model(x)[0], atol=0)
    model.train()
    assert float(mx.abs(model(x)[0] - model(x)[0]).max()) > 0


def test_gradients_flow_in_training_mode():
    model = edgelstm.GRU(3, 4)
    x = mx.random.normal((2, 5, 3))

    def loss(params):
        model.update(params)
        return model(x)[0].sum()

    grads = mx.grad(loss)(model.trainable_parameters())
    g = grads["layers"][0]["forward"]["Wh"]
    assert float(mx.abs(g).sum()) > 0


@pytest.mark.parametrize("bad,message", [
    ({"hidden_size": 0}, "hidden_size must be a positive integer, got 0"),
    ({"dropout": 1.5}, "dropout must be in [0, 1), got 1.5"),
    ({"nonlinearity": "gelu"}, "unknown LSTM option(s): nonlinearity"),
    ({"clip": -1.0}, "clip must be positive, got -1.0"),
])
def test_bad_config_messages(bad, message):
    kwargs = {"input_size": 3, "hidden_size": 4, **bad}
    with pytest.raises(ConfigError) as err:
        edgelstm.LSTM(**kwargs)
    assert str(err.value) == message


def test_wrong_input_width():
    with pytest.raises(ValueError, match="expected 3 input features, got 5"):
        edgelstm.LSTM(3, 4)(mx.zeros((1, 2, 5)))
