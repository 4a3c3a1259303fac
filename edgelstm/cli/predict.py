"""``edgelstm predict``: one record per input file (WAV, CSV, .npy), to JSONL or CSV."""

from __future__ import annotations

import csv
import io
import json
import sys

import click

from edgelstm.cli._common import force_option, handle_errors, log

FIELDS = ["file", "label", "score", "top_k", "duration_s", "frames", "latency_ms", "error"]


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="OUT.jsonl or OUT.csv.")
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Local processes (one model load each).")
@force_option
@handle_errors
def predict(model, inputs, output, top_k, workers, force):
    """Classify every file in INPUTS: files, folders (recursively) or - (paths on stdin).

    A file that fails gets a record with an error field; the run goes on.

    \b
        $ edgelstm predict examples/fsdd/model examples/fsdd/samples -o preds.jsonl
        $ find data -name '*.wav' | edgelstm predict model - -o preds.csv --workers 2
    """
    from edgelstm.io.fileio import atomic_output, check_output_path, check_writable
    from edgelstm.runtime.predict import expand_inputs, predict_files

    kind = output.rsplit(".", 1)[-1].lower()
    if kind not in ("jsonl", "csv"):
        raise click.BadParameter("must end in .jsonl or .csv", param_hint="--output")
    files = expand_inputs(inputs)
    if not files:
        raise click.UsageError("no input files found")
    check_output_path(output, [model, *files])
    check_writable(output, force)
    records, failed = [], 0
    with click.progressbar(predict_files(model, files, top_k=top_k, workers=workers),
                           length=len(files), label="predict", file=sys.stderr) as bar:
        for rec in bar:
            failed += "error" in rec
            records.append(rec)
    with atomic_output(output, force=force) as tmp:
        tmp.write_text(_jsonl(records) if kind == "jsonl" else _csv(records))
    log(f"wrote {output}: {len(records)} files, {failed} failed")


def _jsonl(records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


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
