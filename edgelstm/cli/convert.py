"""``edgelstm convert``: between checkpoints, ONNX, PyTorch, Keras and mlx.nn weights."""

from __future__ import annotations

import click

from edgelstm.cli._common import force_option, handle_errors, log


@click.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--opset", type=click.IntRange(min=14), default=17, show_default=True,
              help="ONNX opset of an .onnx DST.")
@click.option("--streaming", is_flag=True,
              help="ONNX or TFLite with state inputs h0/c0 and outputs h_n/c_n (not "
                   "bidirectional).")
@click.option("--lengths", is_flag=True,
              help="ONNX with an int32 input lengths (B,), valid steps per sequence "
                   "(sequence_lens), for padded batches.")
@click.option("--verify", is_flag=True,
              help="Run SRC and DST on the same random input; fail above --atol.")
@click.option("--verify-on", default="onnxruntime", show_default=True, metavar="RUNTIMES",
              help="Comma-separated runtimes that run an .onnx DST for --verify: onnxruntime "
                   "(always), openvino (CPU plugin, float32; pip install 'edgelstm[openvino]').")
@click.option("--atol", type=click.FloatRange(min=0), default=1e-4, show_default=True,
              help="Tolerance of --verify (max abs difference).")
@click.option("--head", type=click.Choice(["sequence", "frame", "none"]), default=None,
              help="Weight files (PyTorch, mlx.nn): how the Linear head is applied "
                   "(default: sequence, on the final hidden state).")
@click.option("--nonlinearity", type=click.Choice(["tanh", "relu"]), default=None,
              help="Weight files: the RNN nonlinearity (not stored in the weights).")
@force_option
@handle_errors
def convert(src, dst, opset, streaming, lengths, verify, verify_on, atol, head, nonlinearity, force):
    """Convert SRC to DST: .onnx writes ONNX, .tflite LiteRT, .mlpackage a Core ML ML
    program (LSTM; runs on Apple platforms only, so no --verify), a name without suffix
    a checkpoint directory.

    Any other DST suffix (.pt, .keras, .mlmodel, ...) is refused.

    SRC is a checkpoint directory, .onnx, a PyTorch state dict
    (.pt/.pth/.safetensors), mlx.nn weights (.safetensors) or Keras (.keras/.h5).

    \b
        $ edgelstm convert model/ model.onnx --verify
        $ edgelstm convert model/ stream.onnx --streaming --opset 19
        $ edgelstm convert model/ padded.onnx --lengths --verify
        $ edgelstm convert model/ model.onnx --verify --verify-on onnxruntime,openvino
        $ edgelstm convert model/ model.tflite --verify
        $ edgelstm convert model/ stream.tflite --streaming --verify
        $ edgelstm convert model/ model.mlpackage
        $ edgelstm convert exported.onnx model/
        $ edgelstm convert lstm.pt model/ --head frame
    """
    from edgelstm.converters import convert as convert_model

    if streaming and not dst.lower().endswith((".onnx", ".tflite")):
        raise click.UsageError("--streaming needs an .onnx or .tflite DST")
    if lengths and not dst.lower().endswith(".onnx"):
        raise click.UsageError("--lengths needs an .onnx DST")
    options = {k: v for k, v in (("head", head), ("nonlinearity", nonlinearity)) if v}
    report = convert_model(src, dst, opset=opset, streaming=streaming, verify=verify,
                           force=force, atol=atol, lengths=lengths, verify_on=verify_on,
                           **options)
    log(f"wrote {dst} ({report['dst_format']}): {report['architecture']}")
    if verify:
        by = report["verified_by"]
        click.echo(f"max abs diff {report['max_abs_diff']:.3g} "
                   f"(tolerance {atol:g}; {', '.join(report['compared'])}; "
                   f"output run by {by['output']}, source by {by['source']})")
        for name, entry in report.get("runtimes", {}).items():
            if name != by["output"]:
                click.echo(f"  {name} {entry['version']} ({entry['device']}, "
                           f"{entry['precision']}): max abs diff {entry['max_abs_diff']:.3g}")
