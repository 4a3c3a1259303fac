"""The training-step workload of bench_core.py: forward + backward + Adam.

One LSTM layer (``B=32 T=100 I=40 H=128``) and a linear head on the last step,
cross-entropy over 10 classes, one Adam step per call. Runners follow
bench_core's interface, ``run(chunk index, state) -> (y, state)``, with ``y`` the
step's loss (all runners start from the same weights and take the same steps,
so their losses agree to float32 rounding).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np

import edgelstm

CLASSES = 10
LR = 1e-3


class TrainWorkload:
    """Same attributes bench_core's Workload has (``name``, ``chunks``, ...)."""

    def __init__(self, name, B, T, H, I):
        self.name, self.B, self.T, self.H, self.I = name, B, T, H, I
        mx.random.seed(0)
        ref = nn.LSTM(I, H)
        head = nn.Linear(H, CLASSES)
        mx.eval(ref.parameters(), head.parameters())
        self.w = {k: np.array(getattr(ref, k)) for k in ("Wx", "Wh", "bias")}
        self.head = {k: np.array(v) for k, v in head.parameters().items()}
        rng = np.random.default_rng(0)
        self.x_np = rng.normal(0, 1, (B, T, I)).astype(np.float32)
        self.labels_np = rng.integers(0, CLASSES, B).astype(np.int32)
        self.x, self.labels = mx.array(self.x_np), mx.array(self.labels_np)
        self.chunks = [self.x]

    def _head(self):
        head = nn.Linear(self.H, CLASSES)
        head.update({k: mx.array(v) for k, v in self.head.items()})
        return head

    def _mlx_step(self, model, forward):
        """One Adam step on ``model`` (a Module whose ``forward(m, x)`` gives (B, T, H))."""
        opt = optim.Adam(learning_rate=LR, bias_correction=True)  # as torch.optim.Adam

        def loss_fn(m, x, labels):
            logits = m.head(forward(m, x)[:, -1])
            return nn.losses.cross_entropy(logits, labels, reduction="mean")

        grad = nn.value_and_grad(model, loss_fn)
        model.train()

        def run(k, state):
            loss, grads = grad(model, self.x, self.labels)
            opt.update(model, grads)
            mx.eval(loss, model.parameters(), opt.state)
            return np.array(loss), None

        return run

    def edgelstm(self, fast):
        model = nn.Module()
        model.rnn = edgelstm.LSTM(self.I, self.H)
        cell = model.rnn.layers[0].forward
        cell.Wx, cell.Wh, cell.bias = (mx.array(self.w[k]) for k in ("Wx", "Wh", "bias"))
        model.head = self._head()
        return self._mlx_step(model, lambda m, x: m.rnn(x, fast=fast)[0])

    def mlx_nn(self):
        model = nn.Module()
        model.rnn = nn.LSTM(self.I, self.H)
        model.rnn.update({k: mx.array(v) for k, v in self.w.items()})
        model.head = self._head()
        return self._mlx_step(model, lambda m, x: m.rnn(x)[0])

    def torch(self):
        import torch

        rnn = torch.nn.LSTM(self.I, self.H, batch_first=True)
        head = torch.nn.Linear(self.H, CLASSES)
        with torch.no_grad():
            rnn.weight_ih_l0.copy_(torch.from_numpy(self.w["Wx"]))
            rnn.weight_hh_l0.copy_(torch.from_numpy(self.w["Wh"]))
            rnn.bias_ih_l0.copy_(torch.from_numpy(self.w["bias"]))
            rnn.bias_hh_l0.zero_()
            head.weight.copy_(torch.from_numpy(self.head["weight"]))
            head.bias.copy_(torch.from_numpy(self.head["bias"]))
        params = [*rnn.parameters(), *head.parameters()]
        opt = torch.optim.Adam(params, lr=LR)
        x = torch.from_numpy(self.x_np)
        labels = torch.from_numpy(self.labels_np.astype(np.int64))

        def run(k, state):
            opt.zero_grad()
            y, _ = rnn(x)
            loss = torch.nn.functional.cross_entropy(head(y[:, -1]), labels)
            loss.backward()
            opt.step()
            return loss.detach().numpy(), None

        return run


def impls(kernels_available: bool, torch_version: str | None) -> dict:
    """Runner factories for :class:`TrainWorkload`, bench_core's ``impls`` shape."""
    out = {
        "mlx.nn.LSTM": lambda wl: wl.mlx_nn(),
        "edgelstm pure MLX (fast=False)": lambda wl: wl.edgelstm(False),
    }
    if kernels_available:
        out["edgelstm kernel (train mode)"] = lambda wl: wl.edgelstm(None)
    if torch_version:
        out[f"torch.nn.LSTM {torch_version}"] = lambda wl: wl.torch()
    return out
