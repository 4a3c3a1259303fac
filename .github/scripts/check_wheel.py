"""Smoke-test an installed edgelstm wheel: the kernels import, link their BLAS and run."""

import sys

import mlx.core as mx  # first: the kernels convert arrays through mlx's nanobind types

from edgelstm.fast import _kernels

y, h = _kernels.rnn_seq(mx.ones((1, 1, 1)), mx.zeros((1, 1)))
mx.eval(y, h)
if abs(y.item() - 0.7615942) > 1e-4:
    sys.exit(f"rnn_seq returned {y.item()}, expected tanh(1) = 0.7615942")
sys.stdout.write(f"edgelstm.fast._kernels OK: {_kernels.isa()}, {_kernels.blas_info()}\n")
