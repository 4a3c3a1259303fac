"""Issue 12.2: absurd sizes are refused against limits and the file's real contents,
before anything of that size is allocated."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from hostile import assert_clean_failure, invoke, run_limited, tiny_data, tiny_model, tried

from edgelstm import limits
from edgelstm.errors import EdgeLSTMError, LimitError
from edgelstm.frontend.arrays import load_npy, load_npz
from edgelstm.io.checkpoint import load


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("sizes"))


def _mutated(ckpt, tmp_path, edit):
    m = tmp_path / "m"
    shutil.rmtree(m, ignore_errors=True)
    shutil.copytree(ckpt, m)
    cfg = json.loads((m / "config.json").read_text())
    edit(cfg)
    (m / "config.json").write_text(json.dumps(cfg))
    return m


BAD_CONFIGS = [
    ("rnn.num_layers", lambda c: c["rnn"].update(num_layers=1e9), "outside"),
    ("rnn.hidden_size", lambda c: c["rnn"].update(hidden_size=1e9), "outside"),
    ("rnn.hidden_size", lambda c: c["rnn"].update(hidden_size=-4), "outside"),
    ("rnn.hidden_size", lambda c: c["rnn"].update(hidden_size=4.5), "integer"),
    ("rnn.input_size", lambda c: c["rnn"].update(input_size=True), "integer"),
    ("rnn.input_size", lambda c: c["rnn"].update(input_size=10**12), "outside"),
    ("num_outputs", lambda c: c.update(num_outputs=1e9, labels=None), "outside"),
    ("weights", lambda c: c["rnn"].update(hidden_size=1024, num_layers=2), "weights file"),
    ("rnn", lambda c: c.update(rnn="lstm"), "must be an object"),
    ("rnn", lambda c: c.update(rnn=[1, 2]), "must be an object"),
    ("labels", lambda c: c.update(labels="ab"), "labels"),
]


@pytest.mark.parametrize("what,edit,message", BAD_CONFIGS)
def test_config_sizes_refused(ckpt, tmp_path, what, edit, message):
    m = _mutated(ckpt, tmp_path, edit)
    with pytest.raises(EdgeLSTMError, match=message):
        load(m)
    r = invoke("info", m)
    tried("sizes")
    assert message in assert_clean_failure(r, codes=(1,))


def test_num_layers_1e9_fast_and_small(ckpt, tmp_path):
    """Once: 30 s and 7.6 GB, then an abort. Now: refused under a 4 GiB address-space cap."""
    m = _mutated(ckpt, tmp_path, lambda c: c["rnn"].update(num_layers=1e9))
    proc, secs = run_limited("info", m, gib=4)
    tried("sizes")
    assert proc.returncode == 1 and proc.stderr.decode().startswith("Error:"), proc.stderr
    assert secs < 30


def test_onnx_hidden_size_1e9(tmp_path):
    from hostile import tiny_onnx

    from edgelstm.converters import from_onnx

    path = tiny_onnx(tmp_path)
    model = onnx.load(path)
    node = next(n for n in model.graph.node if n.op_type == "LSTM")
    for value, message in ((10**9, "outside"), (5, "does not match")):
        for a in node.attribute:
            if a.name == "hidden_size":
                a.i = value
        bad = tmp_path / f"h{value}.onnx"
        onnx.save(model, str(bad))
        with pytest.raises(EdgeLSTMError, match=message):
            from_onnx(bad)
        tried("sizes")
        r = invoke("convert", bad, tmp_path / f"out{value}")
        assert_clean_failure(r, codes=(1,))
        assert not (tmp_path / f"out{value}").exists()


def test_training_label_1e9(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 2)).astype(np.float32)
    for y, message in ((np.array([0, 1, 10**9, 0]), "classes"), (np.array([0, -3, 1, 0]),
                                                               "negative")):
        np.savez(tmp_path / "d.npz", x=x, y=y)
        r = invoke("train", tmp_path / "d.npz", "-o", tmp_path / "out", "--epochs", "1")
        tried("sizes")
        assert message in assert_clean_failure(r, codes=(1,))
        assert not (tmp_path / "out").exists()


def _npy_claiming(path, shape, dtype="<f4", payload=b"\0" * 64):
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(payload)
    return path


def test_npy_header_claims_224_gib(tmp_path, ckpt):
    bad = _npy_claiming(tmp_path / "x.npy", (100000, 100000, 6))
    with pytest.raises(LimitError):
        load_npy(bad)
    ok_size = _npy_claiming(tmp_path / "y.npy", (1000, 3))  # small claim, missing bytes
    with pytest.raises(EdgeLSTMError, match="bytes follow"):
        load_npy(ok_size)
    np.savez(tmp_path / "z.npz", input=np.zeros((2, 2), np.float32))
    proc, secs = run_limited("run", ckpt, "-i", bad, "-o", tmp_path / "o.npz", gib=4)
    tried("sizes", 3)
    assert proc.returncode == 1 and b"Error:" in proc.stderr and secs < 30
    assert not (tmp_path / "o.npz").exists()
    assert set(load_npz(tmp_path / "z.npz")) == {"input"}


def test_npz_member_header_lies(tmp_path):
    import zipfile

    _npy_claiming(tmp_path / "input.npy", (100000, 100000, 6))
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as zf:
        zf.write(tmp_path / "input.npy", "input.npy")
    with pytest.raises(LimitError):
        load_npz(tmp_path / "x.npz")
    tried("sizes")


@pytest.mark.parametrize("args", [
    ["stream", "{ckpt}", "{x}", "--chunk-frames", "1000000000"],
    ["stream", "{ckpt}", "{x}", "--chunk-ms", "1e12"],
    ["bench", "{ckpt}", "--backend", "mlx", "--seq-len", "1000000000"],
    ["bench", "{ckpt}", "--backend", "mlx", "--batch", "1000000000"],
    ["bench", "{ckpt}", "--backend", "mlx", "--batch", "60000", "--seq-len", "9000000"],
    ["train", "{data}", "-o", "{out}", "--hidden", "1000000000"],
    ["train", "{data}", "-o", "{out}", "--layers", "1000000000"],
    ["train", "{data}", "-o", "{out}", "--hidden", "16384", "--layers", "64"],
    ["train", "{data}", "-o", "{out}", "--batch-size", "1000000000"],
    ["stream", "{ckpt}", "-", "--rate", "1"],
])
def test_absurd_options(ckpt, tmp_path, args):
    x = tmp_path / "x.csv"
    x.write_text("1,2,3\n4,5,6\n")
    fill = {"ckpt": ckpt, "x": x, "data": tiny_data(tmp_path / "d.npz"), "out": tmp_path / "o"}
    r = invoke(*[a.format(**fill) for a in args])
    tried("sizes")
    assert_clean_failure(r)
    assert not (tmp_path / "o").exists()


def test_limits_helpers():
    assert limits.check_int("n", 3.0, 1, 5) == 3
    for bad in (None, "3", True, float("nan"), float("inf"), 2.5, 10):
        with pytest.raises(LimitError):
            limits.check_int("n", bad, 1, 5)
        tried("sizes")
    with pytest.raises(LimitError):
        limits.check_elements((10**5, 10**5, 6), "x")
    tried("sizes")
