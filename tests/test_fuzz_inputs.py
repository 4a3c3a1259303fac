"""Property-based fuzzing (hypothesis) of every reader and a few commands.

Each example mutates a valid file (bytes, or structure for ONNX and
config.json) and feeds it to a library entry point or the CLI. It must
either work or fail with an :class:`EdgeLSTMError` / a one-line ``Error:``
(exit 0, 1 or 2), leave the input unchanged and leave no output behind. A
few mutants run in a subprocess under a 4 GiB address-space cap.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile import (
    assert_calm,
    digest,
    invoke,
    listing,
    run_limited,
    tiny_data,
    tiny_model,
    tiny_onnx,
    tried,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgelstm.errors import EdgeLSTMError

# a fixed, small budget per reader; EDGELSTM_FUZZ_EXAMPLES=500 (and _SEED) fuzz deeper locally
FUZZ = settings(max_examples=int(os.environ.get("EDGELSTM_FUZZ_EXAMPLES", "25")), deadline=None,
                database=None, derandomize="EDGELSTM_FUZZ_SEED" not in os.environ,
                suppress_health_check=list(HealthCheck))
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # truncated WAVs warn
# header bytes matter most: positions are drawn from the first 256 bytes half the time
EDITS = st.lists(st.tuples(st.sampled_from("fxid"), st.one_of(st.integers(0, 255),
                                                              st.integers(0, 2**20)),
                           st.integers(0, 255)), min_size=1, max_size=6)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40)
                    | st.floats(allow_nan=False) | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def mutate(data: bytes, edits) -> bytes:
    """Flip, cut (truncate), insert or delete bytes at the given positions."""
    b = bytearray(data)
    for op, pos, val in edits:
        pos = pos % (len(b) + 1)
        if op == "f" and pos < len(b):
            b[pos] = val
        elif op == "x":
            del b[pos:]
        elif op == "i":
            b[pos:pos] = bytes([val]) * (1 + val % 8)
        elif op == "d":
            del b[pos:pos + 1 + val % 16]
    return bytes(b)


def wav_file(rate=8000, n=800) -> bytes:
    data = (np.random.default_rng(0).standard_normal(n) * 1000).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    body = (b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data"
            + struct.pack("<I", len(data)) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


TS = """@problemName Tiny
@timeStamps false
@univariate false
@dimensions 2
@classLabel true a b
@data
1.0,2.0,3.0:4.0,5.0,6.0:a
2.0,3.0,4.0:5.0,6.0,7.0:b
1.5,2.5,3.5:4.5,5.5,6.5:a
"""


class Base(dict):
    """The valid files every mutation starts from (a short repr for hypothesis reports)."""

    def __repr__(self) -> str:
        return "<fuzz base files>"


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from edgelstm.frontend.features import FeatureConfig

    d = tmp_path_factory.mktemp("fuzzbase")
    fc = FeatureConfig(kind="mfcc", sample_rate=8000, n_mels=20, n_mfcc=6).to_dict()
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.save(d / "x.npy", x)
    np.savez(d / "x.npz", input=x, lengths=np.array([5, 3], np.int32))
    ckpt = tiny_model(d)
    return Base({
        "dir": d, "ckpt": ckpt, "onnx": tiny_onnx(d),
        "speech": tiny_model(d, "speech", input_size=6, features=fc),
        "config": (Path(ckpt) / "config.json").read_text(),
        "weights": (Path(ckpt) / "model.safetensors").read_bytes(),
        "npy": (d / "x.npy").read_bytes(), "npz": (d / "x.npz").read_bytes(),
        "data": Path(tiny_data(d / "data.npz")).read_bytes(),
        "csv": "a,b,c\n" + "\n".join(",".join(f"{v:.3f}" for v in r) for r in x[0]) + "\n",
    })


def _library_call(fn, *args):
    """Run ``fn``: success or EdgeLSTMError only."""
    try:
        fn(*args)
    except EdgeLSTMError as exc:
        assert "\n" not in str(exc).strip() or len(str(exc)) < 2000
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass


def _in_tmp(name: str, data: bytes):
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = tmp / name
    path.write_bytes(data)
    return tmp, path


# ------------------------------------------------------------------ byte-level readers


@FUZZ
@given(EDITS)
def test_fuzz_npy_and_npz(base, edits):
    from edgelstm.frontend.readers import read_npy
    from edgelstm.runtime.inference import read_inputs
    from edgelstm.training.data import load_dataset

    for name, data in (("x.npy", base["npy"]), ("x.npz", base["npz"])):
        tmp, path = _in_tmp(name, mutate(data, edits))
        before = digest(path)
        _library_call(read_inputs, path, ["input"])
        if name == "x.npy":
            _library_call(read_npy, path)
        else:
            _library_call(load_dataset, path)
        r = invoke("run", base["ckpt"], "-i", path, "-o", tmp / "out.npz")
        assert_calm(r)
        tried("fuzz npy/npz", 3)
        assert digest(path) == before
        shutil.rmtree(tmp)


@FUZZ
@given(EDITS)
def test_fuzz_wav(base, edits):
    from edgelstm.frontend.readers import read_wav

    data = mutate(wav_file(), edits)
    tmp, path = _in_tmp("a.wav", data)
    t0 = time.perf_counter()
    before = digest(path)
    _library_call(lambda p: read_wav(p, target_rate=8000), path)
    r = invoke("stream", base["speech"], path, "--json")
    assert_calm(r)
    r = invoke("stream", base["speech"], "-", input=data)
    assert_calm(r)
    tried("fuzz wav", 3)
    assert time.perf_counter() - t0 < 20  # work is bounded per input byte
    assert digest(path) == before
    shutil.rmtree(tmp)


@FUZZ
@given(st.one_of(EDITS.map(lambda e: ("edits", e)), st.binary(max_size=400).map(
    lambda b: ("raw", b))))
def test_fuzz_csv_and_stdin(base, how):
    from edgelstm.frontend.readers import read_csv

    kind, value = how
    data = mutate(base["csv"].encode(), value) if kind == "edits" else value
    tmp, path = _in_tmp("x.csv", data)
    _library_call(read_csv, path)
    assert_calm(invoke("stream", base["ckpt"], path))
    assert_calm(invoke("stream", base["ckpt"], "-", input=data))
    tried("fuzz csv", 3)
    shutil.rmtree(tmp)


@FUZZ
@given(EDITS)
def test_fuzz_ts(base, edits):
    from edgelstm.training.data import load_dataset

    tmp, path = _in_tmp("tiny.ts", mutate(TS.encode(), edits))
    _library_call(load_dataset, path)
    r = invoke("train", path, "-o", tmp / "out", "--epochs", "1", "--hidden", "4",
               "--val", "0")
    assert_calm(r)
    if r.exit_code != 0:
        assert not (tmp / "out").exists()
    tried("fuzz ts", 2)
    shutil.rmtree(tmp)


@FUZZ
@given(EDITS)
def test_fuzz_safetensors(base, edits):
    from edgelstm.io.checkpoint import load

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    (tmp / "m").mkdir()
    (tmp / "m" / "config.json").write_text(base["config"])
    (tmp / "m" / "model.safetensors").write_bytes(mutate(base["weights"], edits))
    before = digest(tmp / "m")
    _library_call(load, tmp / "m")
    assert_calm(invoke("info", tmp / "m"))
    tried("fuzz safetensors", 2)
    assert digest(tmp / "m") == before
    shutil.rmtree(tmp)


# ------------------------------------------------------------------ structured mutations


def _config_paths(cfg: dict):
    return [(k,) for k in cfg] + [("rnn", k) for k in cfg.get("rnn", {})]


@FUZZ
@given(st.data())
def test_fuzz_config_json(base, data):
    from edgelstm.io.checkpoint import load

    cfg = json.loads(base["config"])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _config_paths(cfg) if isinstance(cfg.get("rnn"), dict) else [(k,) for k in cfg]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        holder = cfg if len(path) == 1 else cfg["rnn"]
        if data.draw(st.booleans()):
            holder.pop(path[-1], None)
        else:
            holder[path[-1]] = data.draw(st.one_of(JSON, st.sampled_from(
                [1e9, -1, 0, 2**63, "lstm", 1.5, [], {}])))
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))
    shutil.copytree(base["ckpt"], tmp / "m")
    (tmp / "m" / "config.json").write_text(json.dumps(cfg))
    _library_call(load, tmp / "m")
    assert_calm(invoke("info", tmp / "m"))
    r = invoke("convert", tmp / "m", tmp / "out.onnx")
    assert_calm(r)
    tried("fuzz config.json", 3)
    if r.exit_code != 0:
        assert not (tmp / "out.onnx").exists()
    assert [n for n in listing(tmp) if ".tmp" in n] == []
    shutil.rmtree(tmp)


ONNX_MUTATIONS = ["hidden", "dims", "domain", "op_type", "drop_node", "rename", "bytes",
                  "drop_init", "attr_type", "output"]


def _mutate_onnx(raw: bytes, how: str, k: int, value: int, edits) -> bytes:
    if how == "bytes":
        return mutate(raw, edits)
    m = onnx.load_from_string(raw)
    nodes, inits = m.graph.node, m.graph.initializer
    node = nodes[k % len(nodes)]
    if how == "hidden":
        for n in nodes:
            for a in n.attribute:
                if a.name == "hidden_size":
                    a.i = value
    elif how == "dims" and inits:
        t = inits[k % len(inits)]
        if t.dims:
            t.dims[value % len(t.dims)] = value
    elif how == "domain":
        node.domain = "com.example"
    elif how == "op_type":
        node.op_type = ["Frob", "LSTM", "GRU", "Relu", "Gemm"][value % 5]
    elif how == "drop_node":
        del nodes[k % len(nodes)]
    elif how == "rename" and node.input:
        node.input[value % len(node.input)] = "missing"
    elif how == "drop_init" and inits:
        del inits[k % len(inits)]
    elif how == "attr_type" and node.attribute:
        a = node.attribute[value % len(node.attribute)]
        a.type = onnx.AttributeProto.STRING
        a.s = b"x"
    elif how == "output":
        m.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.STRING
    return m.SerializeToString()


@FUZZ
@given(st.sampled_from(ONNX_MUTATIONS), st.integers(0, 50),
       st.sampled_from([0, -1, 1, 3, 10**9, 2**40]), EDITS)
def test_fuzz_onnx_quantize_info_run(base, how, k, value, edits):
    raw = Path(base["onnx"]).read_bytes()
    tmp, path = _in_tmp("m.onnx", _mutate_onnx(raw, how, k, value, edits))
    before, names = digest(path), listing(tmp)
    r = invoke("quantize", path, tmp / "out.onnx")
    assert_calm(r)
    if r.exit_code != 0:
        assert listing(tmp) == names  # nothing left behind
    assert_calm(invoke("info", path))
    x = tmp / "x.npy"
    np.save(x, np.zeros((1, 4, 3), np.float32))
    assert_calm(invoke("run", path, "-i", x, "-o", tmp / "out.npz"))
    tried("fuzz onnx", 3)
    assert digest(path) == before
    shutil.rmtree(tmp)


# ------------------------------------------------------------------ bounded memory and time


def test_mutants_under_4_gib(base, tmp_path):
    """A few nasty mutants in a subprocess under RLIMIT_AS = 4 GiB: fast, calm, no output."""
    rng = np.random.default_rng(1)
    npy = bytearray(base["npy"])
    header = npy[:128].replace(b"(2, 5, 3)", b"(99999, 99999, 9)")
    (tmp_path / "big.npy").write_bytes(bytes(header[:128]) + bytes(npy[128:]))
    wav = bytearray(wav_file())
    wav[24:28] = struct.pack("<I", 1)  # 1 Hz
    (tmp_path / "slow.wav").write_bytes(bytes(wav))
    m = tmp_path / "m"
    shutil.copytree(base["ckpt"], m)
    cfg = json.loads(base["config"])
    cfg["rnn"]["num_layers"] = 1e9
    (m / "config.json").write_text(json.dumps(cfg))
    junk = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    cases = [(["run", base["ckpt"], "-i", tmp_path / "big.npy", "-o", tmp_path / "o.npz"], None),
             (["stream", base["speech"], tmp_path / "slow.wav"], None),
             (["convert", m, tmp_path / "o.onnx"], None),
             (["stream", base["ckpt"], "-"], junk)]
    for args, stdin in cases:
        proc, secs = run_limited(*args, input=stdin, gib=4, timeout=60)
        tried("fuzz subprocess")
        err = proc.stderr.decode()
        assert proc.returncode in (1, 2), err
        assert err.strip().splitlines()[-1].startswith("Error:") and "Traceback" not in err
        assert secs < 30
    assert not [n for n in listing(tmp_path) if n.startswith("o.")]
