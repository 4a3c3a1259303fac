"""``edgelstm quantize``: int8 gate weights, with the error report printed."""

from __future__ import annotations

import json

import click

from edgelstm.cli._common import force_option, handle_errors


@click.command()
@click.argument("src", type=click.Path(exists=True))
@click.argument("dst", type=click.Path())
@click.option("--bits", type=click.Choice(["8", "4"]), default="8", show_default=True,
              help="8: symmetric per-channel int8. 4: experimental, MLX affine group-wise, "
                   "mlx format only.")
@click.option("--format", "fmt", type=click.Choice(["mlx", "onnx-qdq", "onnx-ort", "tflite"]),
              default=None,
              help="mlx: checkpoint directory. onnx-qdq (default for .onnx): portable int8 "
                   "initializers + DequantizeLinear, runs in any ONNX runtime. onnx-ort: "
                   "com.microsoft.DynamicQuantizeLSTM, ONNX Runtime only, LSTM only. tflite "
                   "(default for .tflite): LiteRT, int8 weights with per-channel "
                   "quantization parameters.")
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default=None,
              help="Group size for --bits 4 (default: largest that divides the widths).")
@click.option("--head/--no-head", default=False, show_default=True,
              help="Also quantize the linear head's weights.")
@click.option("--weights", "weight_set", type=click.Choice(["recurrent", "all"]),
              default="recurrent", show_default=True,
              help="recurrent: LSTM/GRU/RNN W and R only. all: also MatMul/Gemm weights "
                   "and (onnx-qdq) Conv/ConvTranspose kernels.")
@click.option("--const", "consts", multiple=True, metavar="NAME=VALUE",
              help="Value of an ONNX input for the comparison run, e.g. sr=16000 "
                   "(repeatable; needed for integer inputs).")
@click.option("--feeds", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="FEEDS.npz",
              help="Arrays by ONNX input name to compare on instead of generated ones "
                   "(e.g. real audio); the rest are generated to match.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=SIZE",
              help="Size of a symbolic ONNX dim in the comparison input, e.g. samples=512 "
                   "(repeatable; default: batch 4, time 50, others 64).")
@click.option("--eval", "eval_data", type=click.Path(exists=True),
              help="Report accuracy before and after on DATA: an .npz with x (N,T,I), "
                   "y (N,) or (N,T), optional lengths, or a dataset (UEA .ts file or "
                   "folder, FSDD folder; its test split).")
@click.option("--verify-on", default="onnxruntime,mlx", show_default=True, metavar="RUNTIMES",
              help="Comma-separated runtimes that run an .onnx DST: onnxruntime (always), "
                   "mlx (edgelstm's MLX executor), openvino (CPU, float32; pip install "
                   "'edgelstm[openvino]'); each must agree with onnxruntime on every output.")
@click.option("--tflite-int8", type=click.Choice(["dequantize", "hybrid"]), default="dequantize",
              show_default=True,
              help="A .tflite DST's int8 form: dequantize (int8 weights, float kernels; "
                   "matches MLX int8) or hybrid (LiteRT's dynamic-range kernels, which also "
                   "quantize activations).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@force_option
@handle_errors
def quantize(src, dst, bits, fmt, group_size, head, weight_set, consts, feeds, dims,
             eval_data, verify_on, tflite_int8, as_json, force):
    """Quantize SRC's gate weights and write DST; always prints the report.

    DST's suffix picks the output: .onnx (QDQ by default), .tflite or a
    checkpoint directory. The report gives sizes before/after, the output error on
    random input (max abs, cosine; per output for an ONNX graph with several)
    and, with --eval, accuracy before/after.

    SRC may be any ONNX graph with LSTM/GRU/RNN nodes (convolutions, If, Loop
    and other standard ops around them are kept as they are). The comparison
    input is generated from its declared inputs: --dim sizes symbolic dims,
    --const gives inputs such as a sample rate.

    \b
        $ edgelstm quantize model ckpt-int8
        $ edgelstm quantize model model.int8.onnx --eval test.npz
        $ edgelstm quantize jv-model jv-int8 --eval ../shared/data/uea/JapaneseVowels
        $ edgelstm quantize model model.ort.onnx --format onnx-ort
        $ edgelstm quantize model model.int8.tflite
        $ edgelstm quantize model model.hybrid.tflite --tflite-int8 hybrid
        $ edgelstm quantize vad.onnx vad.int8.onnx --weights all --const sr=16000
    """
    from edgelstm.errors import EdgeLSTMError
    from edgelstm.quantize import QuantConfig, output_format, quantize_model
    from edgelstm.quantize.config import WEIGHT_SETS, Format, Target

    try:  # an impossible combination of options is a usage error (exit 2)
        out_fmt = output_format(dst, fmt)
        targets = list(WEIGHT_SETS[weight_set]) + ([Target.HEAD] if head else [])
        if out_fmt is not Format.ONNX_QDQ:  # conv kernels: QDQ only; "all" means what fits
            targets = [t for t in targets if t is not Target.CONV]
        if out_fmt is Format.TFLITE and not head:  # its int8 form holds the gate weights
            targets = [t for t in targets if t is not Target.HEAD]
        config = QuantConfig(bits=int(bits), targets=tuple(targets),
                             group_size=int(group_size) if group_size else None)
        chosen = config.check_format(out_fmt)
    except EdgeLSTMError as exc:
        raise click.UsageError(str(exc)) from None
    if tflite_int8 != "dequantize" and chosen.value != "tflite":
        raise click.UsageError("--tflite-int8 applies to a .tflite DST only")
    report = quantize_model(src, dst, config, format=fmt, eval_data=eval_data, force=force,
                            verify_on=verify_on, tflite_int8=tflite_int8,
                            consts=list(consts), dims=list(dims), feeds=feeds)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        click.echo(report.summary())
