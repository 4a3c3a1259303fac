"""The Core ML (ML program) export, checked structurally: Core ML runs only on Apple
platforms, so these tests read the saved package back and check its program; numerical
checks need a Mac."""

from __future__ import annotations

import warnings

import mlx.core as mx
import numpy as np
import pytest

import edgelstm
from edgelstm.errors import ConversionError, UnsupportedError

pytest.importorskip("coremltools", reason="coremltools not installed (pip install coremltools)")

from edgelstm.converters.coreml_export import (  # noqa: E402
    MAX_STEPS,
    check_exportable,
    describe_mlpackage,
    to_mlpackage,
)

I, H, C, L = 5, 8, 3, 2


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _model(head="frame", pool="last", batch_first=True, bias=True):
    m = edgelstm.SequenceModel(edgelstm.LSTM(I, H, num_layers=L, batch_first=batch_first,
                                             bias=bias),
                               num_outputs=C, head=head, normalize=True, pool=pool,
                               input_names=["features"], output_names=["scores"])
    m.norm.mean = mx.array(np.linspace(-1, 1, I, dtype=np.float32))
    m.norm.std = mx.array(np.linspace(0.5, 2, I, dtype=np.float32))
    return m


@pytest.mark.parametrize("head,pool,batch_first", [
    ("frame", "last", True), ("sequence", "last", True), ("sequence", "mean", True),
    ("sequence", "last", False), (None, "last", True)])
def test_mlpackage_structure(head, pool, batch_first, tmp_path):
    model = _model(head, pool, batch_first)
    to_mlpackage(model, tmp_path / "m.mlpackage")
    d = describe_mlpackage(tmp_path / "m.mlpackage")
    # inputs: the model's input name with a flexible time axis, the state as h0/c0
    x_shape = (1, 1, I)
    assert d["inputs"] == {"features": x_shape, "h0": (L, 1, H), "c0": (L, 1, H)}
    t_axis = 1 if batch_first else 0
    want_flex = [(1, 1), (1, 1), (I, I)]
    want_flex[t_axis] = (1, MAX_STEPS)
    assert d["flexible"] == {"features": want_flex}
    assert set(d["outputs"]) == {"scores", "h_n", "c_n"}
    assert d["outputs"]["h_n"] == d["outputs"]["c_n"] == (L, 1, H)
    if head == "sequence":
        assert d["outputs"]["scores"] == (1, C)
    ops = d["ops"]
    assert ops.count("lstm") == L and "cast" not in ops  # float32 pinned, no fp16 casts
    assert "fp16" not in d["precision"]
    assert "sub" in ops and ("real_div" in ops or "mul" in ops)  # the pipeline may fold 1/std
    assert ("linear" in ops) == (head is not None)
    assert ("reduce_mean" in ops) == (pool == "mean")
    # weights in Core ML's gate order i, f, o, g, read back from the saved package
    for k, w in enumerate(d["lstm"]):
        cell = model.rnn.layers[k].forward
        i, f, g, o = np.split(np.array(cell.Wx), 4)
        np.testing.assert_array_equal(w["weight_ih"], np.concatenate([i, f, o, g]))
        i, f, g, o = np.split(np.array(cell.Wh), 4)
        np.testing.assert_array_equal(w["weight_hh"], np.concatenate([i, f, o, g]))
        i, f, g, o = np.split(np.array(cell.bias), 4)
        np.testing.assert_array_equal(w["bias"], np.concatenate([i, f, o, g]))


@pytest.mark.parametrize("rnn,what", [
    (lambda: edgelstm.GRU(I, H), "GRU"), (lambda: edgelstm.RNN(I, H), "RNN"),
    (lambda: edgelstm.LSTM(I, H, bidirectional=True), "bidirectional"),
    (lambda: edgelstm.LSTM(I, H, peephole=True), "peephole"),
    (lambda: edgelstm.LSTM(I, H, clip=1.0), "clip"),
    (lambda: edgelstm.LSTM(I, H, input_forget=True), "input_forget"),
])
def test_refused_by_name(rnn, what, tmp_path):
    from edgelstm.converters import convert

    model = edgelstm.SequenceModel(rnn(), num_outputs=C)
    with pytest.raises(UnsupportedError, match=what):
        check_exportable(model)
    model.save(tmp_path / "m")
    with pytest.raises(UnsupportedError, match=what):
        convert(tmp_path / "m", tmp_path / "m.mlpackage")
    assert not (tmp_path / "m.mlpackage").exists()


def test_quantized_refused():
    from edgelstm.quantize import quantize_mlx

    with pytest.raises(UnsupportedError, match="quantized weights"):
        check_exportable(quantize_mlx(_model()))


def test_convert_cli_writes_mlpackage_and_refuses_verify(tmp_path):
    from click.testing import CliRunner

    from edgelstm.cli import cli

    _model("sequence").save(tmp_path / "m")
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m"), str(tmp_path / "o.mlpackage")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "o.mlpackage" / "Manifest.json").is_file()
    assert describe_mlpackage(tmp_path / "o.mlpackage")["ops"].count("lstm") == L
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m"), str(tmp_path / "o.mlpackage")])
    assert res.exit_code == 1 and "exists" in res.output  # no overwrite without --force
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m"), str(tmp_path / "v.mlpackage"),
                                   "--verify"])
    assert res.exit_code == 1 and "Error: --verify cannot run a .mlpackage" in res.output
    assert not (tmp_path / "v.mlpackage").exists()
    with pytest.raises(ConversionError, match="Apple platforms"):
        edgelstm.converters.convert(tmp_path / "m", tmp_path / "w.mlpackage", verify=True)
