"""The one fused-vs-pure decision: device placement, and import that never walks folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import edgelstm
from edgelstm.fast import blas, stacks
from edgelstm.fast import dispatch as kernels

needs_kernels = pytest.mark.skipif(
    not kernels.available(), reason=f"fused kernels unavailable: {kernels.reason()}")


@pytest.fixture
def gpu_default(monkeypatch):
    """Stand in a GPU as MLX's default device (Linux has none) for the placement rule."""
    monkeypatch.setattr(kernels, "default_device", lambda: mx.gpu)


@needs_kernels
def test_cpu_default_always_uses_the_kernel():
    assert kernels.placement(1) == kernels.placement(4096) == "cpu-kernel"


@needs_kernels
def test_gpu_default_keeps_small_batches_on_the_cpu_kernel(gpu_default):
    limit = kernels.GPU_KERNEL_MAX_BATCH
    assert kernels.placement(1) == kernels.placement(limit) == "cpu-kernel"
    assert kernels.placement(limit + 1) == "mlx"


@needs_kernels
@pytest.mark.parametrize("batch", [1, kernels.GPU_KERNEL_MAX_BATCH + 1])
def test_gpu_default_routes_layer_calls(gpu_default, monkeypatch, batch):
    """Small batches reach the fused stack, large ones the pure path; same numbers either way."""
    calls = []
    real = stacks.run_stack
    monkeypatch.setattr(stacks, "run_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    lstm = edgelstm.LSTM(3, 8, num_layers=2, batch_first=True)
    lstm.eval()
    x = mx.array(np.random.default_rng(0).standard_normal((batch, 5, 3)).astype(np.float32))
    y, (h, c) = lstm(x)
    y_ref, _ = lstm(x, fast=False)
    assert len(calls) == (1 if batch == 1 else 0)
    np.testing.assert_allclose(np.array(y), np.array(y_ref), atol=1e-5)
    plan = stacks.plan_stack(lstm, x, None, None)
    if batch == 1:
        assert isinstance(plan, list) and len(plan) == 2
    else:
        assert plan == f"layer 0: batch {batch} > {kernels.GPU_KERNEL_MAX_BATCH} runs pure MLX on the GPU"


def _run(code: str, env: dict) -> tuple[str, float]:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return out, time.perf_counter() - t0


# Records every directory listing/walk/glob the import makes outside Python's own module
# search (importlib lists the folders on sys.path, which is not a walk).
_AUDIT = """
import json, sys
seen = []
def hook(event, args):
    if event in ("glob.glob", "glob.glob/2", "os.scandir", "os.walk"):
        seen.append([event, str(args[0])])
sys.addaudithook(hook)
import edgelstm
from edgelstm.fast import blas
print(json.dumps({"seen": seen, "blas": blas.MLX_BLAS}))
"""


@pytest.mark.parametrize("choice", ["", "openblas", "wheel"])
def test_import_never_walks_the_filesystem(tmp_path, choice):
    env = {"EDGELSTM_BLAS": choice, "EDGELSTM_BLAS_DIRS": str(tmp_path)}
    out, seconds = _run(_AUDIT, env)
    report = json.loads(out)
    assert report["seen"] == []
    assert seconds < 10  # generous for a loaded 2-core CI box; ~0.5 s typical
    if choice == "openblas" and sys.platform.startswith("linux"):
        assert "found no system OpenBLAS" in report["blas"]
    if choice == "wheel" and sys.platform.startswith("linux") and kernels.available():
        assert report["blas"].startswith("OpenBLAS from the scipy-openblas32 wheel")


# MLX's matmul against scipy-openblas32's own sgemm called on the same data: equal bit for
# bit once EDGELSTM_BLAS=wheel routes MLX there, different under the netlib reference BLAS.
_ROUTED = """
import ctypes, importlib.util, os, json
import edgelstm
import mlx.core as mx
import numpy as np
rng = np.random.default_rng(0)
a = rng.standard_normal((64, 300)).astype(np.float32)
b = rng.standard_normal((300, 96)).astype(np.float32)
got = np.array(mx.array(a) @ mx.array(b))
lib = os.path.join(importlib.util.find_spec("scipy_openblas32").submodule_search_locations[0],
                   "lib", "libscipy_openblas.so")
sgemm = ctypes.CDLL(lib).scipy_cblas_sgemm
want = np.zeros((64, 96), np.float32)
p = lambda x: x.ctypes.data_as(ctypes.c_void_p)
sgemm(101, 111, 111, 64, 96, 300, ctypes.c_float(1.0), p(a), 300, p(b), 96,
      ctypes.c_float(0.0), p(want), 96)
print(json.dumps({"equal": bool(np.array_equal(got, want)),
                  "close": bool(np.allclose(got, a.astype(np.float64) @ b, atol=1e-3))}))
"""


@needs_kernels
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shim is Linux-only")
@pytest.mark.parametrize("choice", ["reference", "wheel"])
def test_wheel_blas_routes_mlx_matmuls_to_the_wheel(choice):
    out, _ = _run(_ROUTED, {"EDGELSTM_BLAS": choice, "OPENBLAS_NUM_THREADS": "1"})
    report = json.loads(out)
    assert report["close"]
    assert report["equal"] == (choice == "wheel")


@pytest.mark.parametrize(("argv", "orig_argv", "cli"), [
    (["/venv/bin/edgelstm", "train"], ["/venv/bin/python", "/venv/bin/edgelstm", "train"], True),
    (["-m"], ["python", "-m", "edgelstm", "info"], True),
    (["-m"], ["python", "-X", "dev", "-I", "-medgelstm"], True),
    (["-m"], ["python", "-m", "pytest", "-q"], False),
    (["-m"], ["python", "-m", "edgelstm.cli"], False),
    (["script.py"], ["python", "script.py", "-m", "edgelstm"], False),
    (["-c"], ["python", "-c", "import edgelstm", "-m", "edgelstm"], False),
    (["/x/edgelstm-helper"], ["python", "/x/edgelstm-helper"], False),
])
def test_cli_process_is_read_from_the_command_line(argv, orig_argv, cli):
    assert blas.is_cli_process(argv, orig_argv) is cli


_CLI_BLAS = ("import edgelstm, json; from edgelstm.fast import blas; "
             "print(json.dumps(blas.MLX_BLAS))")


@needs_kernels
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the shim is Linux-only")
@pytest.mark.parametrize("choice", [None, "reference"])
def test_the_command_loads_the_wheel_blas_unless_told_not_to(tmp_path, choice):
    """`edgelstm` (here `python -m edgelstm`) routes MLX to the wheel BLAS by default."""
    env = {k: v for k, v in os.environ.items() if k != "EDGELSTM_BLAS"}
    if choice is not None:
        env["EDGELSTM_BLAS"] = choice
    run = lambda *cmd: subprocess.run(  # noqa: E731
        [sys.executable, *cmd], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120, check=True).stdout
    command = json.loads(run("-m", "edgelstm", "info", "--json"))["mlx_blas"]
    library = json.loads(run("-c", _CLI_BLAS))
    assert library.startswith("MLX's bundled reference BLAS")  # a program importing us
    if choice is None:
        assert command.startswith("OpenBLAS from the scipy-openblas32 wheel"), command
        assert "the edgelstm command's default" in command
    else:
        assert command.startswith("MLX's bundled reference BLAS"), command


def test_blas_search_tries_fixed_names_only(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELSTM_BLAS_DIRS", str(tmp_path))
    assert blas.find_openblas() is None
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "libopenblas.so.0").write_bytes(b"")
    assert blas.find_openblas() is None  # no descent into subfolders
    (tmp_path / "libopenblas.so.0").write_bytes(b"")
    assert blas.find_openblas() == str(tmp_path / "libopenblas.so.0")


@needs_kernels
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux links scipy-openblas32")
def test_kernels_link_the_wheel_blas_not_a_system_one():
    assert kernels.blas_info().startswith("scipy-openblas32 ")


WITHOUT_OPENBLAS = Path(__file__).resolve().parents[2] / "shared" / "tools" / "without-openblas"


@needs_kernels
@pytest.mark.skipif(not WITHOUT_OPENBLAS.is_file(), reason="../shared/tools/without-openblas absent")
def test_fresh_machine_without_system_openblas(tmp_path):
    """As on a machine with no OpenBLAS: import is quick, kernels load, info says so."""
    code = ("import time; t = time.perf_counter(); import edgelstm; "
            "from edgelstm.fast import dispatch as k; "
            "print(k.available(), round(time.perf_counter() - t, 2), k.blas_info())")
    try:
        out = subprocess.run(["bash", str(WITHOUT_OPENBLAS), sys.executable, "-c", code],
                             capture_output=True, text=True, timeout=120, cwd=tmp_path)
    except OSError as exc:
        pytest.skip(reason=f"cannot run without-openblas here: {exc}")
    if out.returncode != 0 and "unshare" in out.stderr:
        pytest.skip(reason=f"no mount namespaces here: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr
    ok, seconds, blas = out.stdout.split(" ", 2)
    assert ok == "True" and float(seconds) < 10 and blas.startswith("scipy-openblas32")
