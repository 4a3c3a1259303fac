"""docs/onnx-ops.md lists exactly the ops the MLX executor registers."""

from __future__ import annotations

import re
from pathlib import Path

from edgelstm.converters.onnx_exec.runner import supported_ops

DOC = Path(__file__).resolve().parents[1] / "docs" / "onnx-ops.md"


def test_generated_op_table_matches_the_registry():
    rows = re.findall(r"^\| ([A-Z][A-Za-z0-9]*) \| \d+ \| \d+ \|$", DOC.read_text(), flags=re.M)
    default_domain = sorted(op for op in supported_ops() if "." not in op and ":" not in op)
    assert sorted(rows) == default_domain
    assert f"{len(default_domain)} default-domain ops" in DOC.read_text()
