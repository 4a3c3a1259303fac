"""Per-sequence heads over any final states (issue 9 item 6), on PyTorch-exported fixtures.

Fixtures: ``tests/fixtures/make_head_fixtures.py`` (torch 2.13, TorchScript exporter).
Oracles: ONNX Runtime on the same graph and PyTorch's own outputs (in the ``.npz``).
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from edgelstm.converters import run_onnx, to_onnx
from edgelstm.converters.onnx_import import from_onnx

FIX = Path(__file__).parent / "fixtures"
ATOL = 1e-5  # float32 recurrences of 6 steps; observed max diff ~1e-7

CASES = {
    # name: (summary rows of the native model, output names)
    "torch_lstm_bi_cat_hn": (None, ["y", "hn", "cn"]),  # cat(h[-2], h[-1]): the default
    "torch_gru_bi_sum": (None, ["y"]),  # h[-2] + h[-1], folded into the head weight
    "torch_lstm_layers_cat": ([1, 0], ["y"]),  # cat(h[1], h[0]) of a 2-layer stack
    "torch_gru_bi2_mix": ([0, 1, 3], ["y", "hn"]),  # cat(h[0] + h[1], h[-1])
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_converted_head_matches_onnxruntime_and_torch(name):
    summary, outs = CASES[name]
    path = FIX / f"{name}.onnx"
    data = np.load(FIX / f"{name}.npz")
    model = from_onnx(path)
    assert model.head_type == "sequence" and model.summary == summary
    assert model.input_names == ["x"] and model.output_names == outs
    ref = run_onnx(path, {"x": data["x"]})
    y, final = model(mx.array(data["x"]), return_state=True)
    final = final if isinstance(final, tuple) else (final,)
    got = {"y": np.array(y), **{n: np.array(f) for n, f in zip(outs[1:], final, strict=False)}}
    for n in outs:
        np.testing.assert_allclose(got[n], ref[n], atol=ATOL, err_msg=n)
        np.testing.assert_allclose(got[n], data[n], atol=ATOL, err_msg=n)


@pytest.mark.parametrize("name", ["torch_lstm_layers_cat", "torch_gru_bi2_mix"])
def test_summary_round_trips_mlx_onnx_mlx(name, tmp_path):
    model = from_onnx(FIX / f"{name}.onnx")
    x = np.load(FIX / f"{name}.npz")["x"]
    want = np.array(model(mx.array(x)))
    to_onnx(model, tmp_path / "m.onnx")
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", {"x": x})["y"], want, atol=ATOL)
    again = from_onnx(tmp_path / "m.onnx")
    assert again.summary == model.summary
    np.testing.assert_allclose(np.array(again(mx.array(x))), want, atol=ATOL)
    model.save(tmp_path / "ckpt")
    from edgelstm.io.checkpoint import load

    loaded = load(tmp_path / "ckpt")
    assert loaded.summary == model.summary and loaded.config()["summary"] == model.summary
    np.testing.assert_allclose(np.array(loaded(mx.array(x))), want, atol=1e-6)


def test_bad_summary_is_a_config_error():
    from edgelstm import LSTM
    from edgelstm.errors import ConfigError
    from edgelstm.nn.model import SequenceModel

    with pytest.raises(ConfigError, match="summary must be a non-empty list of state rows"):
        SequenceModel(LSTM(3, 4, num_layers=2), num_outputs=2, head="sequence", summary=[2])
    with pytest.raises(ConfigError, match="summary needs head='sequence'"):
        SequenceModel(LSTM(3, 4), num_outputs=2, head="frame", summary=[0])
    m = SequenceModel(LSTM(3, 4, num_layers=2), num_outputs=2, head="sequence", summary=[1])
    assert m.summary is None and "summary" not in m.config()  # the default, stored as such
