"""A third-party-style streaming VAD (tests/fixtures/vad/vad_stream.onnx, from PyTorch):
run on ONNX Runtime and the MLX executor, streamed from raw samples, segments from it.

The oracles: PyTorch's own outputs (``vad_stream.npz``, written by
``tests/fixtures/make_vad_fixture.py``), and a plain onnxruntime loop over
windows cut here with numpy slicing.
"""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgelstm.cli import cli
from edgelstm.converters import run_onnx
from edgelstm.errors import ConfigError, EdgeLSTMError
from edgelstm.frontend.readers import read_input
from edgelstm.frontend.samples import SampleFrames
from edgelstm.streaming import StreamingSession
from edgelstm.streaming.segments import SegmentDetector, speech_segments

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "fixtures" / "vad" / "vad_stream.onnx"
REF = np.load(ROOT / "tests" / "fixtures" / "vad" / "vad_stream.npz")
WAV = ROOT / "examples" / "fsdd" / "samples" / "8_jackson_2.wav"
N, M, SR = 256, 32, 8000
BACKENDS = ("onnxruntime", "mlx")
TOL = 2e-5  # float32 conv + LSTM, two runtimes against PyTorch


def _samples() -> np.ndarray:
    return np.asarray(read_input(WAV, target_rate=SR)[0], np.float32)


def _windows(x: np.ndarray) -> np.ndarray:
    """Each step's M + N samples, zeros before the start, the last step zero-padded."""
    steps = -(-len(x) // N)
    padded = np.concatenate([np.zeros(M, np.float32), x, np.zeros(steps * N - len(x),
                                                                   np.float32)])
    return np.stack([padded[k * N:k * N + M + N] for k in range(steps)])


def _plain_ort_loop(x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    h = c = np.zeros((1, 1, 16), np.float32)
    probs = []
    for w in _windows(x):
        p, h, c = sess.run(None, {"input": w[None], "sr": np.array(SR, np.int64), "h": h,
                                  "c": c})
        probs.append(p[0, 0])
    return np.array(probs, np.float32)


def _session(backend="onnxruntime", chunk_frames=3) -> StreamingSession:
    return StreamingSession.from_onnx_samples(MODEL, N, M, SR, consts={"sr": SR},
                                              backend=backend, chunk_frames=chunk_frames)


def _stream(session, x, chunk) -> np.ndarray:
    s = session.create_stream()
    rows = []
    for i in range(0, len(x), chunk):
        s.accept_waveform(x[i:i + chunk])
        rows += [r.output for r in session.process(s)]
    s.input_finished()
    rows += [r.output for r in session.process(s)]
    return np.concatenate(rows)[:, 0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("tag", ["8", "16"])  # both branches of the If on sr
def test_runs_like_pytorch(backend, tag):
    out = run_onnx(MODEL, {"input": REF[f"x{tag}"], "sr": REF[f"sr{tag}"], "h": REF["h"],
                           "c": REF["c"]}, backend=backend)
    for name, ref in (("output", "out"), ("hn", "hn"), ("cn", "cn")):
        np.testing.assert_allclose(out[name], REF[ref + tag], atol=TOL, err_msg=name)


def test_fixture_is_third_party_shaped():
    import onnx

    m = onnx.load(str(MODEL))
    ops = {n.op_type for n in m.graph.node}
    assert {"If", "Pad", "Conv", "LSTM", "Sqrt", "Sigmoid", "Gemm"} <= ops
    assert MODEL.stat().st_size < 64 * 1024


def test_sample_frames_match_slicing():
    x = np.arange(1000, dtype=np.float32)
    fr = SampleFrames(N, M, SR)
    np.testing.assert_array_equal(fr.frames(x), _windows(x))
    on = fr.online()
    parts = [on.accept(x[i:i + 77]) for i in range(0, len(x), 77)] + [on.flush()]
    np.testing.assert_array_equal(np.concatenate(parts), _windows(x))
    with pytest.raises(ConfigError):
        SampleFrames(0, M, SR)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_matches_pytorch_on_a_wav(backend):
    np.testing.assert_allclose(_stream(_session(backend), _samples(), 10**6), REF["wav_probs"],
                               atol=TOL)


@pytest.mark.parametrize("chunk_frames", [1, 3, 5])
def test_chunked_equals_full_exactly_on_onnxruntime(chunk_frames):
    """Any input chunking (frame-splitting ones included) gives the plain loop's bits."""
    x = _samples()
    full = _plain_ort_loop(x)
    session = _session("onnxruntime", chunk_frames)
    for chunk in (1, 100, N, 300, N + M, 1000, len(x)):
        np.testing.assert_array_equal(_stream(session, x, chunk), full, err_msg=str(chunk))


def test_chunked_equals_full_on_mlx():
    x = _samples()
    session = _session("mlx", 4)
    full = _stream(session, x, len(x))
    for chunk in (1, 100, 300, 1000):
        np.testing.assert_array_equal(_stream(session, x, chunk), full, err_msg=str(chunk))
    np.testing.assert_allclose(full, _plain_ort_loop(x), atol=TOL)


def test_batched_streams_match_single():
    x = _samples()
    session = _session("onnxruntime", 2)
    streams = [session.create_stream() for _ in range(2)]
    streams[0].accept_waveform(x)
    streams[1].accept_waveform(x[::-1].copy())
    for s in streams:
        s.input_finished()
    outs = [[], []]
    while any(session.is_ready(s) for s in streams):
        for k, r in enumerate(session.step_many(streams)):
            if r is not None:
                outs[k].append(r.output)
    np.testing.assert_allclose(np.concatenate(outs[0])[:, 0], _plain_ort_loop(x), atol=1e-6)
    np.testing.assert_allclose(np.concatenate(outs[1])[:, 0], _plain_ort_loop(x[::-1].copy()),
                               atol=1e-6)


def test_resampled_input_and_saved_stream():
    """16 kHz audio is resampled to the model's 8 kHz; a saved stream resumes exactly."""
    x = _samples()
    session = _session("onnxruntime", 2)
    s = session.create_stream()
    s.accept_waveform(x[:1000])
    first = [r.output for r in session.process(s)]
    resumed = session.create_stream(s.state, s.meta_state)
    for t in (s, resumed):
        t.accept_waveform(x[1000:])
        t.input_finished()
    a = np.concatenate(first + [r.output for r in session.process(s)])
    b = np.concatenate(first + [r.output for r in session.process(resumed)])
    np.testing.assert_array_equal(a, b)
    up = np.interp(np.arange(2 * len(x)) / 2, np.arange(len(x)), x).astype(np.float32)
    s16 = session.create_stream()
    s16.accept_waveform(up, sample_rate=16000)
    s16.input_finished()
    assert abs(len(np.concatenate([r.output for r in session.process(s16)])) - len(a)) <= 1


def test_bad_setups_are_refused():
    with pytest.raises(EdgeLSTMError, match="sr"):  # the int input needs a value
        StreamingSession.from_onnx_samples(MODEL, N, M, SR)
    with pytest.raises(ConfigError, match="no input 'rate'"):
        StreamingSession.from_onnx_samples(MODEL, N, M, SR, consts={"sr": SR, "rate": 1})
    with pytest.raises(ConfigError, match="no output"):
        StreamingSession.from_onnx_samples(MODEL, N, M, SR, consts={"sr": SR}, output="prob")


# -- events ---------------------------------------------------------------------------------
def test_hysteresis_and_minimum_durations():
    p = [0.1, 0.6, 0.45, 0.4, 0.2, 0.3, 0.7, 0.7, 0.1, 0.1, 0.1, 0.9, 0.1, 0.1, 0.1]
    # on 0.5 / off 0.35: active 1-3, 6-7, 11; gaps of 2 and 3 frames; 11 alone is 1 frame
    assert speech_segments(p, 0.5, 0.35, min_speech=1, min_silence=1) == [(1, 4), (6, 8),
                                                                          (11, 12)]
    assert speech_segments(p, 0.5, 0.35, min_speech=1, min_silence=3) == [(1, 8), (11, 12)]
    assert speech_segments(p, 0.5, 0.35, min_speech=2, min_silence=3) == [(1, 8)]
    assert speech_segments(p, 0.5, 0.5, min_speech=1, min_silence=1) == [(1, 2), (6, 8),
                                                                         (11, 12)]
    with pytest.raises(ConfigError):
        speech_segments(p, 0.5, 0.6)


@pytest.mark.parametrize("seed", range(5))
def test_streamed_events_equal_offline_segments(seed):
    rng = np.random.default_rng(seed)
    p = np.clip(np.repeat(rng.random(40), rng.integers(1, 6, 40)), 0, 1)
    min_speech, min_silence = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    want = speech_segments(p, 0.6, 0.3, min_speech, min_silence)
    for chunk in (1, 3, 7, len(p)):
        det = SegmentDetector(0.6, 0.3, min_speech, min_silence)
        ev = [e for i in range(0, len(p), chunk) for e in det.feed(p[i:i + chunk])]
        ev += det.finish()
        starts = [e.start for e in ev if e.kind == "start"]
        ends = [(e.start, e.end) for e in ev if e.kind == "end"]
        assert ends == want and starts == [s for s, _ in want], chunk
        assert all(a.kind == "start" and b.kind == "end" for a, b in zip(ev[::2], ev[1::2],
                                                                         strict=True))


# -- CLI ------------------------------------------------------------------------------------
ARGS = ["--frame-samples", str(N), "--context-samples", str(M), "--sample-rate", str(SR),
        "--const", f"sr={SR}"]


def _invoke(*args, input=None):
    return CliRunner().invoke(cli, ["stream", str(MODEL), *map(str, args)], input=input)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cli_events_from_a_wav(backend):
    r = _invoke(WAV, *ARGS, "--backend", backend, "--events", "--json", "--min-speech-ms", "64",
                "--min-silence-ms", "64")
    assert r.exit_code == 0, r.output
    ev = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    want = speech_segments(REF["wav_probs"], 0.5, 0.35, 2, 2)
    assert want, "the fixture should hear speech in the WAV"
    assert [(e["start_frame"], e["end_frame"]) for e in ev if e["event"] == "speech_end"] == want
    assert ev[0]["event"] == "speech_start" and ev[0]["start_s"] == pytest.approx(
        want[0][0] * N / SR)


def test_cli_raw_pcm_on_stdin_equals_the_wav():
    x = _samples()
    r_wav = _invoke(WAV, *ARGS, "--json", "--chunk-frames", "2")
    with wave.open(str(WAV)) as w:
        pcm = w.readframes(w.getnframes())
    r_pcm = _invoke("-", *ARGS, "--json", "--chunk-frames", "2", "--stdin-format", "s16le",
                    "--rate", str(SR), input=pcm)
    assert r_wav.exit_code == 0 and r_pcm.exit_code == 0, r_pcm.output
    rows = [json.loads(line)["output"] for line in r_wav.stdout.splitlines()]
    assert rows == [json.loads(line)["output"] for line in r_pcm.stdout.splitlines()]
    np.testing.assert_allclose(np.concatenate(rows)[:, 0], _plain_ort_loop(x), atol=1e-6)


NO_CONST = ARGS[:6]


@pytest.mark.parametrize("args, message", [
    (NO_CONST, "sr"),
    (ARGS + ["--const", "rate=3"], "no input 'rate'"),
    (NO_CONST + ["--const", "sr"], "NAME=VALUE"),
    (ARGS + ["--events", "--threshold", "0.5"], "mutually exclusive"),
    (["--const", "sr=8000"], "need --frame-samples"),
])
def test_cli_errors_are_one_line(args, message):
    r = _invoke(WAV, *args)
    assert r.exit_code != 0 and message in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert "Traceback" not in r.output and len(errors) == 1 and message in errors[0]


def test_events_refuse_a_wide_output_unless_a_column_is_named():
    from edgelstm.errors import DataError
    from edgelstm.streaming.session import ChunkResult

    r = ChunkResult(0, 0, 3, np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]], np.float32), 0.0)
    with pytest.raises(DataError, match="one column"):
        SegmentDetector().update(r)
    ev = SegmentDetector(column=1).update(r)
    assert [(e.kind, e.start) for e in ev] == [("start", 2)]


def test_cli_model_failures_are_one_line():
    r = _invoke(WAV, "--frame-samples", "10", "--const", f"sr={SR}", "--sample-rate", str(SR))
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.output.strip().splitlines() == [r.output.strip()] and "Pad" in r.output
    r = CliRunner().invoke(cli, ["stream", str(ROOT / "examples" / "fsdd" / "model"), str(WAV),
                                 "--frame-samples", "256"])
    assert r.exit_code == 1 and "takes an .onnx graph" in r.output


# -- a second shape: one GRU state (state -> stateN), batch fixed at 1 -----------------------
def _gru_step_model(path):
    """``input (1, 64)``, ``state (1, 1, 8)`` -> ``prob (1, 1)``, ``stateN``: four 16-sample
    frames through a GRU, Gemm + Sigmoid on the last hidden state (hand-built, opset 17)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.5).astype(np.float32),
                                       name)

    nodes = [
        helper.make_node("Reshape", ["input", "shape"], ["x"]),
        helper.make_node("GRU", ["x", "W", "R", "B", "", "state"], ["", "stateN"],
                         hidden_size=8, linear_before_reset=1),
        helper.make_node("Reshape", ["stateN", "flat"], ["h"]),
        helper.make_node("Gemm", ["h", "fc", "fc_b"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    inits = [init("W", 1, 24, 16), init("R", 1, 24, 8), init("B", 1, 48), init("fc", 8, 1),
             init("fc_b", 1), numpy_helper.from_array(np.array([4, 1, 16], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 8], np.int64), "flat")]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "gru_step",
        [helper.make_tensor_value_info("input", f, [1, 64]),
         helper.make_tensor_value_info("state", f, [1, 1, 8])],
        [helper.make_tensor_value_info("prob", f, [1, 1]),
         helper.make_tensor_value_info("stateN", f, [1, 1, 8])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_single_state_gru_at_batch_one_streams_batched_and_quantized(tmp_path):
    from edgelstm.quantize import quantize_model

    path = _gru_step_model(tmp_path / "gru.onnx")
    x = np.random.default_rng(6).standard_normal(1000).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fr = SampleFrames(48, 16, 16000)
    state, want = np.zeros((1, 1, 8), np.float32), []
    for w in fr.frames(x):
        p, state = sess.run(None, {"input": w[None], "state": state})
        want.append(p[0, 0])
    session = StreamingSession.from_onnx_samples(path, 48, 16, 16000, chunk_frames=3)
    for chunk in (7, 48, 1000):
        np.testing.assert_array_equal(_stream(session, x, chunk), want)
    # two streams stepped together: the graph takes batch 1, so they run one by one
    streams = [session.create_stream() for _ in range(2)]
    for s, sig in zip(streams, (x, x[::-1].copy()), strict=True):
        s.accept_waveform(sig)
        s.input_finished()
    rows = []
    while session.is_ready(streams[0]):
        rows.append(session.step_many(streams)[0].output)
    np.testing.assert_array_equal(np.concatenate(rows)[:, 0], want)
    r = quantize_model(path, tmp_path / "gru.int8.onnx")
    assert sorted(r.weights["quantized"]) == ["R", "W"] and r.inputs["input"] == [1, 64]
    q_mlx = StreamingSession.from_onnx_samples(tmp_path / "gru.int8.onnx", 48, 16, 16000,
                                               backend="mlx")
    np.testing.assert_allclose(_stream(q_mlx, x, 500), want, atol=0.02)
