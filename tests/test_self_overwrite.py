"""Issue 12.1: an output may never be, contain or lie inside an input, even with --force."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hostile import (
    assert_clean_failure,
    digest,
    invoke,
    tiny_data,
    tiny_model,
    tiny_onnx,
    tried,
)

from edgelstm.errors import OutputPathError
from edgelstm.io.fileio import check_output_path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("selfwrite")
    x = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    np.savez(d / "x.npz", input=x)
    return {"dir": d, "ckpt": tiny_model(d), "onnx": tiny_onnx(d),
            "data": tiny_data(d / "data.npz"), "x": str(d / "x.npz")}


def _refused(args, inputs):
    before = digest(*inputs)
    r = invoke(*args)
    tried("self-overwrite")
    line = assert_clean_failure(r, codes=(1,))
    assert "choose another output path" in line, line
    assert digest(*inputs) == before
    return line


def test_unit_same_inside_around(tmp_path):
    f = tmp_path / "a.npz"
    f.write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "w").write_bytes(b"w")
    for out, ins in [(f, [f]), (tmp_path / "d" / "w" / "x", [tmp_path / "d"]),
                     (tmp_path / "d" / "new", [tmp_path / "d"]), (tmp_path, [f]),
                     (tmp_path / "d", [tmp_path / "d" / "w"])]:
        with pytest.raises(OutputPathError):
            check_output_path(out, ins)
        tried("self-overwrite")
    check_output_path(tmp_path / "other.npz", [f, None])  # unrelated: fine


def test_unit_symlink_and_hardlink(tmp_path):
    f = tmp_path / "a.npz"
    f.write_bytes(b"x")
    os.symlink(f, tmp_path / "sym.npz")
    os.link(f, tmp_path / "hard.npz")
    for out in ("sym.npz", "hard.npz"):
        with pytest.raises(OutputPathError, match="is the input"):
            check_output_path(tmp_path / out, [f])
        tried("self-overwrite")
    (tmp_path / "out").mkdir()
    os.link(f, tmp_path / "out" / "inner")
    with pytest.raises(OutputPathError, match="hard link"):
        check_output_path(tmp_path / "out", [f])
    tried("self-overwrite")


def test_train_data_as_output(files):
    for out in (files["data"], files["dir"]):
        _refused(["train", files["data"], "-o", out, "--force", "--epochs", "1"], [files["data"]])


def test_quantize_onto_itself(files):
    _refused(["quantize", files["ckpt"], files["ckpt"], "--force"], [files["ckpt"]])
    _refused(["quantize", files["ckpt"], os.path.join(files["ckpt"], "q"), "--force"],
             [files["ckpt"]])
    _refused(["quantize", files["ckpt"], files["dir"], "--force"], [files["ckpt"]])
    _refused(["quantize", files["onnx"], files["onnx"], "--force"], [files["onnx"]])
    # the --eval data is an input too
    _refused(["quantize", files["ckpt"], files["data"], "--format", "mlx", "--force",
              "--eval", files["data"]], [files["data"]])


def test_run_input_as_output(files):
    _refused(["run", files["ckpt"], "-i", files["x"], "-o", files["x"], "--force"], [files["x"]])
    link = str(files["dir"] / "hard.npz")
    if not os.path.exists(link):
        os.link(files["x"], link)
    _refused(["run", files["ckpt"], "-i", files["x"], "-o", link, "--force"], [files["x"]])
    _refused(["run", files["ckpt"], "-i", files["x"], "-o",
              os.path.join(files["ckpt"], "y.npz"), "--force"], [files["ckpt"]])


def test_bench_plot_onto_model(files):
    # --json is a flag printing to stdout (issue 11); --plot is bench's one output file
    pytest.importorskip("matplotlib")
    _refused(["bench", files["ckpt"], "--backend", "mlx", "--plot",
              os.path.join(files["ckpt"], "p.png"), "--force", "--runs", "3"],
             [files["ckpt"]])


def test_convert_into_source(files):
    _refused(["convert", files["ckpt"], os.path.join(files["ckpt"], "inner"),
              "--force"], [files["ckpt"]])
    _refused(["convert", files["onnx"], files["onnx"], "--force"], [files["onnx"]])


def test_unrelated_output_still_works(files, tmp_path):
    r = invoke("run", files["ckpt"], "-i", files["x"], "-o", tmp_path / "y.npz")
    assert r.exit_code == 0, r.output
