"""CLI: `info` and `run` on native checkpoints, exit codes and exact errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import edgelstm
from edgelstm.cli import cli


@pytest.fixture
def model_dir(tmp_path):
    model = edgelstm.SequenceModel(edgelstm.LSTM(3, 8, num_layers=2), head="sequence",
                                   labels=["left", "right"], normalize=True)
    return str(model.save(tmp_path / "model"))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for name in ("info", "run"):
        assert f"  {name} " in result.output


def test_help_in_a_fresh_process():
    """`edgelstm --help` as a user types it: nothing imported beforehand (an in-process
    CliRunner shares modules that pytest has already imported)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgelstm", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    for name in ("info", "run", "convert", "quantize", "stream", "bench", "train"):
        assert f"  {name} " in out.stdout


def test_info_text_and_json(model_dir):
    result = invoke("info", model_dir)
    assert result.exit_code == 0, result.output
    assert "LSTM 2x8, input 3, sequence head -> 2" in result.output
    assert "labels        left, right" in result.output
    d = json.loads(invoke("info", model_dir, "--json").output)
    assert d["parameters"] == (3 + 8 + 1) * 32 + (8 + 8 + 1) * 32 + (8 + 1) * 2 + 2 * 3
    assert d["bits_per_weight"] == 32.0
    assert d["inputs"] == [{"name": "input", "shape": ["B", "T", 3]}]


def test_run_npy_and_npz(model_dir, tmp_path):
    x = np.random.randn(4, 7, 3).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = invoke("run", model_dir, "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npz")
    assert result.exit_code == 0, result.output
    out = np.load(tmp_path / "y.npz")
    assert sorted(out.files) == ["c_n", "h_n", "output"]
    want = edgelstm.load(model_dir)(edgelstm_array(x))
    np.testing.assert_allclose(out["output"], np.array(want), atol=1e-6)
    np.savez(tmp_path / "x.npz", input=x, lengths=np.array([7, 3, 2, 1], np.int32))
    result = invoke("run", model_dir, "-i", tmp_path / "x.npz", "-o", tmp_path / "y2.npz")
    assert result.exit_code == 0, result.output
    out2 = np.load(tmp_path / "y2.npz")
    np.testing.assert_allclose(out2["output"][0], out["output"][0], atol=1e-6)
    assert not np.allclose(out2["output"][1], out["output"][1])


def edgelstm_array(x):
    import mlx.core as mx

    return mx.array(x)


def test_run_errors(model_dir, tmp_path):
    np.save(tmp_path / "bad.npy", np.zeros((2, 5, 4), np.float32))
    r = invoke("run", model_dir, "-i", tmp_path / "bad.npy", "-o", tmp_path / "o.npz")
    assert r.exit_code == 1
    assert r.output == "Error: input 'input' has 4 features, the model takes 3\n"
    assert not (tmp_path / "o.npz").exists()

    np.savez(tmp_path / "x.npz", foo=np.zeros((2, 5, 3), np.float32))
    r = invoke("run", model_dir, "-i", tmp_path / "x.npz", "-o", tmp_path / "o.npz")
    assert r.exit_code == 1
    assert r.output.startswith("Error: unknown input 'foo'")

    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    r = invoke("run", model_dir, "-i", tmp_path / "junk.npy", "-o", tmp_path / "o.npz")
    assert r.exit_code == 1 and r.output.startswith("Error: cannot read ")

    np.save(tmp_path / "ok.npy", np.zeros((1, 2, 3), np.float32))
    (tmp_path / "exists.npz").write_bytes(b"keep me")
    r = invoke("run", model_dir, "-i", tmp_path / "ok.npy", "-o", tmp_path / "exists.npz")
    assert r.exit_code == 1
    assert r.output == f"Error: {tmp_path / 'exists.npz'} already exists; pass --force to overwrite it\n"
    assert (tmp_path / "exists.npz").read_bytes() == b"keep me"

    r = invoke("run", model_dir, "-i", tmp_path / "ok.npy", "-o", tmp_path / "o.txt")
    assert r.exit_code == 2 and "Invalid value for --output: must end in .npz" in r.output


def test_info_errors(tmp_path):
    r = invoke("info", tmp_path / "missing")
    assert r.exit_code == 2 and "does not exist" in r.output
    r = invoke("info", tmp_path)
    assert r.exit_code == 1
    assert r.output == f"Error: {tmp_path} is not an edgelstm checkpoint (no config.json)\n"


def test_python_m_entry_point(model_dir):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "edgelstm", "info", model_dir],
                         capture_output=True, text=True, check=True)
    assert "architecture" in out.stdout


@pytest.mark.parametrize("backend", ["mlx", "onnxruntime"])
def test_run_onnx_checks_rank_on_both_backends(model_dir, tmp_path, backend):
    from edgelstm.converters import to_onnx

    to_onnx(edgelstm.load(model_dir), tmp_path / "m.onnx")
    # (T, F) is one unbatched sequence on every backend, as for checkpoints (issue 11)
    np.save(tmp_path / "x.npy", np.zeros((2, 5, 2, 3), np.float32))
    r = invoke("run", tmp_path / "m.onnx", "-i", tmp_path / "x.npy", "-o", tmp_path / "o.npz",
               "--backend", backend)
    assert r.exit_code == 1
    assert r.output == ("Error: input 'input' must have 3 dims (batch, time, 3), "
                        "got shape (2, 5, 2, 3)\n")


def test_info_without_model_reports_the_environment():
    from edgelstm.fast import dispatch

    r = CliRunner().invoke(cli, ["info", "--json"])
    assert r.exit_code == 0, r.output
    env = json.loads(r.stdout)
    assert env["kernels"] == dispatch.reason() and env["versions"]["mlx"]
    assert env["default_device"].startswith("Device(") and isinstance(env["gpu_available"], bool)
    assert env["placement"].startswith("fused CPU kernel" if dispatch.available() else "pure MLX")
    r = CliRunner().invoke(cli, ["info"])
    assert r.exit_code == 0 and "placement" in r.stdout and "mlx blas" in r.stdout
