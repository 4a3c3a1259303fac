"""Import: ONNX from real exporters, PyTorch / Keras / mlx.nn weights, run_onnx errors."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgelstm
from edgelstm.converters import from_onnx, import_model, onnx_io_names, run_onnx
from edgelstm.converters.mlx_import import from_mlx_file
from edgelstm.converters.torch_import import from_state_dict
from edgelstm.errors import ConversionError, DataError, UnsupportedError

FIX = Path(__file__).parent / "fixtures"
ATOL = 1e-5  # float32 outputs of the tools vs ours, T = 7
ONNX_FIXTURES = sorted(p.stem for p in FIX.glob("*.onnx"))
KERAS_FIXTURES = sorted(p.name for p in FIX.iterdir() if p.suffix in (".keras", ".h5"))


def _run_native(model, data):
    # state inputs under the graph's own names (h0/c0, h/c, state)
    given = [mx.array(data[n]) for n in model.input_names[1:] if n in data.files]
    state = tuple(given) if len(given) == 2 else (given[0] if given else None)
    y, final = model(mx.array(data["x"]), state=state, return_state=True)
    return np.array(y), final


@pytest.mark.parametrize("name", ONNX_FIXTURES)
def test_exporter_fixtures_import_with_parity(name):
    """TorchScript and dynamo exporter output -> native, equal to torch's own output."""
    data = np.load(FIX / f"{name}.npz")
    model = from_onnx(FIX / f"{name}.onnx")
    assert isinstance(model, edgelstm.SequenceModel)
    assert not model.training
    ins, outs = onnx_io_names(FIX / f"{name}.onnx")
    assert model.input_names == ins and model.output_names == outs
    y, final = _run_native(model, data)
    np.testing.assert_allclose(y, data["y"], atol=ATOL, rtol=0)
    if "h_n" in data.files:
        np.testing.assert_allclose(np.array(final[0]), data["h_n"], atol=ATOL, rtol=0)
        np.testing.assert_allclose(np.array(final[1]), data["c_n"], atol=ATOL, rtol=0)
    feeds = {k: data[k] for k in ins}
    for backend in ("onnxruntime", "mlx"):
        got = run_onnx(FIX / f"{name}.onnx", feeds, backend=backend)
        np.testing.assert_allclose(got[outs[0]], data["y"], atol=ATOL, rtol=0, err_msg=backend)


def test_fixture_kinds():
    assert {n.split("_")[0] for n in ONNX_FIXTURES} == {"torch", "dynamo"}
    heads = {from_onnx(FIX / f"{n}.onnx").head_type for n in ONNX_FIXTURES}
    assert heads == {"frame", "sequence"}


@pytest.mark.parametrize("name", KERAS_FIXTURES)
def test_keras_fixtures(name):
    pytest.importorskip("h5py")
    data = np.load(FIX / f"{Path(name).stem}.npz")
    model = import_model(FIX / name, "keras")
    np.testing.assert_allclose(np.array(model(mx.array(data["x"]))), data["y"], atol=ATOL, rtol=0)


def test_keras_through_load_and_round_trip(tmp_path):
    pytest.importorskip("h5py")
    model = edgelstm.load(FIX / "keras_bigru_seq.keras")
    assert model.rnn.bidirectional and model.rnn.cell_options["linear_before_reset"] is True
    noreset = edgelstm.load(FIX / "keras_gru_noreset_frame.keras")
    assert noreset.rnn.cell_options["linear_before_reset"] is False


@pytest.mark.parametrize("head,key", [("sequence", "seq"), ("frame", "frame")])
def test_torch_safetensors_needs_no_torch(head, key, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # importing torch now fails
    data = np.load(FIX / "torch_lstm_bi.npz")
    model = import_model(FIX / "torch_lstm_bi.safetensors", "safetensors", head=head)
    y, (h, c) = model(mx.array(data["x"]), return_state=True)
    np.testing.assert_allclose(np.array(y), data[key], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.array(h), data["h_n"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(np.array(c), data["c_n"], atol=ATOL, rtol=0)


def test_torch_pt_and_gru_safetensors():
    pytest.importorskip("torch")
    data = np.load(FIX / "torch_lstm_bi.npz")
    model = edgelstm.load(FIX / "torch_lstm_bi.pt")
    assert model.head_type == "sequence"
    np.testing.assert_allclose(np.array(model(mx.array(data["x"]))), data["seq"], atol=ATOL)
    gdata = np.load(FIX / "torch_gru.npz")
    gru = edgelstm.load(FIX / "torch_gru.safetensors")
    assert isinstance(gru, edgelstm.GRU)
    y, h = gru(mx.array(gdata["x"]))
    np.testing.assert_allclose(np.array(y), gdata["y"], atol=ATOL)
    np.testing.assert_allclose(np.array(h), gdata["h_n"], atol=ATOL)


def test_torch_state_dict_errors():
    rng = np.random.default_rng(0)
    sd = {"rnn.weight_ih_l0": rng.standard_normal((16, 3)), "rnn.weight_hh_l0":
          rng.standard_normal((16, 4)), "rnn.bias_ih_l0": np.zeros(16), "rnn.bias_hh_l0": np.zeros(16)}
    assert isinstance(from_state_dict(dict(sd)), edgelstm.LSTM)
    with pytest.raises(ConversionError, match="not a GRU"):
        from_state_dict(dict(sd), cell="gru")
    with pytest.raises(UnsupportedError, match="projections"):
        from_state_dict({**sd, "rnn.weight_hr_l0": np.zeros((2, 4))})
    with pytest.raises(ConversionError, match="several recurrent modules"):
        from_state_dict({**sd, **{k.replace("rnn.", "b."): v for k, v in sd.items()}})
    with pytest.raises(ConversionError, match="unexpected tensor 'extra.scale'"):
        from_state_dict({**sd, "extra.scale": np.ones(3)})
    with pytest.raises(ConversionError, match="no PyTorch LSTM/GRU/RNN weights"):
        from_state_dict({"fc.weight": np.ones((2, 2))})


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_mlx_nn_weights(tmp_path, cls, suffix):
    mx.random.seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = [cls(3, 5), cls(5, 5)]
            self.fc = nn.Linear(5, 2)

        def __call__(self, x):
            for layer in self.layers:
                x = layer(x)
                x = x[0] if isinstance(x, tuple) else x  # LSTM: (hidden, cell)
            return self.fc(x)

    net = Net()
    path = tmp_path / f"w{suffix}"
    net.save_weights(str(path))
    model = from_mlx_file(path, head="frame")
    x = mx.random.normal((2, 6, 3))
    np.testing.assert_allclose(np.array(model(x)), np.array(net(x)), atol=ATOL, rtol=0)
    if suffix == ".safetensors":
        assert isinstance(edgelstm.load(path, head="frame"), edgelstm.SequenceModel)


def test_mlx_old_layout_detected(tmp_path):
    mx.random.seed(1)
    lstm = nn.LSTM(3, 5)
    x = mx.random.normal((2, 4, 3))
    want, _ = lstm(x)
    old = {"Wx": lstm.Wx.T, "Wh": lstm.Wh.T, "bias": lstm.bias}  # pre-Sept-2024 (D, 4H)
    mx.save_safetensors(str(tmp_path / "old.safetensors"), old)
    model = edgelstm.load(tmp_path / "old.safetensors")
    y, _ = model(x)
    np.testing.assert_allclose(np.array(y), np.array(want), atol=ATOL)


# --- hand-built graphs: what cannot be mapped -----------------------------------------


def _lstm_graph(extra_nodes=(), out="y", weights_as_inputs=False, attrs=None, seq_lens=False):
    rng = np.random.default_rng(0)
    I, H = 3, 4
    W = numpy_helper.from_array(rng.standard_normal((1, 4 * H, I)).astype(np.float32), "W")
    R = numpy_helper.from_array(rng.standard_normal((1, 4 * H, H)).astype(np.float32), "R")
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
             helper.make_node("LSTM", ["xt", "W", "R", "", "lens" if seq_lens else ""],
                              ["Y", "Y_h"], hidden_size=H, **(attrs or {})),
             helper.make_node("Squeeze", ["Y", "ax1"], ["ys"]),
             helper.make_node("Transpose", ["ys"], ["y"], perm=[1, 0, 2]), *extra_nodes]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", I])]
    inits = [numpy_helper.from_array(np.array([1], np.int64), "ax1")]
    if weights_as_inputs:
        inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "WR"]
    else:
        inits += [W, R]
    if seq_lens:
        inputs.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["B"]))
    g = helper.make_graph(nodes, "g", inputs,
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], inits)
    return helper.make_model_gen_version(g, opset_imports=[helper.make_opsetid("", 17)])


def test_plain_hand_built_graph_imports():
    model = from_onnx(_lstm_graph())
    assert model.head_type is None and model.output_names == ["y"]


@pytest.mark.parametrize("kwargs,error,match", [
    ({"extra_nodes": [helper.make_node("Softmax", ["y"], ["p"], name="probs")], "out": "p"},
     ConversionError, r"graph output 'p' .*cannot map node 'probs' \(Softmax\)"),
    ({"weights_as_inputs": True}, ConversionError, r"weight input W \('W'\) is not a constant"),
    ({"seq_lens": True}, UnsupportedError, "sequence_lens input cannot be imported"),
    ({"attrs": {"direction": "reverse"}}, UnsupportedError, "direction 'reverse'"),
])
def test_unmappable_graphs_name_what_failed(kwargs, error, match):
    with pytest.raises(error, match=match):
        from_onnx(_lstm_graph(**kwargs))


def test_graph_without_recurrent_node():
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3])])
    with pytest.raises(ConversionError, match="no LSTM, GRU or RNN node"):
        from_onnx(helper.make_model_gen_version(g, opset_imports=[helper.make_opsetid("", 17)]))


def test_run_onnx_errors(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_lstm_graph(), str(path))
    x = np.zeros((2, 5, 3), np.float32)
    assert run_onnx(path, {"x": x})["y"].shape == (2, 5, 4)
    with pytest.raises(DataError, match="missing input 'x'"):
        run_onnx(path, {})
    with pytest.raises(DataError, match="unknown input 'z'"):
        run_onnx(path, {"x": x, "z": x})
    with pytest.raises(DataError, match=r"input 'x' must have 3 dims"):
        run_onnx(path, {"x": x[0]})
    with pytest.raises(DataError, match=r"input 'x' must have shape \(B, T, 3\)"):
        run_onnx(path, {"x": np.zeros((2, 5, 7), np.float32)})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConversionError, match="is not a readable ONNX model"):
        run_onnx(bad, {"x": x})
    # initializers listed as graph inputs are not inputs to feed
    proto = _lstm_graph()
    proto.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, None))
    assert onnx_io_names(proto) == (["x"], ["y"])
