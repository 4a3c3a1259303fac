"""The README's third-party streaming model section runs as written, and prints what it says."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SECTION = (ROOT / "README.md").read_text().split("### A third-party streaming model")[1]
SECTION = SECTION.split("\n## ")[0]
COMMANDS = re.findall(r"```sh\n(.*?)```", SECTION, re.S)[0].strip().splitlines()
AFTER = SECTION.split("```sh\n", 1)[1].split("\n```\n", 1)[1]  # past the commands
PRINTED = re.findall(r"```\n(.*?)```", AFTER, re.S)[0].strip().splitlines()


def test_section_runs_run_quantize_and_stream():
    assert [shlex.split(c)[1] for c in COMMANDS] == ["run", "quantize", "stream"]


def test_readme_vad_commands_run_as_written(tmp_path):
    for name in ("tests", "examples"):
        os.symlink(ROOT / name, tmp_path / name)
    outputs = []
    for line in COMMANDS:
        argv = shlex.split(line)
        assert argv[0] == "edgelstm"
        r = subprocess.run([sys.executable, "-m", "edgelstm", *argv[1:]], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{line}\n{r.stderr[-2000:]}"
        outputs.append(r.stdout)
    ref = np.load(ROOT / "tests" / "fixtures" / "vad" / "vad_stream.npz")
    got = np.load(tmp_path / "vad.npz")
    np.testing.assert_allclose(got["output"], ref["out8"], atol=2e-5)
    assert "40.4 KB -> 17.3 KB" in outputs[1]  # the sizes the README quotes
    assert outputs[2].strip().splitlines() == PRINTED
