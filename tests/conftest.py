"""Shared test fixtures, and the header line saying which edgelstm install is under test."""

from __future__ import annotations

from pathlib import Path

import edgelstm  # first: applies EDGELSTM_BLAS before mlx.core is imported

# isort: split
import mlx.core as mx
import numpy as np
import pytest

from edgelstm.fast import dispatch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason="../shared/data is not present on this machine"
)


@pytest.fixture(autouse=True)
def _seed():
    mx.random.seed(0)
    np.random.seed(0)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_report_header(config):
    return [f"edgelstm {edgelstm.__version__} from {Path(edgelstm.__file__).parent}",
            f"kernels: {dispatch.reason()}"]


def pytest_terminal_summary(terminalreporter):
    """Report how many bad inputs the hostile/fuzz tests fed (tests/hostile.py)."""
    import sys

    hostile = sys.modules.get("hostile")
    if hostile is not None and hostile.TRIED:
        total = sum(hostile.TRIED.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(hostile.TRIED.items()))
        terminalreporter.write_line(f"hostile inputs tried: {total} ({parts})")
