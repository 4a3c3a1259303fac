"""``edgelstm run``: offline inference."""

from __future__ import annotations

import click
import numpy as np

from edgelstm.cli._common import backend_option, force_option, handle_errors, log


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.option("--input", "-i", "input_path", required=True,
              type=click.Path(exists=True, dir_okay=False),
              help=".npy feeds the model's first input; .npz feeds inputs by name.")
@click.option("--output", "-o", "output_path", required=True, type=click.Path(dir_okay=False),
              help="OUT.npz: every output by name.")
@backend_option
@force_option
@handle_errors
def run(model, input_path, output_path, backend, force):
    """Run MODEL on IN.npy/IN.npz and write every output to OUT.npz.

    \b
        $ edgelstm run model.onnx --input x.npy --output y.npz --backend mlx
    """
    from edgelstm.io.checkpoint import detect_format
    from edgelstm.io.fileio import atomic_output, check_output_path, check_writable
    from edgelstm.runtime.inference import read_inputs, run_model

    if not output_path.endswith(".npz"):
        raise click.BadParameter("must end in .npz", param_hint="--output")
    check_output_path(output_path, [model, input_path])
    check_writable(output_path, force)
    if detect_format(model) == "onnx":
        from edgelstm.converters import onnx_io_names

        names = onnx_io_names(model)[0]
    else:
        from edgelstm.io.checkpoint import read_config

        names = read_config(model).get("input_names") or ["input"]
    feeds = read_inputs(input_path, names)
    outputs = run_model(model, feeds, backend=backend)
    with atomic_output(output_path, force=force) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **outputs)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    log(f"wrote {output_path}: {shapes}")
