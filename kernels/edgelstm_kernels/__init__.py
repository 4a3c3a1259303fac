"""Fused whole-sequence LSTM/GRU/RNN primitives for MLX's CPU backend.

Low-level: inputs are the projected input ``xp`` (bias included) and the
recurrent weights (float32, or int8 with per-row ``Wh_scales`` /
``Wx_scales``); ``*_stack`` run a unidirectional multi-layer stack in one primitive. Use
``edgelstm.fast.dispatch`` for the checked wrappers.
"""

import mlx.core  # noqa: F401  (registers mx.array with nanobind first)

from edgelstm_kernels._ext import (
    gru_seq,
    gru_stack,
    int8_weights,
    isa,
    lstm_seq,
    lstm_stack,
    rnn_seq,
    rnn_stack,
)

__all__ = [
    "gru_seq",
    "gru_stack",
    "int8_weights",
    "isa",
    "lstm_seq",
    "lstm_stack",
    "rnn_seq",
    "rnn_stack",
]
__version__ = "0.1.0"
