"""Shared pieces of the hostile-input tests: tiny models, hashing, the one-line-error check.

``TRIED`` counts every bad input the hostile/fuzz tests feed (hypothesis
examples included); ``conftest.py`` prints the total at the end of a run.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import mlx.core as mx
import numpy as np
from click.testing import CliRunner

TRIED: Counter = Counter()


def tried(area: str, n: int = 1) -> None:
    """Count ``n`` bad inputs fed in ``area``."""
    TRIED[area] += n


def invoke(*args, input=None, env=None):
    """Run the CLI in-process; exceptions are kept on the result, never raised."""
    from edgelstm.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env)


def assert_clean_failure(result, codes=(1, 2)) -> str:
    """A failure must be one ``Error:`` line (or click usage text), no traceback."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}\n{result.output}")
    assert result.exit_code in codes, (result.exit_code, result.output)
    if result.exit_code == 1:
        errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
        assert len(errors) == 1, result.output
        assert "Traceback" not in result.output
        return errors[0]
    return result.output


def assert_calm(result) -> None:
    """Success or a clean failure: exit 0, 1 or 2, never a traceback."""
    if result.exit_code != 0:
        assert_clean_failure(result)
    else:
        assert result.exception is None


def digest(*paths) -> dict[str, str]:
    """sha256 of every file under ``paths`` (files or folders), by path."""
    out = {}
    for p in paths:
        p = Path(p)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def listing(folder) -> set[str]:
    """Every name under ``folder`` (leftover temporary outputs show up here)."""
    return {str(p.relative_to(folder)) for p in Path(folder).rglob("*")}


def tiny_model(tmp: Path, name: str = "model", input_size: int = 3, hidden: int = 4,
               labels=("a", "b"), features=None) -> str:
    """A small trained-shape LSTM classifier checkpoint; returns its path."""
    import edgelstm

    mx.random.seed(0)
    m = edgelstm.SequenceModel(edgelstm.LSTM(input_size, hidden), head="sequence",
                               labels=list(labels), normalize=True, features=features)
    m.eval()
    return str(m.save(tmp / name))


def tiny_onnx(tmp: Path, name: str = "model.onnx", streaming: bool = False) -> str:
    """The :func:`tiny_model` exported to ONNX (``streaming``: with h0/c0 state I/O)."""
    from edgelstm.converters import to_onnx
    from edgelstm.io.checkpoint import load

    ckpt = tiny_model(tmp, name=f"_{name}.ckpt")
    return str(to_onnx(load(ckpt), tmp / name, streaming=streaming))


def tiny_data(path: Path, n: int = 12, t: int = 5, i: int = 3, classes: int = 2) -> str:
    """An ``.npz`` dataset ``x (n, t, i)``, ``y (n,)``."""
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.standard_normal((n, t, i)).astype(np.float32),
             y=np.arange(n) % classes)
    return str(path)


def no_temp_leftovers(folder) -> bool:
    """No ``.<name>.*.tmp`` or ``.old`` files left by an atomic output."""
    return not [n for n in os.listdir(folder) if n.endswith((".tmp", ".old")) or ".tmp" in n]


def run_limited(*args, input: bytes | None = None, gib: float = 4, timeout: float = 60):
    """``python -m edgelstm ARGS`` in a subprocess under ``RLIMIT_AS`` (bounded memory).

    Returns ``(CompletedProcess, seconds)``; output is bytes.
    """
    import resource
    import subprocess
    import sys
    import time

    limit = int(gib * 2**30)

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, EDGELSTM_KERNELS="0")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgelstm", *map(str, args)], input=input,
                          capture_output=True, timeout=timeout, preexec_fn=cap, env=env)
    return proc, time.perf_counter() - t0
