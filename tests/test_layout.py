"""The package's import rules (CONTRIBUTING.md): arrows go down, nn never reaches io."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from edgelstm.fast import dispatch
from edgelstm.nn import activations as A

ROOT = Path(__file__).resolve().parents[1]

# folder -> edgelstm modules its code may import (prefixes)
ALLOWED = {
    "edgelstm/fast": ("edgelstm.errors", "edgelstm.fast"),
    "edgelstm/nn": ("edgelstm.errors", "edgelstm.limits", "edgelstm.fast", "edgelstm.nn"),
    "edgelstm/frontend": ("edgelstm.errors", "edgelstm.limits", "edgelstm.frontend"),
    "edgelstm/io": ("edgelstm.errors", "edgelstm.limits", "edgelstm.fast", "edgelstm.nn",
                    "edgelstm.io"),
    # converters and quantize sit beside each other above io (export writes QDQ)
    "converters": ("edgelstm.errors", "edgelstm.limits", "edgelstm.fast", "edgelstm.nn",
                   "edgelstm.io", "edgelstm.frontend", "edgelstm.converters",
                   "edgelstm.quantize"),
    "quantize": ("edgelstm.errors", "edgelstm.limits", "edgelstm.fast", "edgelstm.nn",
                 "edgelstm.io", "edgelstm.frontend", "edgelstm.converters",
                 "edgelstm.quantize"),
}
# Imports deferred into a function on purpose (optional layers reached at call time).
DEFERRED_OK = {
    ("edgelstm/nn/layers.py", "edgelstm.quantize.mlx_quant"),  # MLX's to_quantized protocol
    ("edgelstm/io/checkpoint.py", "edgelstm.quantize"),  # loading an int8 checkpoint
    ("edgelstm/io/checkpoint.py", "edgelstm.quantize.mlx_quant"),
    ("edgelstm/io/checkpoint.py", "edgelstm.converters"),  # load() of ONNX/PyTorch/Keras files
    # verifying a conversion runs the model the way `edgelstm run` does
    ("converters/__init__.py", "edgelstm.runtime.inference"),
    ("converters/conversion.py", "edgelstm.runtime.inference"),
    # quantize --eval DATA reads a dataset and scores it; its report describes the model
    ("quantize/report.py", "edgelstm.training.data"),
    ("quantize/report.py", "edgelstm.training.train"),
    ("quantize/api.py", "edgelstm.runtime.info"),
}
NOBODY_BELOW_CLI = ("edgelstm/streaming", "edgelstm/training", "edgelstm/runtime",
                    "converters", "quantize")


def _imports(path: Path):
    """(module, deferred) for every edgelstm import in ``path``."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "edgelstm":  # from edgelstm import converters
                names = [f"edgelstm.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            if name.startswith("edgelstm"):
                yield name, node.col_offset > 0


def _files(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_lower_floors_import_only_below_them(folder):
    bad = []
    for path in _files(folder):
        rel = str(path.relative_to(ROOT))
        for name, deferred in _imports(path):
            ok = name.startswith(ALLOWED[folder]) or name in (
                "edgelstm", "edgelstm._version", "edgelstm.__version__")
            if not ok and not (deferred and (rel, name) in DEFERRED_OK):
                bad.append(f"{rel}: {name}{' (deferred)' if deferred else ''}")
    assert bad == []


@pytest.mark.parametrize("folder", NOBODY_BELOW_CLI)
def test_only_the_cli_imports_the_cli(folder):
    bad = [f"{p.relative_to(ROOT)}: {n}" for p in _files(folder) for n, _ in _imports(p)
           if n.startswith("edgelstm.cli")]
    assert bad == []


def test_fast_activation_constants_match_nn():
    """fast keeps its own copies of the default activation specs; they must not drift."""
    assert dispatch._SIGMOID == A.spec("sigmoid") and dispatch._TANH == A.spec("tanh")
    assert dispatch._RELU == A.spec("relu")


@pytest.mark.skipif(os.environ.get("EDGELSTM_EXPECT_INSTALLED") != "1",
                    reason="only under `make test`, which installs with pip install .")
def test_suite_runs_against_the_pip_installed_package():
    """make test must exercise what `pip install .` built, not the source tree."""
    import edgelstm

    where = Path(edgelstm.__file__).resolve().parent
    assert "site-packages" in where.parts, where
    assert (where / "converters" / "onnx_exec" / "runner.py").is_file()
    assert list((where / "fast").glob("_kernels*")), "the fused kernels were not built in"
