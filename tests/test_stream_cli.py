"""``edgelstm stream``: WAV, CSV, .npy and stdin inputs, JSON and live output, summary, errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import wave

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner

from edgelstm.cli import cli
from edgelstm.frontend.features import FeatureConfig, SensorConfig
from edgelstm.nn.layers import LSTM
from edgelstm.nn.model import SequenceModel

FC = FeatureConfig(kind="mfcc", sample_rate=8000, n_mels=20, n_mfcc=6)
SUMMARY = re.compile(r"^frames (\d+), chunks (\d+), latency p50 [\d.]+ ms, p99 [\d.]+ ms, "
                     r"real-time factor [\d.]+ \([\d.]+ s of signal\)$")


def _save(model, path):
    model.eval()
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A labelled speech model (checkpoint + streaming ONNX) and a 16 kHz WAV."""
    from edgelstm.converters import to_onnx

    d = tmp_path_factory.mktemp("speech")
    mx.random.seed(3)
    m = SequenceModel(LSTM(6, 8, num_layers=2), labels=["_silence_", "yes", "no"],
                      features=FC.to_dict())
    ckpt = _save(m, d / "model")
    to_onnx(m, d / "model.onnx", streaming=True)
    pcm = (np.random.default_rng(0).standard_normal(12000) * 3000).astype(np.int16)
    with wave.open(str(d / "a.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return {"model": m, "ckpt": ckpt, "onnx": str(d / "model.onnx"), "wav": str(d / "a.wav"),
            "pcm": pcm, "dir": d}


@pytest.fixture(scope="module")
def sensor(tmp_path_factory):
    d = tmp_path_factory.mktemp("sensor")
    mx.random.seed(4)
    sc = SensorConfig(mean=[0.5, -1.0], std=[2.0, 0.5])
    m = SequenceModel(LSTM(2, 8, num_layers=2), labels=["rest", "walk"], features=sc.to_dict())
    x = np.random.default_rng(1).standard_normal((37, 2)).astype(np.float32)
    (d / "x.csv").write_text("ax,ay\n" + "\n".join(f"{a},{b}" for a, b in x) + "\n")
    np.save(d / "x.npy", x)
    return {"model": m, "ckpt": _save(m, d / "model"), "x": x, "sc": sc, "dir": d}


def _invoke(*args, input=None):
    return CliRunner().invoke(cli, ["stream", *map(str, args)], input=input)


def _json_lines(result):
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines()]


def _expected_speech(speech):
    from edgelstm.frontend.readers import read_wav

    samples, _ = read_wav(speech["wav"], target_rate=8000)
    feats = np.array(FC.compute(samples))
    return np.array(speech["model"](mx.array(feats[None])))[0]


@pytest.mark.parametrize("backend", ["mlx", "onnxruntime"])
def test_wav_json_matches_full_pass(speech, backend):
    path = speech["ckpt"] if backend == "mlx" else speech["onnx"]
    lines = _json_lines(_invoke(path, speech["wav"], "--json", "--backend", backend))
    want = _expected_speech(speech)
    assert [d["start"] for d in lines] == list(range(0, len(want), 10))  # 100 ms of 10 ms
    assert set(lines[0]) == {"chunk", "start", "end", "latency_ms", "output", "label", "scores"}
    assert [d["chunk"] for d in lines] == list(range(len(lines)))
    got = np.concatenate([np.array(d["output"]) for d in lines])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert lines[0]["label"] in ("_silence_", "yes", "no") and len(lines[0]["scores"]) == 3


def test_wav_live_view_and_summary(speech):
    r = _invoke(speech["ckpt"], speech["wav"], "--chunk-ms", "200")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert len(lines) == 4  # 73 frames in chunks of 20
    assert re.match(r"^\[\s+0\.20 s\] chunk\s+0\s+frames 0-20\s+(_silence_|yes|no)\s", lines[0])
    m = SUMMARY.match(r.stderr.strip())
    assert m and m.groups() == ("73", "4")


def test_csv_and_npy_frames_with_sensor_normalisation(sensor):
    sc, x, m = sensor["sc"], sensor["x"], sensor["model"]
    want = np.array(m(sc.compute(x)[None]))[0]
    for name in ("x.csv", "x.npy"):
        lines = _json_lines(_invoke(sensor["ckpt"], sensor["dir"] / name, "--json",
                                    "--chunk-frames", "4"))
        assert [d["end"] for d in lines][-2:] == [36, 37]
        np.testing.assert_allclose(np.concatenate([d["output"] for d in lines]), want, atol=1e-5)


def test_stdin_raw_pcm_with_rate(speech):
    r = _invoke(speech["ckpt"], "-", "--json", "--rate", "16000",
                input=speech["pcm"].tobytes())
    got = np.concatenate([np.array(d["output"]) for d in _json_lines(r)])
    np.testing.assert_allclose(got, _expected_speech(speech), atol=1e-4)
    assert SUMMARY.match(r.stderr.strip())


def test_stdin_wav_stream_and_default_input(speech):
    data = open(speech["wav"], "rb").read()
    r = CliRunner().invoke(cli, ["stream", speech["ckpt"], "--json"], input=data)
    got = np.concatenate([np.array(d["output"]) for d in _json_lines(r)])
    np.testing.assert_allclose(got, _expected_speech(speech), atol=1e-4)


def test_stdin_csv_lines(sensor):
    text = (sensor["dir"] / "x.csv").read_text()
    lines = _json_lines(_invoke(sensor["ckpt"], "-", "--json", "--chunk-frames", "10",
                                input=text))
    assert [(d["start"], d["end"]) for d in lines] == [(0, 10), (10, 20), (20, 30), (30, 37)]


def test_stdin_is_consumed_live(sensor):
    """A chunk's JSON appears while the producer is still writing."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgelstm", "stream", sensor["ckpt"], "-", "--json",
         "--chunk-frames", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        proc.stdin.write(b"ax,ay\n1,2\n3,4\n")
        proc.stdin.flush()
        first = json.loads(proc.stdout.readline())  # blocks until the chunk is out
        assert (first["start"], first["end"]) == (0, 2)
        proc.stdin.write(b"5,6\n")
        proc.stdin.close()
        rest = [json.loads(line) for line in proc.stdout.read().splitlines()]
        assert [(d["start"], d["end"]) for d in rest] == [(2, 3)]
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_threshold_prints_detections_only(speech, monkeypatch):
    r = _invoke(speech["ckpt"], speech["wav"], "--json", "--threshold", "0.3",
                "--smooth-ms", "30")
    events = _json_lines(r)
    assert events and all(e["event"] == "detection" for e in events)
    assert {e["label"] for e in events} <= {"yes", "no"}  # _silence_ never fires
    assert all(set(e) == {"event", "label", "score", "frame", "time_s"} for e in events)
    text = _invoke(speech["ckpt"], speech["wav"], "--threshold", "0.3")
    assert all(line.startswith("detected ") for line in text.stdout.splitlines())


def test_ctrl_c_prints_summary_and_exits_130(sensor, monkeypatch):
    import edgelstm.streaming.run as sr

    def chunks(*args, **kwargs):
        def gen():
            yield np.zeros((5, 2), dtype=np.float32)
            raise KeyboardInterrupt
        return gen(), "x"

    monkeypatch.setattr(sr, "open_input", chunks)
    r = _invoke(sensor["ckpt"], "-", "--chunk-frames", "5")
    assert r.exit_code == 130
    assert r.stderr.startswith("interrupted: frames 5, chunks 1, latency p50")


@pytest.mark.parametrize("args, code, message", [
    (["{sensor}", "{wav}"], 1,
     "Error: {wav}: an audio input needs a model with a speech front end (features kind mfcc or "
     "fbank); this model takes frames of 2 features (use CSV or .npy)"),
    (["{speech}", "{wav}", "--chunk-ms", "50", "--chunk-frames", "2"], 2,
     "Error: --chunk-ms and --chunk-frames are mutually exclusive"),
    (["{sensor}", "{bad_csv}"], 1,
     "Error: {bad_csv}: frames have 3 features, the model takes 2"),
    (["{sensor}", "{ragged}"], 1, "Error: {ragged}: line 3 has 1 fields, expected 2"),
    (["{sensor}", "{m4a}"], 1,
     "Error: {m4a}: unknown input type '.m4a' (expected .wav, .flac, .ogg, .oga, .opus, .mp3, "
     ".aif, .aiff, .csv, .npy)"),
    (["{speech}", "{wav}", "--backend", "onnxruntime"], 1,
     "Error: {speech} is not an ONNX file; export it first (edgelstm convert MODEL model.onnx "
     "--streaming) or use --backend mlx"),
    (["{bidir}", "{bad_csv}"], 1,
     "Error: cannot stream a bidirectional model: its reverse direction needs the whole "
     "sequence before it emits the first output; use a unidirectional model"),
    (["{nolabels}", "{bad_csv}", "--threshold", "0.5"], 2,
     "Error: --threshold needs a model with labels"),
])
def test_errors_are_one_line(speech, sensor, tmp_path, args, code, message):
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5,6\n")
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    (tmp_path / "x.m4a").write_bytes(b"ftyp")
    bidir = SequenceModel(LSTM(3, 4, bidirectional=True), num_outputs=2)
    nolabels = SequenceModel(LSTM(3, 4), num_outputs=2)
    names = {"sensor": sensor["ckpt"], "speech": speech["ckpt"], "wav": speech["wav"],
             "bad_csv": tmp_path / "bad.csv", "ragged": tmp_path / "ragged.csv",
             "m4a": tmp_path / "x.m4a", "bidir": _save(bidir, tmp_path / "bi"),
             "nolabels": _save(nolabels, tmp_path / "nl")}
    r = _invoke(*[a.format(**names) for a in args])
    assert r.exit_code == code, r.output
    assert r.stderr.splitlines()[-1] == message.format(**names)
    assert "Traceback" not in r.output


def test_streaming_export_keeps_its_front_end_on_mlx(speech):
    """A WAV into the MLX backend of a ``--streaming`` export (the MLX executor of ONNX)."""
    lines = _json_lines(_invoke(speech["onnx"], speech["wav"], "--json", "--backend", "mlx"))
    got = np.concatenate([np.array(d["output"]) for d in lines])
    np.testing.assert_allclose(got, _expected_speech(speech), atol=1e-5)
    assert lines[0]["label"] in ("_silence_", "yes", "no")
