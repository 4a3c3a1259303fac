"""The benchmark harness: every backend and mode, the JSON schema, plots, CLI errors."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

import edgelstm
from edgelstm.cli import cli
from edgelstm.errors import EdgeLSTMError
from edgelstm.runtime.bench import format_table, run_bench
from edgelstm.runtime.bench_forms import BACKENDS

KEYS = {"backend", "mode", "batch", "seq_len", "chunk", "p50_ms", "p90_ms", "p99_ms", "min_ms",
        "frames_per_s", "rtf", "peak_mem_mb", "size_bytes"}
TINY = dict(warmup=1, runs=3)


@pytest.fixture(params=["lstm", "gru", "rnn"])
def model_dir(tmp_path, request):
    rnn = {"lstm": edgelstm.LSTM, "gru": edgelstm.GRU, "rnn": edgelstm.RNN}[request.param]
    model = edgelstm.SequenceModel(rnn(3, 8, num_layers=2), head="frame", num_outputs=2,
                                   normalize=True, features={"kind": "sensor", "rate": 50})
    return str(model.save(tmp_path / "model"))


def test_every_backend_and_mode(model_dir):
    report = run_bench(model_dir, BACKENDS, (1, 2), (5,), modes=("batch", "stream"),
                       chunks=(4,), **TINY)
    ran = {(r.backend, r.mode) for r in report.results}
    skipped = {s["backend"] for s in report.skipped}
    has_torch = importlib.util.find_spec("torch") is not None
    has_openvino = importlib.util.find_spec("openvino") is not None
    for b in BACKENDS:
        lstm_only = b == "onnxruntime-ort-int8"  # DynamicQuantizeLSTM is LSTM-only
        if ((b == "torch" and not has_torch) or (b == "openvino" and not has_openvino)
                or (lstm_only and edgelstm.load(model_dir).rnn.cell_type != "lstm")):
            assert b in skipped
            continue
        assert {(b, "batch"), (b, "stream")} <= ran, (b, report.skipped)
    assert all(s["reason"] for s in report.skipped)
    for r in report.results:
        d = r.as_dict()
        assert KEYS <= set(d) and d["size_bytes"] > 0
        assert r.runs == 3 and 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms
        frames = r.batch * (r.seq_len if r.mode == "batch" else r.chunk)
        assert r.frames_per_s == pytest.approx(frames / (r.p50_ms / 1e3), rel=1e-2)
        if r.mode == "stream":
            assert r.batch == 1 and r.seq_len is None
            assert r.rtf == pytest.approx(r.p50_ms / (r.chunk * 20.0), rel=1e-2)  # 50 Hz
        else:
            assert r.rtf is None and r.chunk is None
        assert (r.mlx_peak_mb is not None) == r.backend.startswith("mlx")
    sizes = {r.backend: r.size_bytes for r in report.results}
    assert sizes["mlx-int8"] != sizes["mlx"] and sizes["onnxruntime-int8"] != sizes["onnxruntime"]
    assert report.frame_ms == 20.0 and report.machine["cpu_count"]
    assert "vs best" in format_table(report)


def test_onnx_source_and_unavailable_backends(tmp_path):
    from edgelstm.converters import to_onnx

    bi = edgelstm.SequenceModel(edgelstm.LSTM(3, 4, bidirectional=True), head="sequence",
                                num_outputs=2)
    to_onnx(bi, tmp_path / "bi.onnx")
    report = run_bench(tmp_path / "bi.onnx", ("onnxruntime", "mlx", "mlx-nn"), (1,), (4,),
                       modes=("batch", "stream"), chunks=(2,), **TINY)
    assert {(r.backend, r.mode) for r in report.results} == {("onnxruntime", "batch"),
                                                             ("mlx", "batch")}
    reasons = {(s["backend"], s["mode"]): s["reason"] for s in report.skipped}
    assert "unidirectional" in reasons[("mlx-nn", None)]
    assert "cannot stream" in reasons[("mlx", "stream")]
    assert "assumed" in report.frame_ms_source
    text = format_table(report)
    assert "skipped mlx-nn: mlx.nn recurrent layers are unidirectional" in text


def test_unknown_backend_and_mode(model_dir):
    with pytest.raises(EdgeLSTMError, match="unknown backend 'tpu'"):
        run_bench(model_dir, ("tpu",))
    with pytest.raises(EdgeLSTMError, match="unknown mode 'x'"):
        run_bench(model_dir, modes=("x",))


@pytest.mark.parametrize("model_dir", ["lstm"], indirect=True)
def test_cli_json_flag_table_on_stderr(model_dir):
    r = CliRunner(mix_stderr=False).invoke(cli, [
        "bench", model_dir, "--backend", "mlx", "--backend", "onnxruntime", "--seq-len", "4",
        "--chunk", "3", "--runs", "3", "--json"]) if _mixes() else CliRunner().invoke(cli, [
        "bench", model_dir, "--backend", "mlx", "--backend", "onnxruntime", "--seq-len", "4",
        "--chunk", "3", "--runs", "3", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert {x["mode"] for x in data["results"]} == {"batch", "stream"}
    assert all(KEYS <= set(x) for x in data["results"])
    assert {"cpu_model", "cpu_count", "threads", "mlx_blas", "kernels", "versions"} <= set(
        data["machine"])
    assert "vs best" in r.stderr and "vs best" not in r.stdout


def _mixes() -> bool:
    import inspect

    return "mix_stderr" in inspect.signature(CliRunner).parameters


@pytest.mark.parametrize("model_dir", ["lstm"], indirect=True)
@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_cli_plot(model_dir, tmp_path, suffix):
    pytest.importorskip("matplotlib")
    out = tmp_path / f"b{suffix}"
    args = ["bench", model_dir, "--backend", "mlx", "--backend", "mlx-pure", "--mode", "batch",
            "--mode", "stream", "--seq-len", "4", "--chunk", "2", "--runs", "3",
            "--plot", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    head = out.read_bytes()[:200]
    assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in out.read_bytes()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1 and "already exists; pass --force" in r.output


@pytest.mark.parametrize("model_dir", ["lstm"], indirect=True)
def test_cli_plot_suffix(model_dir, tmp_path):
    r = CliRunner().invoke(cli, ["bench", model_dir, "--plot", str(tmp_path / "p.pdf")])
    assert r.exit_code == 2 and "Invalid value for --plot: must end in .png or .svg" in r.output


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_forms_compute_the_same_model(tmp_path, cell):
    """mlx.nn, PyTorch and OpenVINO forms are the same weights: outputs agree with edgelstm's."""
    import mlx.core as mx
    import numpy as np

    from edgelstm.runtime.bench_forms import build

    rnn = {"lstm": edgelstm.LSTM, "gru": edgelstm.GRU, "rnn": edgelstm.RNN}[cell]
    model = edgelstm.SequenceModel(rnn(3, 8, num_layers=2), head="frame", num_outputs=2,
                                   normalize=True).eval()
    model.norm.mean, model.norm.std = mx.array([0.1, -0.2, 0.3]), mx.array([1.5, 0.5, 2.0])
    x = np.random.default_rng(0).standard_normal((2, 7, 3)).astype(np.float32)
    want = np.array(model(mx.array(x)))
    names = ["mlx-nn"] + [n for n in ("torch", "openvino") if importlib.util.find_spec(n)]
    for name in names:
        form = build(name, model, None, False, tmp_path, None, np.random.default_rng(0))
        got = form.batch(x)()
        if name == "openvino":
            got = got[0]  # the inference result by output index
        got = got[0].numpy() if name == "torch" else np.array(got)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=name)


def test_threads_cap_the_kernels_too_and_are_restored(model_dir):
    """``threads`` caps the fused step's pool as it caps ONNX Runtime and PyTorch, for
    the run only: a comparison must not mix thread counts."""
    from edgelstm.fast import dispatch

    if not dispatch.available():
        pytest.skip(f"fused kernels unavailable: {dispatch.reason()}")
    dispatch.set_recurrent_threads(3)
    seen = []
    try:
        report = run_bench(model_dir, ("mlx",), (1,), (5,), threads=1, **TINY,
                           progress=lambda _: seen.append(dispatch.recurrent_threads()))
        assert seen and all(s == (1, "set") for s in seen)
        assert dispatch.recurrent_threads() == (3, "set")
        assert report.machine["threads"]["edgelstm kernels"] == 1
    finally:
        dispatch.set_recurrent_threads(0)
    run_bench(model_dir, ("mlx",), (1,), (5,), threads=2, **TINY)
    assert dispatch.recurrent_threads()[1] != "set"  # the default, as before the run
