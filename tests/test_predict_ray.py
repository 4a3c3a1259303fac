"""``predict --ray local``: Ray actors give plain predict's records; failures, resume, Parquet."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelstm.cli import cli
from edgelstm.runtime.predict import expand_inputs, predict_files

FSDD = Path(__file__).resolve().parents[1] / "examples" / "fsdd"


def _strip(recs):
    return [{k: v for k, v in r.items() if k != "latency_ms"} for r in recs]


def test_without_ray_the_error_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    r = CliRunner().invoke(cli, ["predict", str(FSDD / "model"), str(FSDD / "samples"),
                                 "-o", str(tmp_path / "p.jsonl"), "--ray", "local"])
    assert r.exit_code == 1 and "pip install 'edgelstm[ray]'" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "p.jsonl").exists()


def test_ray_local_matches_plain_predict_reports_failures_and_resumes(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgelstm[ray]')")
    from edgelstm.runtime.predict_ray import predict_files_ray

    (tmp_path / "bad.wav").write_bytes(b"not a wav")
    files = expand_inputs([str(FSDD / "samples")]) + [str(tmp_path / "bad.wav")]
    plain = _strip(predict_files(FSDD / "model", files))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        got = dict(predict_files_ray(FSDD / "model", files, workers=2, chunk=1))
        assert _strip(got[k] for k in range(len(files))) == plain
        assert "error" in got[len(files) - 1]
        # resume: a journal from a stopped run holds the first file; only the rest run
        out = tmp_path / "p.jsonl"
        (tmp_path / "p.jsonl.partial.jsonl").write_text(json.dumps(got[0]) + "\n")
        r = CliRunner().invoke(cli, ["predict", str(FSDD / "model"), *files, "-o", str(out),
                                     "--ray", "local", "--workers", "2", "--resume"])
        assert r.exit_code == 0, r.output
        assert "resuming: 1 of 4" in r.output and "4 files, 1 failed" in r.output
        recs = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["file"] for r in recs) == sorted(files)
        assert not (tmp_path / "p.jsonl.partial.jsonl").exists()
    finally:
        ray.shutdown()


def test_parquet_output_round_trips_for_resume(tmp_path):
    pytest.importorskip("pyarrow", reason="pyarrow is not installed")
    from edgelstm.runtime.predict_output import read_records

    out = tmp_path / "p.parquet"
    args = ["predict", str(FSDD / "model"), str(FSDD / "samples"), "-o", str(out)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    recs = read_records(out)
    assert _strip(recs) == _strip(predict_files(FSDD / "model",
                                                expand_inputs([str(FSDD / "samples")])))
    r = CliRunner().invoke(cli, [*args, "--resume"])
    assert r.exit_code == 0 and "resuming: 3 of 3" in r.output
