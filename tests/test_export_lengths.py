"""ONNX export with a ``lengths`` input (sequence_lens): parity, import, convert, run."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import edgelstm  # noqa: F401  (loads BLAS before mlx)
from edgelstm import GRU, LSTM, RNN, SequenceModel
from edgelstm.cli import cli
from edgelstm.converters import from_onnx, onnx_io_names, run_onnx, to_onnx
from edgelstm.converters.onnx_export import export_proto
from edgelstm.errors import ConversionError
from edgelstm.runtime.inference import run_model, run_native

ATOL = 1e-5
B, T, I, H, C = 3, 7, 4, 5, 3
LENS = np.array([T, T - 3, 1], np.int32)
CELLS = {"lstm": LSTM, "gru": GRU, "rnn": RNN}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")


def _model(cell, layers=1, bidir=False, head="sequence", seed=0):
    mx.random.seed(seed)
    model = SequenceModel(CELLS[cell](I, H, num_layers=layers, bidirectional=bidir), C,
                          head=head, normalize=True)
    model.norm.mean = mx.random.normal((I,))
    model.norm.std = mx.random.uniform(0.5, 2.0, (I,))
    model.eval()
    return model


def _x(seed=1):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(np.float32)


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("layers,bidir", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("head", ["frame", "sequence"])
def test_parity_with_lengths(cell, layers, bidir, head):
    model = _model(cell, layers, bidir, head)
    x = _x()
    want = run_native(model, {"input": x, "lengths": LENS})
    proto = export_proto(model, lengths=True)
    assert onnx_io_names(proto)[0] == ["input", "lengths"]
    for backend in ("onnxruntime", "mlx"):
        got = run_onnx(proto, {"input": x, "lengths": LENS}, backend=backend)
        np.testing.assert_allclose(got["output"], want["output"], atol=ATOL, rtol=0,
                                   err_msg=backend)
    if head == "frame":  # past a length the stack gives zeros, so the head gives its bias
        np.testing.assert_allclose(got["output"][2, 1:], np.broadcast_to(
            np.array(model.head.bias), (T - 1, C)), atol=ATOL)
    # the lengths matter: without them the padded rows differ
    full = run_native(model, {"input": x})["output"]
    assert np.abs(full[1:] - want["output"][1:]).max() > 1e-3


@pytest.mark.parametrize("cell", list(CELLS))
def test_streaming_with_lengths(cell):
    model = _model(cell, layers=2, head="frame")
    x = _x()
    L = 2
    h0 = np.random.default_rng(2).standard_normal((L, B, H)).astype(np.float32)
    feeds = {"input": x, "lengths": LENS, "h0": h0}
    if cell == "lstm":
        feeds["c0"] = h0 * 0.5
    want = run_native(model, feeds)
    proto = export_proto(model, streaming=True, lengths=True)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["lengths"] == "1" and meta["streaming"] == "1"
    for backend in ("onnxruntime", "mlx"):
        got = run_onnx(proto, feeds, backend=backend)
        for k in want:  # output, h_n (state at each sequence's last valid step), c_n
            np.testing.assert_allclose(got[k], want[k], atol=ATOL, rtol=0, err_msg=k)


def test_without_lengths_metadata_and_inputs_unchanged():
    proto = export_proto(_model("gru"))
    assert onnx_io_names(proto)[0] == ["input"]
    assert {p.key: p.value for p in proto.metadata_props}["lengths"] == "0"


@pytest.mark.parametrize("cell,bidir,head", [("lstm", True, "sequence"), ("gru", False, "frame"),
                                             ("rnn", False, "sequence")])
def test_import_round_trip(tmp_path, cell, bidir, head):
    model = _model(cell, 2, bidir, head)
    path = to_onnx(model, tmp_path / "m.onnx", lengths=True)
    native = from_onnx(path)  # its own check feeds lengths too
    assert native.input_names == ["input", "lengths"]
    x = _x()
    want = run_native(model, {"input": x, "lengths": LENS})["output"]
    got = run_native(native, {"input": x, "lengths": LENS})["output"]
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    # and back to ONNX keeps the input when asked
    again = export_proto(native, lengths=True)
    ort = run_onnx(again, {"input": x, "lengths": LENS})["output"]
    np.testing.assert_allclose(ort, want, atol=ATOL, rtol=0)


def test_import_refuses_partial_sequence_lens(tmp_path):
    from edgelstm.errors import UnsupportedError

    proto = export_proto(_model("gru", 2), lengths=True)
    rec = [n for n in proto.graph.node if n.op_type == "GRU"]
    rec[1].input[4] = ""  # the second layer runs over the padding: no native form
    with pytest.raises(UnsupportedError, match="sequence_lens differs"):
        from_onnx(proto)


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_convert_lengths_verify_and_run(tmp_path):
    ckpt = _model("lstm", 2, False, "sequence").save(tmp_path / "ckpt")
    dst = tmp_path / "m.onnx"
    res = _invoke("convert", ckpt, dst, "--lengths", "--verify")
    assert res.exit_code == 0, res.output
    assert "max abs diff" in res.output
    proto = onnx.load(str(dst))
    assert onnx_io_names(proto)[0] == ["input", "lengths"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["lengths"] == "1"
    assert json.loads(meta["edgelstm_config"])["head"] == "sequence"

    # ONNX -> checkpoint verifies with lengths on both sides
    res = _invoke("convert", dst, tmp_path / "back", "--verify")
    assert res.exit_code == 0, res.output

    x = _x()
    want = run_model(ckpt, {"input": x, "lengths": LENS})["output"]
    feeds = tmp_path / "in.npz"
    np.savez(feeds, input=x, lengths=LENS.astype(np.int64))  # int64 is cast to int32
    for backend in ("onnxruntime", "mlx"):
        out = tmp_path / f"out_{backend}.npz"
        res = _invoke("run", dst, "--input", feeds, "--output", out, "--backend", backend)
        assert res.exit_code == 0, res.output
        with np.load(out) as got:
            np.testing.assert_allclose(got["output"], want, atol=ATOL, rtol=0)
        lib = run_model(dst, {"input": x, "lengths": LENS}, backend=backend)["output"]
        np.testing.assert_allclose(lib, want, atol=ATOL, rtol=0)


def test_lengths_needs_onnx_dst(tmp_path):
    ckpt = _model("gru").save(tmp_path / "ckpt")
    res = _invoke("convert", ckpt, tmp_path / "out", "--lengths")
    assert res.exit_code == 2 and "--lengths needs an .onnx DST" in res.output
    from edgelstm.converters import convert

    with pytest.raises(ConversionError, match="ONNX output only"):
        convert(ckpt, tmp_path / "out2", lengths=True)


@needs_data
def test_japanese_vowels_padded_batch():
    from edgelstm.training.datasets import load_uea, pad_sequences

    data = load_uea("JapaneseVowels", "test", root=DATA / "uea")
    x, lens = pad_sequences(data.series[:64])  # lengths 7..29, padded to the longest
    mx.random.seed(0)
    model = SequenceModel(LSTM(12, 16, num_layers=2, bidirectional=True), 9, head="sequence")
    model.eval()
    want = run_native(model, {"input": x, "lengths": lens})["output"]
    proto = export_proto(model, lengths=True)
    for backend in ("onnxruntime", "mlx"):
        got = run_onnx(proto, {"input": x, "lengths": lens}, backend=backend)["output"]
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=backend)


def test_stream_backend_feeds_full_lengths(tmp_path):
    from edgelstm.streaming.backends import MLXBackend, ORTBackend

    model = _model("gru", 2, head="frame")
    ort = ORTBackend(to_onnx(model, tmp_path / "s.onnx", streaming=True, lengths=True))
    native = MLXBackend(model, compile=False)
    x = _x()
    got, g_state = ort.run(x, ort.zero_state(B))
    want, w_state = native.run(x, native.zero_state(B))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(g_state[0], np.array(w_state[0]), atol=ATOL, rtol=0)
