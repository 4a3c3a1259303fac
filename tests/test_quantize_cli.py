"""``edgelstm quantize``: the report is printed, bad options are usage errors."""

from __future__ import annotations

import json

import mlx.core as mx
import pytest
from click.testing import CliRunner

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)
from edgelstm.cli import cli

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    mx.random.seed(0)
    path = tmp_path_factory.mktemp("cli") / "m"
    edgelstm.SequenceModel(edgelstm.LSTM(40, 128), num_outputs=4, head="sequence").save(path)
    return path


@pytest.mark.parametrize("dst,extra", [("q", []), ("q.onnx", []),
                                       ("o.onnx", ["--format", "onnx-ort"])])
def test_quantize_prints_the_report(model_dir, tmp_path, dst, extra):
    res = CliRunner().invoke(cli, ["quantize", str(model_dir), str(tmp_path / dst), *extra])
    assert res.exit_code == 0, res.output
    assert "x smaller" in res.output and "cosine" in res.output and "max abs" in res.output
    assert (tmp_path / dst).exists()


def test_quantize_json_report(model_dir, tmp_path):
    res = CliRunner().invoke(cli, ["quantize", str(model_dir), str(tmp_path / "q"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert report["ratio"] >= 3.5 and report["cosine"] >= 0.999


@pytest.mark.parametrize("args,message", [
    (["--bits", "3"], "'3' is not one of '8', '4'"),
    (["--bits", "4", "--format", "onnx-qdq"], "MLX-only"),
    (["--format", "mlx"], "checkpoint directory"),
])
def test_unsupported_options_are_usage_errors(model_dir, tmp_path, args, message):
    res = CliRunner().invoke(cli, ["quantize", str(model_dir), str(tmp_path / "q.onnx"), *args])
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "q.onnx").exists()


def test_existing_output_needs_force(model_dir, tmp_path):
    (tmp_path / "q").mkdir()
    res = CliRunner().invoke(cli, ["quantize", str(model_dir), str(tmp_path / "q")])
    assert res.exit_code == 1 and "--force" in res.output and "Traceback" not in res.output


def test_onnx_ort_help_says_ort_only():
    res = CliRunner().invoke(cli, ["quantize", "--help"])
    assert "ONNX Runtime only" in res.output
