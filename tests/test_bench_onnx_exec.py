"""benchmarks/bench_onnx_exec.py runs (no timing asserted): its graph is valid and the peers agree."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import edgelstm  # noqa: F401  (loads BLAS before mlx)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_onnx_exec.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_onnx_exec", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("conv", [True, False])
def test_streaming_step_bench_runs_and_its_peers_agree(bench, conv):
    res = bench.run(chunk=3, rounds=3, warmup=2, conv=conv)
    for peer in ("mlx", "ort-1", "ort-default"):
        assert res[peer]["p90_us"] >= res[peer]["p50_us"] > 0
    assert set(res["ratios"]) == {"mlx/ort-1", "mlx/ort-default"}
    assert res["config"]["conv"] is conv


def test_bench_graph_matches_ort_over_a_stream(bench):
    """The executor carries the benchmark graph's state like ONNX Runtime does."""
    import onnxruntime as ort

    from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner

    model = bench.build_model()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runner = OnnxMLXRunner(model)
    x = np.random.default_rng(0).standard_normal((1, 12, 40)).astype(np.float32)
    z = np.zeros((1, 1, 64), np.float32)
    (hm, cm), (ho, co) = (z, z), (z, z)
    for i in range(0, 12, 4):
        out = runner.run({"x": x[:, i:i + 4], "h": hm, "c": cm})
        y, ho, co = sess.run(["y", "hn", "cn"], {"x": x[:, i:i + 4], "h": ho, "c": co})
        hm, cm = out["hn"], out["cn"]
        np.testing.assert_allclose(out["y"], y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(hm, ho, rtol=1e-4, atol=1e-5)
