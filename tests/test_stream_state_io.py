"""Streaming any ONNX graph with state inputs/outputs (issue 9 item 5), on ORT and MLX.

Fixtures: ``tests/fixtures/make_head_fixtures.py`` (torch 2.13): ``torch_lstm_state_hc``
takes ``x, h, c`` and returns ``y, hn, cn``; ``torch_gru_state`` takes ``x, state``
and returns ``y, stateN``; ``torch_lstm_stream`` (make_fixtures.py) uses ``h0/c0 -> h_n/c_n``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgelstm.converters import run_onnx
from edgelstm.errors import ConfigError, UnsupportedError
from edgelstm.streaming.session import StreamingSession

FIX = Path(__file__).parent / "fixtures"
GRAPHS = {"torch_lstm_state_hc": ["h", "c"], "torch_gru_state": ["state"],
          "torch_lstm_stream": ["h0", "c0"]}


def _outputs(session, frames):
    s = session.create_stream()
    s.accept_frames(frames)
    s.input_finished()
    return np.concatenate([r.output for r in session.process(s)])


@pytest.mark.parametrize("backend", ["onnxruntime", "mlx"])
@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_chunked_equals_full_exactly(name, backend):
    path = FIX / f"{name}.onnx"
    frames = np.random.default_rng(0).standard_normal((23, 4)).astype(np.float32)
    full = StreamingSession.from_onnx(path, chunk_frames=23, backend=backend)
    assert full.backend.state_names == GRAPHS[name] and full.backend.name == backend
    want = _outputs(full, frames)
    for n in (1, 5, 7):
        got = _outputs(StreamingSession.from_onnx(path, chunk_frames=n, backend=backend), frames)
        # bit for bit on both: ORT's and the fused kernels' projections (chunks padded to
        # 8 rows, converters/onnx_exec/rnn_ops.py) round each row the same at any T
        np.testing.assert_array_equal(got, want)
    # the graph itself from zero states, on ONNX Runtime: the oracle
    feeds = {"x": frames[None]}
    feeds.update({k: np.zeros((2, 1, full.backend.hidden_size), np.float32)
                  for k in GRAPHS[name]})
    ref = run_onnx(path, feeds)[full.backend.output_names[0]][0]
    np.testing.assert_allclose(want, ref, atol=1e-5)


def test_from_path_mlx_uses_the_executor_and_explicit_states():
    path = FIX / "torch_lstm_state_hc.onnx"
    s = StreamingSession.from_path(path, backend="mlx", states={"h": "hn", "c": "cn"})
    assert s.backend.name == "mlx" and s.backend.output_names == ["y", "hn", "cn"]
    with pytest.raises(ConfigError, match="the graph has no output 'h_n'"):
        StreamingSession.from_onnx(path, states={"h": "h_n"})


def test_graph_without_state_pairs_is_refused():
    with pytest.raises(UnsupportedError, match="not a streaming export .no h0 input"):
        StreamingSession.from_onnx(FIX / "torch_lstm_layers_cat.onnx", backend="mlx")
