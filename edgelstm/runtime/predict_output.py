"""Where ``edgelstm predict`` records go: a streamed journal, resume, JSONL/CSV/Parquet.

Records are appended to a journal beside the output (``OUT.partial.jsonl``,
one JSON line per file, flushed as each arrives), so a run that is stopped
keeps what it finished. When the run ends the whole set (in input order) is
written to ``OUT`` atomically and the journal removed: ``OUT`` itself is never
half-written. A resumed run reads ``OUT`` and the journal and skips every
file that already has a successful record.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

from edgelstm.errors import ConfigError, DataError

FIELDS = ["file", "label", "score", "top_k", "duration_s", "frames", "latency_ms", "error"]
KINDS = ("jsonl", "csv", "parquet")


def output_kind(path: str | os.PathLike) -> str:
    """``"jsonl"``, ``"csv"`` or ``"parquet"`` from the suffix (Parquet needs pyarrow)."""
    kind = str(path).rsplit(".", 1)[-1].lower()
    if kind not in KINDS:
        raise ConfigError(f"--output must end in .jsonl, .csv or .parquet, got {path}")
    if kind == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ConfigError("Parquet output needs pyarrow: pip install pyarrow "
                              "(or write .jsonl / .csv)") from None
    return kind


def journal_path(output: str | os.PathLike) -> Path:
    """The streamed journal beside ``output``."""
    out = Path(output)
    return out.with_name(out.name + ".partial.jsonl")


def read_records(output: str | os.PathLike) -> list[dict]:
    """Records already in ``output`` (any kind) and its journal; ``[]`` when neither exists."""
    out = Path(output)
    recs: list[dict] = []
    if out.exists():
        kind = output_kind(out)
        try:
            if kind == "jsonl":
                recs += _jsonl_lines(out.read_text())
            elif kind == "csv":
                with open(out, newline="") as f:
                    recs += [_from_csv_row(r) for r in csv.DictReader(f)]
            else:
                import pyarrow.parquet as pq

                for r in pq.read_table(out).to_pylist():
                    if r.get("top_k") is not None:
                        r["top_k"] = [[p["label"], p["score"]] for p in r["top_k"]]
                    recs.append(r)
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"cannot resume from {out}: {exc}") from None
    j = journal_path(out)
    if j.exists():
        recs += _jsonl_lines(j.read_text(), tolerant=True)
    return [{k: v for k, v in r.items() if v is not None and v != ""} for r in recs]


def done_files(records: Iterable[dict]) -> set[str]:
    """Files with a successful record (failed ones are tried again)."""
    return {r["file"] for r in records if "file" in r and not r.get("error")}


class Journal:
    """Append-and-flush JSONL journal; ``with Journal(out) as j: j.add(rec)``."""

    def __init__(self, output: str | os.PathLike, append: bool):
        self.path = journal_path(output)
        self._f = open(self.path, "a" if append else "w")

    def add(self, rec: dict) -> None:
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def remove(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_records(tmp: Path, records: list[dict], kind: str) -> None:
    """Write ``records`` to ``tmp`` as ``kind`` (the caller renames it into place)."""
    if kind == "jsonl":
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif kind == "csv":
        tmp.write_text(_csv(records))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {f: [r.get(f) for r in records] for f in FIELDS}
        cols["top_k"] = [None if v is None else [{"label": str(a), "score": float(b)}
                                                 for a, b in v] for v in cols["top_k"]]
        pair = pa.struct([("label", pa.string()), ("score", pa.float64())])
        schema = pa.schema([("file", pa.string()), ("label", pa.string()),
                            ("score", pa.float64()), ("top_k", pa.list_(pair)),
                            ("duration_s", pa.float64()), ("frames", pa.int64()),
                            ("latency_ms", pa.float64()), ("error", pa.string())])
        pq.write_table(pa.table(cols, schema=schema), tmp)


def _jsonl_lines(text: str, tolerant: bool = False) -> list[dict]:
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if not tolerant:  # a journal's last line may be cut by the stop itself
                raise
    return out


def _from_csv_row(row: dict) -> dict:
    rec = dict(row)
    if rec.get("top_k"):
        pairs = [p.rsplit(":", 1) for p in rec["top_k"].split(";")]
        rec["top_k"] = [[a, float(b)] for a, b in pairs]
    for k, cast in (("score", float), ("duration_s", float), ("frames", int),
                    ("latency_ms", float)):
        if rec.get(k):
            rec[k] = cast(rec[k])
    return rec


def _csv(records) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, FIELDS, extrasaction="ignore")
    w.writeheader()
    for r in records:
        row = dict(r)
        if "top_k" in row:
            row["top_k"] = ";".join(f"{k}:{v}" for k, v in row["top_k"])
        w.writerow(row)
    return buf.getvalue()
