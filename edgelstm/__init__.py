"""edgelstm: LSTM, GRU and RNN for the edge, native in MLX, portable through ONNX.

The MLX core is re-exported here; ONNX-facing code lives in
``edgelstm.converters`` and ``edgelstm.quantize`` and is imported lazily.
"""

from edgelstm.fast import blas as _blas

_blas.load()  # must run before mlx.core is imported anywhere

from edgelstm._version import __version__  # noqa: E402
from edgelstm.errors import EdgeLSTMError  # noqa: E402
from edgelstm.io.checkpoint import load, save  # noqa: E402
from edgelstm.nn.layers import GRU, LSTM, RNN  # noqa: E402
from edgelstm.nn.model import SequenceModel  # noqa: E402
from edgelstm.streaming.session import StreamingSession, stream_chunks  # noqa: E402

__all__ = ["GRU", "LSTM", "RNN", "EdgeLSTMError", "SequenceModel", "StreamingSession",
           "__version__", "load", "save", "stream_chunks"]
