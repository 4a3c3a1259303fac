"""``edgelstm predict``: one record per input file (WAV, CSV, .npy), to JSONL, CSV or Parquet."""

from __future__ import annotations

import sys
import time

import click

from edgelstm.cli._common import backend_option, force_option, handle_errors, log


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("inputs", nargs=-1, required=True)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="OUT.jsonl, OUT.csv or OUT.parquet (needs pyarrow).")
@click.option("--top-k", type=click.IntRange(1), default=3, show_default=True)
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Local processes, or Ray actors with --ray (one model load each).")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="local",
              metavar="local|ADDRESS",
              help="Run on Ray: local starts a Ray instance for the run, ADDRESS joins a "
              "cluster (pip install 'edgelstm[ray]').")
@click.option("--resume", is_flag=True,
              help="Keep the records already in OUT (and its .partial.jsonl journal) and "
              "only classify the other files (failed ones again).")
@backend_option
@force_option
@handle_errors
def predict(model, inputs, output, top_k, workers, ray_address, resume, backend, force):
    """Classify every file in INPUTS: files, folders (recursively) or - (paths on stdin).

    A file that fails gets a record with an error field; the run goes on.
    Records stream to OUT.partial.jsonl as they arrive; OUT is written, in
    input order, when the run ends (a stopped run resumes with --resume).

    \b
        $ edgelstm predict examples/fsdd/model examples/fsdd/samples -o preds.jsonl
        $ find data -name '*.wav' | edgelstm predict model - -o preds.csv --workers 2
        $ edgelstm predict model archive/ -o preds.parquet --ray local --workers 4
        $ edgelstm predict model /shared/archive -o preds.jsonl --ray 10.0.0.5:6379 --resume
    """
    from edgelstm.io.fileio import atomic_output, check_output_path, check_writable
    from edgelstm.runtime.predict import expand_inputs, predict_files
    from edgelstm.runtime.predict_output import (
        Journal,
        done_files,
        output_kind,
        read_records,
        write_records,
    )

    if output.rsplit(".", 1)[-1].lower() not in ("jsonl", "csv", "parquet"):
        raise click.BadParameter("must end in .jsonl, .csv or .parquet", param_hint="--output")
    kind = output_kind(output)  # .parquet without pyarrow: says how to install it
    if ray_address is not None:
        from edgelstm.runtime.predict_ray import require_ray

        require_ray()
    files = expand_inputs(inputs)
    if not files:
        raise click.UsageError("no input files found")
    check_output_path(output, [model, *files])
    old = read_records(output) if resume else []
    if not resume:
        check_writable(output, force)
    done = done_files(old)
    todo = [f for f in files if f not in done]
    if done:
        log(f"resuming: {len(files) - len(todo)} of {len(files)} files already in {output}")
    new: dict[int, dict] = {}
    t0 = time.perf_counter()
    with Journal(output, append=resume) as journal:
        if ray_address is not None:
            from edgelstm.runtime.predict_ray import predict_files_ray

            stream = predict_files_ray(model, todo, address=ray_address, workers=workers,
                                       top_k=top_k, backend=backend)
        else:
            stream = enumerate(predict_files(model, todo, top_k=top_k, workers=workers,
                                             backend=backend))
        with click.progressbar(stream, length=len(todo), label="predict",
                               file=sys.stderr) as bar:
            for k, rec in bar:
                journal.add(rec)
                new[k] = rec
    seconds = time.perf_counter() - t0
    # input order; a file given twice keeps one record; old records of files not redone stay
    fresh = {rec["file"] for rec in new.values()}
    kept = {r["file"]: r for r in old if r.get("file") in done and r["file"] not in fresh}
    records = list(kept.values())
    records += [new[k] for k in sorted(new)]
    with atomic_output(output, force=force or resume) as tmp:
        write_records(tmp, records, kind)
    journal.remove()
    failed = sum("error" in r for r in records)
    rate = f", {len(todo) / seconds:.1f} files/s" if todo and seconds > 0 else ""
    log(f"wrote {output}: {len(records)} files, {failed} failed{rate}")
