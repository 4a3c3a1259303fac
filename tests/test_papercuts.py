"""Issue 11's papercuts: umask, convert suffixes, --batch, info counts, run (T, F), eval --json."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from click.testing import CliRunner

import edgelstm
from edgelstm.cli import cli
from edgelstm.errors import UnsupportedError


@pytest.fixture
def classifier(tmp_path):
    model = edgelstm.SequenceModel(edgelstm.LSTM(3, 8), head="sequence", num_outputs=2)
    return str(model.save(tmp_path / "model"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_outputs_respect_the_umask(tmp_path, mask):
    from edgelstm.io.fileio import atomic_output

    old = os.umask(mask)
    try:
        with atomic_output(tmp_path / "f.json") as tmp:
            tmp.write_text("{}")
        with atomic_output(tmp_path / "d", directory=True) as tmp:
            (tmp / "x").write_text("x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f.json") == 0o666 & ~mask
    assert _mode(tmp_path / "d") == 0o777 & ~mask


def test_cli_outputs_are_not_private(classifier, tmp_path, umask_022):
    r = CliRunner().invoke(cli, ["convert", classifier, str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert _mode(tmp_path / "m.onnx") == 0o644
    r = CliRunner().invoke(cli, ["convert", classifier, str(tmp_path / "copy")])
    assert r.exit_code == 0, r.output
    assert _mode(tmp_path / "copy") == 0o755


@pytest.mark.parametrize("suffix", [".pt", ".keras", ".mlmodel", ".h5"])
def test_convert_refuses_unsupported_destination_suffixes(classifier, tmp_path, suffix):
    from edgelstm.converters import convert

    dst = tmp_path / f"out{suffix}"
    with pytest.raises(UnsupportedError, match="not an output format"):
        convert(classifier, dst)
    r = CliRunner().invoke(cli, ["convert", classifier, str(dst)])
    assert r.exit_code == 1 and f"'{suffix}' is not an output format" in r.output
    assert not dst.exists() and not list(tmp_path.glob(".out*"))


def test_output_format_table():
    from edgelstm.converters.conversion import OUTPUT_FORMATS, output_format

    assert output_format("a/b.ONNX") == "onnx" and output_format("a/ckpt") == "checkpoint"
    assert output_format("m.tflite") == "tflite"
    assert output_format("m.mlpackage") == "coreml"
    assert set(OUTPUT_FORMATS) == {".onnx", ".tflite", ".mlpackage", ""}


def test_train_takes_batch_and_the_hidden_old_name(tmp_path):
    from edgelstm.cli.train import train

    for flag in ("--batch", "--batch-size"):
        ctx = train.make_context("train", [str(tmp_path), "-o", "x", flag, "7"])
        assert ctx.params["batch_size"] == 7
    text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--batch " in text and "--batch-size" not in text


def test_info_counts_agree_for_a_model_and_its_exports(classifier, tmp_path):
    from edgelstm.converters import to_onnx
    from edgelstm.runtime.info import describe

    model = edgelstm.load(classifier)
    to_onnx(model, tmp_path / "m.onnx")
    to_onnx(model, tmp_path / "s.onnx", streaming=True)
    native = describe(classifier)["parameters"]
    # 4H(I+H) + 4H bias + head (H*C + C) + norm
    assert native == 4 * 8 * (3 + 8) + 4 * 8 + 8 * 2 + 2
    for f in ("m.onnx", "s.onnx"):
        info = describe(tmp_path / f)
        assert info["parameters"] == native, f
    gru = edgelstm.SequenceModel(edgelstm.GRU(3, 5), head="frame", num_outputs=2)
    to_onnx(gru, tmp_path / "g.onnx")
    assert describe(tmp_path / "g.onnx")["parameters"] == describe(gru.save(tmp_path / "g"))[
        "parameters"]


@pytest.mark.parametrize("backend", ["mlx", "onnxruntime"])
def test_run_accepts_unbatched_input_on_every_backend(classifier, tmp_path, backend):
    from edgelstm.converters import to_onnx
    from edgelstm.runtime.inference import run_model

    to_onnx(edgelstm.load(classifier), tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((11, 3)).astype(np.float32)
    native = run_model(classifier, x)
    out = run_model(tmp_path / "m.onnx", x, backend=backend)
    assert out["output"].shape == native["output"].shape == (2,)
    np.testing.assert_allclose(out["output"], native["output"], atol=1e-5)
    batched = run_model(tmp_path / "m.onnx", x[None], backend=backend)["output"]
    np.testing.assert_allclose(batched[0], out["output"], atol=1e-6)
    np.save(tmp_path / "x.npy", x)
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "m.onnx"), "-i", str(tmp_path / "x.npy"),
                                 "-o", str(tmp_path / "y.npz"), "--backend", backend])
    assert r.exit_code == 0, r.output


def test_eval_json_lists_misclassified(classifier, tmp_path):
    from edgelstm.runtime.inference import run_model

    rng = np.random.default_rng(1)
    x = rng.standard_normal((12, 6, 3)).astype(np.float32)
    pred = run_model(classifier, x)["output"].argmax(-1)
    y = pred.copy()
    y[[2, 5]] = 1 - y[[2, 5]]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    r = CliRunner().invoke(cli, ["eval", classifier, str(tmp_path / "d.npz"), "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert [m["index"] for m in data["misclassified"]] == [2, 5]
    assert data["misclassified"][0] == {"index": 2, "truth": int(y[2]), "prediction": int(pred[2])}
