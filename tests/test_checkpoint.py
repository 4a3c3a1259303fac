"""Checkpoint round trips and the errors for broken or mismatched files."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

import edgelstm
from edgelstm.errors import CheckpointError, EdgeLSTMError

MODELS = {
    "lstm-bi-peephole": lambda: edgelstm.LSTM(4, 6, num_layers=2, bidirectional=True,
                                              peephole=True, clip=3.0),
    "gru-onnx-form": lambda: edgelstm.GRU(4, 6, linear_before_reset=False, bias=False),
    "rnn-relu": lambda: edgelstm.RNN(4, 6, nonlinearity="relu"),
    "lstm-custom-activations": lambda: edgelstm.LSTM(
        4, 6, activations=["sigmoid", "tanh", ["leakyrelu", 0.2, None]]),
    "sequence": lambda: edgelstm.SequenceModel(
        edgelstm.LSTM(4, 6, num_layers=2), head="sequence", labels=["a", "b", "c"],
        normalize=True, features={"kind": "mfcc", "sample_rate": 8000}),
    "frame": lambda: edgelstm.SequenceModel(edgelstm.GRU(4, 6), head="frame", num_outputs=2),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_round_trip_is_exact(tmp_path, name):
    model = MODELS[name]().eval()
    path = model.save(tmp_path / "ckpt")
    loaded = edgelstm.load(path)
    a, b = dict(tree_flatten(model.parameters())), dict(tree_flatten(loaded.parameters()))
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(np.array(a[k]), np.array(b[k])), k
    x = mx.random.normal((2, 5, 4))
    out_a, out_b = model(x), loaded(x)
    out_a = out_a[0] if isinstance(out_a, tuple) else out_a
    out_b = out_b[0] if isinstance(out_b, tuple) else out_b
    assert np.array_equal(np.array(out_a), np.array(out_b))
    assert loaded.config() == model.config()
    assert not loaded.training


def test_config_is_sorted_and_weights_marked_mlx(tmp_path):
    MODELS["sequence"]().save(tmp_path / "m")
    text = (tmp_path / "m" / "config.json").read_text()
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), "numpy") as f:
        assert f.metadata() == {"format": "mlx"}


def test_refuses_to_overwrite_unless_forced(tmp_path):
    model = MODELS["rnn-relu"]()
    model.save(tmp_path / "m")
    with pytest.raises(EdgeLSTMError, match="already exists; pass --force"):
        model.save(tmp_path / "m")
    other = edgelstm.RNN(4, 6)
    other.save(tmp_path / "m", force=True)
    got = edgelstm.load(tmp_path / "m").layers[0].forward.Whh
    assert np.array_equal(np.array(got), np.array(other.layers[0].forward.Whh))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers


def test_failed_save_leaves_nothing(tmp_path):
    model = MODELS["sequence"]()
    model.features = {"bad": object()}  # not JSON-serialisable
    with pytest.raises(TypeError):
        model.save(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def _saved(tmp_path):
    path = MODELS["sequence"]().save(tmp_path / "m")
    return path


def test_shape_mismatch_names_the_tensor(tmp_path):
    path = _saved(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["rnn"]["hidden_size"] = 7
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        edgelstm.load(path)
    assert "tensor 'rnn.layers.0.forward.Wx' has shape (24, 4), expected (28, 4)" in str(err.value)


def test_missing_and_unexpected_tensors(tmp_path):
    path = _saved(tmp_path)
    weights = dict(mx.load(str(path / "model.safetensors")))
    weights.pop("norm.std")
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    with pytest.raises(CheckpointError, match="missing tensor 'norm.std'"):
        edgelstm.load(path)
    weights["norm.std"] = mx.ones((4,))
    weights["extra.w"] = mx.ones((1,))
    mx.save_safetensors(str(path / "model.safetensors"), weights)
    with pytest.raises(CheckpointError, match="unexpected tensor 'extra.w'"):
        edgelstm.load(path)


def test_corrupted_files(tmp_path):
    path = _saved(tmp_path)
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors cannot be read"):
        edgelstm.load(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        edgelstm.load(path)
    (path / "config.json").write_text(json.dumps({"model_type": "transformer"}))
    with pytest.raises(CheckpointError, match="unknown model_type 'transformer'"):
        edgelstm.load(path)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is not an edgelstm checkpoint"):
        edgelstm.load(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        edgelstm.load(tmp_path / "nope")
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(CheckpointError, match="cannot tell the format"):
        edgelstm.load(tmp_path / "w.txt")
