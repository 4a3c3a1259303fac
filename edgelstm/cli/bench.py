"""``edgelstm bench``: latency and throughput per backend, batch and streaming."""

from __future__ import annotations

import json
import sys

import click

from edgelstm.cli._common import force_option, handle_errors, log
from edgelstm.limits import MAX_BATCH, MAX_CHUNK_FRAMES, MAX_SEQ_LEN
from edgelstm.runtime.bench_forms import BACKENDS


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--backend", "backends", multiple=True, type=click.Choice(BACKENDS),
              help="Repeat to compare; default: mlx and onnxruntime.")
@click.option("--mode", "modes", multiple=True, type=click.Choice(["batch", "stream"]),
              help="batch: whole sequences per call; stream: --chunk frames per call at "
                   "batch 1, state carried. Repeat for both. Default: batch, plus stream "
                   "when --chunk is given.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(1, MAX_BATCH),
              help="Batch size (batch mode); repeat for several.  [default: 1]")
@click.option("--seq-len", "seq_lens", multiple=True, type=click.IntRange(1, MAX_SEQ_LEN),
              help="Sequence length (batch mode); repeat for several.  [default: 100]")
@click.option("--chunk", "chunks", multiple=True, type=click.IntRange(1, MAX_CHUNK_FRAMES),
              help="Frames per call (stream mode); repeat for several.  [default: 10]")
@click.option("--frame-ms", type=click.FloatRange(0, min_open=True), default=None,
              help="Duration of one frame for the real-time factor (default: the model's "
                   "front end, else 10 ms).")
@click.option("--runs", type=click.IntRange(min=3), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads of ONNX Runtime, PyTorch and the fused kernels' step.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole report as one JSON document on stdout (table to stderr).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also draw charts to FILE.png or FILE.svg (needs edgelstm[plot]).")
@force_option
@handle_errors
def bench(model, backends, modes, batches, seq_lens, chunks, frame_ms, runs, warmup, threads,
          as_json, plot_path, force):
    """Time MODEL on each backend, in batch and/or streaming mode.

    Every backend runs in one process on the same weights (int8, mlx.nn and
    PyTorch forms are made on the fly), so the "vs best" column compares like
    with like. A backend that cannot run here is skipped with its reason.

    \b
        $ edgelstm bench examples/basicmotions/model --batch 1 --batch 32
        $ edgelstm bench examples/fsdd/model --mode stream --chunk 10 --backend mlx \\
              --backend onnxruntime --backend onnxruntime-int8 --plot stream.png
        $ edgelstm bench model.onnx --backend onnxruntime --backend mlx --json > b.json
    """
    from edgelstm.io.fileio import atomic_output, check_output_path, check_writable
    from edgelstm.runtime.bench import format_table, plan, run_bench

    if plot_path:
        from edgelstm.runtime.bench_plot import check_plot_path

        try:
            check_plot_path(plot_path)
        except Exception as exc:
            raise click.BadParameter(str(exc).replace("--plot ", ""),
                                     param_hint="--plot") from None
        check_output_path(plot_path, [model])
        check_writable(plot_path, force)
    modes = modes or (("batch", "stream") if chunks and (batches or seq_lens) else
                      ("stream",) if chunks else ("batch",))
    backends = tuple(dict.fromkeys(backends or ("mlx", "onnxruntime")))
    batches, seq_lens, chunks = batches or (1,), seq_lens or (100,), chunks or (10,)
    total = len(plan(backends, modes, batches, seq_lens, chunks))
    with click.progressbar(length=total, label="bench", file=sys.stderr,
                           item_show_func=lambda s: s) as bar:
        report = run_bench(model, backends, batches, seq_lens, warmup=warmup, runs=runs,
                           threads=threads, modes=modes, chunks=chunks, frame_ms=frame_ms,
                           progress=lambda label: bar.update(1, label))
    m = report.machine
    log(f"{m['cpu_model']}, {m['cpu_count']} cores; blas: {m['mlx_blas']}; "
        f"kernels: {m['kernels']}")
    click.echo(format_table(report), err=as_json)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    if plot_path:
        from edgelstm.runtime.bench_plot import write_plot

        with atomic_output(plot_path, force=force) as tmp:
            write_plot(report, tmp, fmt=plot_path.rsplit(".", 1)[-1].lower())
        log(f"wrote {plot_path}")
