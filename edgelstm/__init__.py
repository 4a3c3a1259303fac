"""edgelstm: LSTM, GRU and RNN for the edge, native in MLX, portable through ONNX.

The MLX core is re-exported here; ONNX-facing code lives in
``edgelstm.converters`` and ``edgelstm.quantize`` and is imported lazily.
"""

from edgelstm import _blas

_blas.load()  # must run before mlx.core is imported anywhere

from edgelstm._version import __version__  # noqa: E402
