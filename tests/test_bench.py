"""The benchmark harness: structure of results, JSON and SVG outputs, errors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

import edgelstm
from edgelstm.cli import cli
from edgelstm.errors import EdgeLSTMError
from edgelstm.runtime.bench import format_table, run_bench, write_svg


@pytest.fixture
def model_dir(tmp_path):
    model = edgelstm.SequenceModel(edgelstm.LSTM(3, 8), head="frame", num_outputs=2)
    return str(model.save(tmp_path / "model"))


def test_run_bench_cases(model_dir, tmp_path):
    results = run_bench(model_dir, ("mlx", "mlx-pure"), (1, 2), (5,), warmup=1, runs=3)
    assert [(r.backend, r.batch, r.seq_len) for r in results] == [
        ("mlx", 1, 5), ("mlx-pure", 1, 5), ("mlx", 2, 5), ("mlx-pure", 2, 5)]
    for r in results:
        assert r.runs == 3 and 0 < r.min_ms <= r.median_ms <= r.p90_ms
        assert r.frames_per_s == pytest.approx(r.batch * r.seq_len / (r.median_ms / 1e3), rel=1e-3)
    table = format_table(results).splitlines()
    assert len(table) == 2 + len(results) and " 1.00x" in table[2] + table[3]
    write_svg(results, tmp_path / "b.svg")
    root = ET.parse(tmp_path / "b.svg").getroot()
    assert len([e for e in root.iter() if e.tag.endswith("rect")]) == len(results) + 2


def test_onnxruntime_backend_exports_on_the_fly(model_dir):
    pytest.importorskip("onnxruntime")
    results = run_bench(model_dir, ("onnxruntime",), (1,), (4,), warmup=1, runs=3)
    assert results[0].backend == "onnxruntime" and results[0].median_ms > 0


def test_unknown_backend(model_dir):
    with pytest.raises(EdgeLSTMError, match="unknown backend 'tpu'"):
        run_bench(model_dir, ("tpu",))


def test_cli_json_and_errors(model_dir, tmp_path):
    out = tmp_path / "b.json"
    r = CliRunner().invoke(cli, ["bench", model_dir, "--backend", "mlx", "--seq-len", "4",
                                 "--runs", "3", "--json", str(out)])
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["results"][0]["seq_len"] == 4 and "blas" in data
    r = CliRunner().invoke(cli, ["bench", model_dir, "--backend", "mlx", "--json", str(out)])
    assert r.exit_code == 1 and "already exists; pass --force" in r.output
    r = CliRunner().invoke(cli, ["bench", model_dir, "--plot", str(tmp_path / "p.png")])
    assert r.exit_code == 2 and "Invalid value for --plot: must end in .svg" in r.output
