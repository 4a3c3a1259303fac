"""Fused whole-sequence LSTM/GRU/RNN primitives for MLX's CPU backend.

Low-level: inputs are the projected input ``xp`` (bias included) and the
recurrent weights (float32, or int8 with per-row ``Wh_scales`` /
``Wx_scales``); use ``edgelstm.kernels`` for the checked wrappers.
"""

import mlx.core  # noqa: F401  (registers mx.array with nanobind first)

from edgelstm_kernels._ext import gru_seq, int8_weights, isa, lstm_seq, rnn_seq

__all__ = ["gru_seq", "int8_weights", "isa", "lstm_seq", "rnn_seq"]
__version__ = "0.1.0"
