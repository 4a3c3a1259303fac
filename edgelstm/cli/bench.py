"""``edgelstm bench``: latency and throughput per backend."""

from __future__ import annotations

import json

import click

from edgelstm.cli._common import force_option, handle_errors, log
from edgelstm.limits import MAX_BATCH, MAX_SEQ_LEN


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--backend", "backends", multiple=True,
              type=click.Choice(["mlx", "mlx-pure", "onnxruntime"]),
              help="Repeat to compare; default: mlx and onnxruntime.")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(1, MAX_BATCH),
              default=(1,),
              show_default=True, help="Batch size; repeat for several.")
@click.option("--seq-len", "seq_lens", multiple=True, type=click.IntRange(1, MAX_SEQ_LEN),
              default=(100,), show_default=True, help="Sequence length; repeat for several.")
@click.option("--runs", type=click.IntRange(min=3), default=20, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime intra-op threads.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Also write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False),
              help="Also write an SVG bar chart.")
@force_option
@handle_errors
def bench(model, backends, batches, seq_lens, runs, warmup, threads, json_path, plot_path,
          force):
    """Time MODEL on each backend, batch size and sequence length.

    All backends run in one process on the same weights, so the ratios in
    the last column compare like with like.

    \b
        $ edgelstm bench examples/basicmotions/model --batch 1 --batch 32
        $ edgelstm bench model.onnx --backend onnxruntime --backend mlx --json b.json
    """
    from edgelstm.fast import blas as _blas
    from edgelstm.fast import dispatch as kernels
    from edgelstm.io.fileio import atomic_output, check_output_path, check_writable
    from edgelstm.runtime.bench import format_table, run_bench, write_svg

    if plot_path and not plot_path.endswith(".svg"):
        raise click.BadParameter("must end in .svg", param_hint="--plot")
    for path in (json_path, plot_path):
        if path:
            check_output_path(path, [model])
            check_writable(path, force)
    if json_path and plot_path:
        check_output_path(json_path, [plot_path])
    log(f"blas: {_blas.MLX_BLAS}; kernels: {kernels.reason()}")
    results = run_bench(model, backends or ("mlx", "onnxruntime"), batches, seq_lens,
                        warmup=warmup, runs=runs, threads=threads)
    click.echo(format_table(results))
    if json_path:
        with atomic_output(json_path, force=force) as tmp:
            tmp.write_text(json.dumps({"blas": _blas.MLX_BLAS, "kernels": kernels.reason(),
                                       "results": [r.as_dict() for r in results]}, indent=2))
        log(f"wrote {json_path}")
    if plot_path:
        with atomic_output(plot_path, force=force) as tmp:
            write_svg(results, tmp)
        log(f"wrote {plot_path}")
