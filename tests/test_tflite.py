"""The TFLite exporter, checked by the LiteRT interpreter against the MLX model."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import edgelstm
from edgelstm.converters import convert
from edgelstm.converters.tflite_export import build_tflite, check_exportable, to_tflite
from edgelstm.errors import UnsupportedError

pytest.importorskip("ai_edge_litert", reason="LiteRT not installed (pip install 'edgelstm[litert]')")

from edgelstm.converters.litert_run import run_tflite, run_tflite_all  # noqa: E402

ATOL = 1e-5  # both float32; measured worst ~2e-7 on these shapes
I, H, C, T = 5, 12, 4, 9
RECURRENT = {"lstm": edgelstm.LSTM, "gru": edgelstm.GRU, "rnn": edgelstm.RNN}
# every cell option the exporter accepts; plain LSTM/RNN take the builtin ops,
# the rest the WHILE-loop form
CELLS = [("lstm", {}), ("lstm", {"clip": 0.5}), ("lstm", {"peephole": True}),
         ("lstm", {"input_forget": True}), ("gru", {}), ("gru", {"linear_before_reset": False}),
         ("gru", {"clip": 0.4}), ("rnn", {}), ("rnn", {"nonlinearity": "relu"}),
         ("rnn", {"clip": 0.3})]


def _model(head="frame", layers=1, batch_first=True, normalize=True, kind="lstm", pool="last",
           **kw):
    m = edgelstm.SequenceModel(RECURRENT[kind](I, H, num_layers=layers, batch_first=batch_first,
                                               **kw),
                               num_outputs=C, head=head, normalize=normalize, pool=pool)
    if normalize:
        m.norm.mean = mx.array(np.linspace(-1, 1, I, dtype=np.float32))
        m.norm.std = mx.array(np.linspace(0.5, 2, I, dtype=np.float32))
    return m


def _input(rng, batch_first=True, batch=1, steps=T):
    shape = (batch, steps, I) if batch_first else (steps, batch, I)
    return rng.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("head", ["frame", "sequence", None])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("batch_first", [True, False])
def test_litert_matches_mlx(head, layers, batch_first, rng):
    model = _model(head, layers, batch_first)
    x = _input(rng, batch_first)
    out = run_tflite(build_tflite(model), x)
    ref = np.array(model(mx.array(x)))
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind,kw", CELLS, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("head", ["frame", "sequence"])
def test_every_cell_and_option_matches_mlx(kind, kw, bidirectional, head, rng):
    """Two layers, both layouts, float32 and int8 weights (against the MLX int8 model)."""
    from edgelstm.quantize import quantize_mlx

    for batch_first in (True, False):
        model = _model(head, 2, batch_first, kind=kind, bidirectional=bidirectional, **kw)
        x = _input(rng, batch_first)
        got = run_tflite(build_tflite(model), x)
        np.testing.assert_allclose(got, np.array(model(mx.array(x))), rtol=0, atol=ATOL)
    q = quantize_mlx(model)
    np.testing.assert_allclose(run_tflite(build_tflite(q), x), np.array(q(mx.array(x))),
                               rtol=0, atol=ATOL)


HYBRID_BOUND = 1e-2  # vs the MLX int8 model on these unit-scale models; measured worst 4e-3


@pytest.mark.parametrize("kind,kw", CELLS, ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()) or "default")
@pytest.mark.parametrize("streaming", [False, True], ids=["offline", "streaming"])
def test_hybrid_int8_runs_dynamic_range_kernels(kind, kw, streaming, rng):
    """Hybrid form: int8 weights go straight into FULLY_CONNECTED / sequence kernels."""
    from ai_edge_litert import schema_py_generated as schema

    from edgelstm.quantize import quantize_mlx

    q = quantize_mlx(_model("frame", 2, kind=kind, **kw))
    data = build_tflite(q, streaming=streaming, int8="hybrid")
    parsed = schema.ModelT.InitFromPackedBuf(data, 0)
    codes = {c.builtinCode for c in parsed.operatorCodes}
    assert schema.BuiltinOperator.DEQUANTIZE not in codes
    int8 = {i for sg in parsed.subgraphs for i, t in enumerate(sg.tensors)
            if t.type == schema.TensorType.INT8}
    assert int8
    x = _input(rng, steps=30)
    got, want = run_tflite(data, x), np.array(q(mx.array(x)))
    diff = float(np.max(np.abs(got - want)))
    assert 1e-7 < diff <= HYBRID_BOUND  # activations are quantized: close, not equal


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_mean_pool_no_bias_batch_3(kind, bidirectional, rng):
    model = _model("sequence", 2, kind=kind, pool="mean", bias=False, bidirectional=bidirectional)
    x = _input(rng, batch=3)
    np.testing.assert_allclose(run_tflite(build_tflite(model, batch_size=3), x),
                               np.array(model(mx.array(x))), rtol=0, atol=ATOL)


@pytest.mark.parametrize("kind,kw", [("lstm", {}), ("lstm", {"peephole": True}), ("gru", {}),
                                     ("rnn", {})])
@pytest.mark.parametrize("head", ["frame", "sequence"])
def test_streaming_state_inputs_outputs(kind, kw, head, rng):
    """Chunks with the state fed back equal the whole sequence; final states match MLX."""
    model = _model(head, 2, kind=kind, **kw)
    data = build_tflite(model, batch_size=2, streaming=True)
    x = _input(rng, batch=2, steps=12)
    state, outs = {}, []
    for k in range(3):
        res = run_tflite_all(data, x[:, 4 * k:4 * k + 4], state)
        outs.append(res["output"])
        state = {n.replace("_n", "0"): v for n, v in res.items() if n != "output"}
    ref, final = model(mx.array(x), return_state=True)
    got = np.concatenate(outs, 1) if head == "frame" else outs[-1]
    np.testing.assert_allclose(got, np.array(ref), rtol=0, atol=ATOL)
    finals = final if kind == "lstm" else (final,)
    assert sorted(res) == sorted(["output", "h_n", "c_n"][:2 + (kind == "lstm")])
    for name, want in zip(("h_n", "c_n"), finals, strict=False):
        assert res[name].shape == (2, 2, H)
        np.testing.assert_allclose(res[name], np.array(want), rtol=0, atol=ATOL)
    # a nonzero initial state is used, not ignored
    h0 = rng.standard_normal((2, 2, H)).astype(np.float32)
    with_state = run_tflite_all(data, x[:, :4], {"h0": h0})["output"]
    mx_state = (mx.array(h0), mx.zeros((2, 2, H))) if kind == "lstm" else mx.array(h0)
    np.testing.assert_allclose(with_state, np.array(model(mx.array(x[:, :4]), mx_state)),
                               rtol=0, atol=ATOL)


def test_int8_weights_stored_as_int8_with_mlx_scales(rng):
    """The int8 export keeps int8 tensors whose per-channel scales are the MLX ones."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    from edgelstm.quantize import quantize_mlx

    def big():  # weights large enough to dominate the graph's bytes
        return edgelstm.SequenceModel(edgelstm.GRU(32, 64, num_layers=2), num_outputs=C)

    q = quantize_mlx(big())
    data = build_tflite(q)
    assert len(data) < 0.4 * len(build_tflite(big()))
    parsed = schema.ModelT.InitFromPackedBuf(data, 0)  # Wh lives in the loop bodies
    int8 = [t for sg in parsed.subgraphs for t in sg.tensors if t.type == schema.TensorType.INT8]
    assert len(int8) == 4  # Wx, Wh of two layers
    want = {tuple(np.array(q.rnn.layers[k].forward[n + "_scales"], np.float32))
            for k in range(2) for n in ("Wx", "Wh")}
    got = {tuple(np.asarray(t.quantization.scale, np.float32)) for t in int8}
    assert got == want
    assert all(not np.any(t.quantization.zeroPoint) for t in int8)
    assert all(t.quantization.quantizedDimension == 0 for t in int8)
    main_int8 = [d for d in Interpreter(model_content=data).get_tensor_details()
                 if d["dtype"] == np.int8]
    assert len(main_int8) == 2  # and the interpreter reads them as int8 tensors


def test_batch_size_fixed_at_export_and_time_dynamic(rng):
    model = _model("sequence", 2)
    data = build_tflite(model, batch_size=3)
    for steps in (1, 5, 40):
        x = rng.standard_normal((3, steps, I)).astype(np.float32)
        np.testing.assert_allclose(run_tflite(data, x), np.array(model(mx.array(x))),
                                   rtol=0, atol=ATOL)
    with pytest.raises(edgelstm.errors.DataError, match="batch fixed at export"):
        run_tflite(data, np.zeros((2, 5, I), np.float32))


def test_no_bias_no_norm_and_int8_weights(tmp_path, rng):
    from edgelstm.quantize import quantize_mlx

    model = _model("frame", 2, normalize=False, bias=False)
    x = rng.standard_normal((1, T, I)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(build_tflite(model), x), np.array(model(mx.array(x))),
                               rtol=0, atol=ATOL)
    q = quantize_mlx(_model("sequence"))  # int8 storage, exported dequantized
    np.testing.assert_allclose(run_tflite(build_tflite(q), x), np.array(q(mx.array(x))),
                               rtol=0, atol=ATOL)


def test_states_carry_between_invokes_like_streaming(rng):
    """Variable state tensors persist across ``invoke``: chunks equal the whole sequence."""
    from ai_edge_litert.interpreter import Interpreter

    model = _model("frame", 2)
    x = rng.standard_normal((1, 12, I)).astype(np.float32)
    interp = Interpreter(model_content=build_tflite(model))
    idx = interp.get_input_details()[0]["index"]
    interp.resize_tensor_input(idx, [1, 4, I])
    interp.allocate_tensors()
    chunks = []
    for k in range(3):
        interp.set_tensor(idx, x[:, 4 * k:4 * k + 4])
        interp.invoke()
        chunks.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    np.testing.assert_allclose(np.concatenate(chunks, 1), np.array(model(mx.array(x))),
                               rtol=0, atol=ATOL)


def _refusable(case):
    from edgelstm.quantize import QuantConfig, quantize_mlx

    if case == "activations":
        return edgelstm.SequenceModel(edgelstm.LSTM(I, H, activations=["sigmoid", "tanh", "relu"]),
                                      num_outputs=C), False
    if case == "summary":
        return edgelstm.SequenceModel(edgelstm.LSTM(I, H, num_layers=2), num_outputs=C,
                                      head="sequence", summary=[0, 1]), False
    if case == "4-bit":
        return quantize_mlx(edgelstm.SequenceModel(edgelstm.LSTM(32, 32), num_outputs=C),
                            QuantConfig(bits=4)), False
    if case == "bidirectional":
        return _model("frame", kind="gru", bidirectional=True), True
    return _model("sequence", kind="rnn", pool="mean"), True


@pytest.mark.parametrize("case,what", [
    ("activations", "non-default activations"), ("summary", "summary"),
    ("4-bit", "4-bit weights"), ("bidirectional", "bidirectional model as streaming"),
    ("mean", "mean-pooled head as streaming"),
])
def test_refused_by_name(case, what, tmp_path):
    model, streaming = _refusable(case)
    with pytest.raises(UnsupportedError, match=what):
        check_exportable(model, streaming=streaming)
    with pytest.raises(UnsupportedError, match=what):
        build_tflite(model, streaming=streaming)
    model.save(tmp_path / "m")
    with pytest.raises(UnsupportedError, match=what):
        convert(tmp_path / "m", tmp_path / "m.tflite", streaming=streaming)
    assert not (tmp_path / "m.tflite").exists()


def test_convert_cli_writes_and_verifies_tflite(tmp_path):
    from click.testing import CliRunner

    from edgelstm.cli import cli

    _model("sequence", 2).save(tmp_path / "m")
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m"), str(tmp_path / "m.tflite"),
                                   "--verify", "--atol", "1e-5"])
    assert res.exit_code == 0, res.output
    assert "run by LiteRT" in res.output
    assert (tmp_path / "m.tflite").read_bytes()[4:8] == b"TFL3"
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "m"), str(tmp_path / "s.tflite"),
                                   "--lengths"])
    assert res.exit_code == 2 and "--lengths needs an .onnx DST" in res.output
    _model("frame", 2, kind="gru").save(tmp_path / "g")
    res = CliRunner().invoke(cli, ["convert", str(tmp_path / "g"), str(tmp_path / "g.tflite"),
                                   "--streaming", "--verify", "--atol", "1e-5"])
    assert res.exit_code == 0, res.output
    outs = run_tflite_all(tmp_path / "g.tflite", np.zeros((1, 3, I), np.float32))
    assert sorted(outs) == ["h_n", "output"]


def test_to_tflite_never_overwrites_without_force(tmp_path):
    model = _model()
    to_tflite(model, tmp_path / "a.tflite")
    with pytest.raises(edgelstm.errors.EdgeLSTMError):
        to_tflite(model, tmp_path / "a.tflite")
    to_tflite(model, tmp_path / "a.tflite", force=True)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_quantize_cli_writes_int8_tflite(kind, tmp_path, rng):
    """``edgelstm quantize MODEL out.tflite``: int8 on LiteRT equals the MLX int8 model."""
    from click.testing import CliRunner

    from edgelstm.cli import cli
    from edgelstm.io.checkpoint import load
    from edgelstm.quantize import quantize_mlx

    _model("sequence", 2, kind=kind).save(tmp_path / "m")
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m"), str(tmp_path / "q.tflite")])
    assert res.exit_code == 0, res.output
    assert "vs the MLX int8 model" in res.output and "(tflite, int8" in res.output
    q = quantize_mlx(load(tmp_path / "m"))
    x = _input(rng, steps=20)
    np.testing.assert_allclose(run_tflite(tmp_path / "q.tflite", x), np.array(q(mx.array(x))),
                               rtol=0, atol=ATOL)
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m"), str(tmp_path / "h.tflite"),
                                   "--tflite-int8", "hybrid"])
    assert res.exit_code == 0, res.output
    assert "(hybrid int8 weights) vs the MLX int8 model" in res.output
    res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m"), str(tmp_path / "h.onnx"),
                                   "--tflite-int8", "hybrid"])
    assert res.exit_code == 2 and "applies to a .tflite DST only" in res.output
    for extra, what in ((["--head"], "drop --head"), (["--format", "mlx"], "format tflite"),
                        (["--bits", "4"], "MLX-only")):
        res = CliRunner().invoke(cli, ["quantize", str(tmp_path / "m"),
                                       str(tmp_path / "r.tflite"), *extra])
        assert res.exit_code == 2 and what in res.output, res.output
        assert not (tmp_path / "r.tflite").exists()
