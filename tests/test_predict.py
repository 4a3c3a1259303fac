"""``edgelstm predict`` and ``predict_files``: files, folders, stdin lists, errors, workers."""

from __future__ import annotations

import csv
import json
import os
import pickle
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgelstm.cli import cli
from edgelstm.runtime.predict import expand_inputs, predict_file, predict_files

ROOT = Path(__file__).resolve().parents[1] / "examples"
FSDD, BM = ROOT / "fsdd", ROOT / "basicmotions"


def test_folder_of_wavs_gives_the_spoken_digits():
    recs = list(predict_files(FSDD / "model", expand_inputs([str(FSDD / "samples")])))
    assert len(recs) == 3
    for r in recs:
        assert r["label"] == Path(r["file"]).name[0] and 0 < r["score"] <= 1
        assert len(r["top_k"]) == 3 and r["top_k"][0] == [r["label"], r["score"]]
        assert r["duration_s"] > 0 and r["latency_ms"] > 0


def test_csv_and_npy_agree_and_errors_do_not_stop(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"garbage")
    files = [str(BM / "samples/badminton_test30.csv"), str(BM / "samples/badminton_test30.npy"),
             str(tmp_path / "bad.npy"), str(tmp_path / "missing.csv")]
    a, b, bad, missing = predict_files(BM / "model", files)
    assert a["label"] == b["label"] == "Badminton" and a["score"] == pytest.approx(b["score"])
    assert "error" in bad and "label" not in bad and "error" in missing
    pickle.dumps(predict_file)  # the per-file work stays picklable (for other executors)


def test_workers_give_the_same_records_in_order():
    files = expand_inputs([str(FSDD / "samples")]) * 2
    one = [{k: v for k, v in r.items() if k != "latency_ms"}
           for r in predict_files(FSDD / "model", files)]
    two = [{k: v for k, v in r.items() if k != "latency_ms"}
           for r in predict_files(FSDD / "model", files, workers=2)]
    assert one == two


def test_cli_stdin_list_to_csv_and_jsonl(tmp_path):
    listing = "\n".join([str(FSDD / "samples/5_theo_1.wav"), "", str(tmp_path / "x.wav")])
    out = tmp_path / "p.csv"
    r = CliRunner().invoke(cli, ["predict", str(FSDD / "model"), "-", "-o", str(out)],
                           input=listing)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert [row["label"] for row in rows] == ["5", ""] and rows[1]["error"]
    assert oct(os.stat(out).st_mode & 0o777) != "0o600"
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(cli, ["predict", str(FSDD / "model"), str(FSDD / "samples"),
                                 "-o", str(out)])
    assert r.exit_code == 0 and "3 files, 0 failed" in r.output
    assert len([json.loads(line) for line in out.read_text().splitlines()]) == 3
    r = CliRunner().invoke(cli, ["predict", str(FSDD / "model"), "a.wav", "-o", "p.txt"])
    assert r.exit_code == 2 and "must end in .jsonl, .csv or .parquet" in r.output
