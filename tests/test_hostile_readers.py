"""Issue 12.3/12.4/12.6: hostile files in the weak readers, and which errors are mapped."""

from __future__ import annotations

import json
import os
import struct
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile import (
    assert_calm,
    assert_clean_failure,
    digest,
    invoke,
    listing,
    run_limited,
    tiny_model,
    tiny_onnx,
    tried,
)

from edgelstm.errors import DataError, EdgeLSTMError, LimitError
from edgelstm.frontend.readers import parse_wav, read_wav
from edgelstm.runtime.inference import run_model

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from edgelstm.frontend.features import FeatureConfig

    d = tmp_path_factory.mktemp("readers")
    fc = FeatureConfig(kind="mfcc", sample_rate=8000, n_mels=20, n_mfcc=6).to_dict()
    return {"ckpt": tiny_model(d), "onnx": tiny_onnx(d), "dir": d,
            "speech": tiny_model(d, "speech", input_size=6, features=fc),
            "stream": tiny_onnx(d, "stream.onnx", streaming=True)}


def wav_bytes(rate: int, n: int = 100_000, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV declaring ``rate`` Hz."""
    data = np.zeros(n * channels, "<i2").tobytes()
    byte_rate = (rate * 2 * channels) & 0xFFFFFFFF  # a lie either way; readers ignore it
    fmt = struct.pack("<HHIIHH", 1, channels, rate, byte_rate, 2 * channels, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack(
        "<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("rate", [1, 999, 384_001, 4_000_000_000])
def test_absurd_wav_rates_refused_fast(models, tmp_path, rate):
    """1 Hz once took 100 s and 6.3 GB (up-converting); 4 GHz 'succeeded' with 0 frames."""
    path = tmp_path / "x.wav"
    path.write_bytes(wav_bytes(rate))
    t0 = time.perf_counter()
    with pytest.raises(LimitError, match="sample rate"):
        read_wav(path, target_rate=8000)
    r = invoke("stream", models["speech"], path)
    r2 = invoke("stream", models["speech"], "-", input=path.read_bytes())
    tried("readers", 3)
    assert "sample rate" in assert_clean_failure(r, codes=(1,))
    assert "sample rate" in assert_clean_failure(r2, codes=(1,))
    assert time.perf_counter() - t0 < 10


def test_sane_rates_still_read():
    x, rate = parse_wav(wav_bytes(16000, n=160))
    assert rate == 16000 and x.shape == (160, 1)


def _unknown_domain(src: str, dst: Path) -> Path:
    m = onnx.load(src)
    m.graph.node.append(onnx.helper.make_node("Frobnicate", [m.graph.output[0].name], ["junk"],
                                              domain="com.example"))
    m.opset_import.append(onnx.helper.make_opsetid("com.example", 1))
    onnx.save(m, str(dst))
    return dst


def _dangling_input(src: str, dst: Path) -> Path:
    m = onnx.load(src)
    m.graph.node[0].input[0] = "nowhere"
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("mutate,message", [(_unknown_domain, "standard ONNX ops"),
                                            (_dangling_input, "not a valid ONNX model")])
@pytest.mark.parametrize("out", ["q.onnx", "q_ort.onnx", "qdir"])
def test_quantize_refuses_bad_onnx_and_leaves_nothing(models, tmp_path, mutate, message, out):
    bad = mutate(models["onnx"], tmp_path / "bad.onnx")
    before, names = digest(bad), listing(tmp_path)
    args = ["quantize", bad, tmp_path / out]
    if out == "q_ort.onnx":
        args += ["--format", "onnx-ort"]
    r = invoke(*args)
    tried("readers")
    written = set()
    if out == "qdir":  # the MLX path imports the model: a dead foreign node is dropped
        assert_calm(r)
        if r.exit_code == 0:
            written = {"qdir", "qdir/config.json", "qdir/model.safetensors"}
    else:
        assert message in assert_clean_failure(r, codes=(1,)), r.output
    assert digest(bad) == before
    assert listing(tmp_path) == names | written  # no half-written or temporary output


def test_quantize_truncated_onnx(models, tmp_path):
    raw = Path(models["onnx"]).read_bytes()
    for cut in (0, 1, 7, len(raw) // 2, len(raw) - 3):
        (tmp_path / "t.onnx").write_bytes(raw[:cut])
        r = invoke("quantize", tmp_path / "t.onnx", tmp_path / "q.onnx")
        tried("readers")
        assert_clean_failure(r, codes=(1,))
        assert not (tmp_path / "q.onnx").exists()


def test_random_bytes_on_stdin_to_sensor_model(models):
    rng = np.random.default_rng(0)
    for k in range(6):
        junk = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
        if k == 0:
            junk = b"1,2,3\n" + b"\0" * 50 + b"\n"  # NUL bytes: csv.Error inside the csv module
        r = invoke("stream", models["ckpt"], "-", input=junk)
        tried("readers")
        assert_clean_failure(r, codes=(1,))


def test_keras_config_missing_keys(tmp_path):
    src = FIXTURES / "keras_lstm_seq.keras"
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    edits = [lambda c: c.pop("config"),
             lambda c: c["config"].pop("layers"),
             lambda c: [layer.pop("config") for layer in c["config"]["layers"]],
             lambda c: [layer["config"].pop("units", None) for layer in c["config"]["layers"]],
             lambda c: [layer["config"].update(units=1e9) for layer in c["config"]["layers"]
                        if "units" in layer["config"]],
             lambda c: c["config"].update(layers="LSTM")]
    for k, edit in enumerate(edits):
        cfg = json.loads(json.dumps(config))
        edit(cfg)
        bad = tmp_path / f"bad{k}.keras"
        with zipfile.ZipFile(bad, "w") as z:
            for n, b in files.items():
                z.writestr(n, json.dumps(cfg) if n == "config.json" else b)
        r = invoke("info", bad)
        tried("readers")
        assert_clean_failure(r, codes=(1,))


def test_zero_byte_files(models, tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    (tmp_path / "empty.npy").write_bytes(b"")
    (tmp_path / "empty.npz").write_bytes(b"")
    r = invoke("info", tmp_path / "empty.onnx")
    assert "holds no graph" in assert_clean_failure(r, codes=(1,))
    for f in ("empty.npy", "empty.npz"):
        r = invoke("run", models["ckpt"], "-i", tmp_path / f, "-o", tmp_path / "y.npz")
        assert "empty file" in assert_clean_failure(r, codes=(1,))
        assert "Aborted" not in r.output
    r = invoke("stream", models["ckpt"], tmp_path / "empty.npy")
    assert_clean_failure(r, codes=(1,))
    tried("readers", 4)


@pytest.mark.parametrize("backend", ["mlx", "onnxruntime"])
def test_lengths_negative_or_too_long(models, backend):
    path = models["ckpt"] if backend == "mlx" else models["onnx"]
    if backend == "onnxruntime":
        from edgelstm.converters import to_onnx
        from edgelstm.io.checkpoint import load

        path = str(to_onnx(load(models["ckpt"]), models["dir"] / f"len-{os.getpid()}.onnx",
                           lengths=True, force=True))
    x = np.zeros((2, 4, 3), np.float32)
    for lengths, message in (([4, -1], "negative"), ([4, 9], "exceeds"), ([1.5, 2], "integers")):
        with pytest.raises(DataError, match=message):
            run_model(path, {"input": x, "lengths": np.array(lengths)}, backend=backend)
        tried("readers")


def test_bugs_are_not_bad_input(models, monkeypatch):
    """Only EdgeLSTMError and file-access errors become one line; a bug keeps its traceback."""
    import edgelstm.runtime.info as info

    def buggy(path):
        raise ValueError("a real bug")

    monkeypatch.setattr(info, "describe", buggy)
    r = invoke("info", models["ckpt"])
    assert isinstance(r.exception, ValueError)

    def bad_input(path):
        raise DataError("bad input")

    monkeypatch.setattr(info, "describe", bad_input)
    assert invoke("info", models["ckpt"]).output == "Error: bad input\n"
    assert isinstance(invoke("--debug", "info", models["ckpt"]).exception, DataError)
    r = invoke("info", models["ckpt"], env={"EDGELSTM_DEBUG": "1"})
    assert isinstance(r.exception, DataError)
    assert invoke("info", models["ckpt"], env={"EDGELSTM_DEBUG": "0"}).exit_code == 1


def test_debug_traceback_in_a_subprocess(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"garbage")
    plain, _ = run_limited("info", tmp_path / "x.onnx")
    debug, _ = run_limited("--debug", "info", tmp_path / "x.onnx")
    tried("readers", 2)
    assert plain.returncode == 1 and b"Traceback" not in plain.stderr
    assert debug.returncode == 1 and b"Traceback" in debug.stderr
    assert b"CheckpointError" in debug.stderr


def test_file_access_errors_are_one_line(models, tmp_path):
    r = invoke("run", models["ckpt"], "-i", FIXTURES / "torch_gru.npz", "-o",
               tmp_path / "missing-dir" / "y.npz")
    assert_clean_failure(r, codes=(1,))
    with pytest.raises(EdgeLSTMError):
        run_model(models["ckpt"], np.zeros((1, 2, 5), np.float32))
