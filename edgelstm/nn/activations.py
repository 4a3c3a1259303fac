"""The activation functions ONNX recurrent ops may name, in MLX.

ONNX lets LSTM/GRU/RNN choose their activations by name, some with
``alpha``/``beta`` parameters. Names are matched case-insensitively.
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx

# name -> (function(x, alpha, beta), default alpha, default beta)
_TABLE: dict[str, tuple[Callable, float | None, float | None]] = {
    "sigmoid": (lambda x, a, b: mx.sigmoid(x), None, None),
    "tanh": (lambda x, a, b: mx.tanh(x), None, None),
    "relu": (lambda x, a, b: mx.maximum(x, 0), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: mx.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: mx.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * mx.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: mx.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: mx.where(x >= 0, x, a * (mx.exp(x) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + mx.abs(x)), None, None),
    "softplus": (lambda x, a, b: mx.logaddexp(x, 0), None, None),
}

#: Spec of one activation: ``(name, alpha, beta)``; hashable, so it can key caches.
Activation = tuple[str, "float | None", "float | None"]


def names() -> list[str]:
    """Return the supported activation names (lower case)."""
    return sorted(_TABLE)


def spec(name: str, alpha: float | None = None, beta: float | None = None) -> Activation:
    """Normalise an activation name plus optional parameters to a spec tuple.

    Raises:
        ValueError: if the name is unknown.
    """
    key = name.lower()
    if key not in _TABLE:
        raise ValueError(f"unknown activation {name!r}; supported: {', '.join(names())}")
    _, da, db = _TABLE[key]
    return (key, da if alpha is None else float(alpha), db if beta is None else float(beta))


def apply(act: Activation, x: mx.array) -> mx.array:
    """Apply an activation spec to ``x`` (any shape)."""
    fn, _, _ = _TABLE[act[0]]
    return fn(x, act[1], act[2])
