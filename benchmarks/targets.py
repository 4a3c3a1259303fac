"""Which runtime runs which export form, and how far its outputs are from MLX.

For each shipped model (examples/*/model) and each form, the exported file
runs on ONNX Runtime, OpenVINO (CPU, INFERENCE_PRECISION_HINT=f32) and
LiteRT; the cell is the max abs difference of the first output against the
MLX model (the int8 forms against the MLX int8 model with the same weights),
worst over the models, on seeded random input (4, 50, I). Prints a markdown
table (README "Targets").

    python benchmarks/targets.py
"""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np

from edgelstm.converters import run_onnx
from edgelstm.converters.onnx_export import export_proto
from edgelstm.errors import EdgeLSTMError
from edgelstm.io.checkpoint import load
from edgelstm.quantize import QuantConfig, quantize_mlx

ROOT = Path(__file__).resolve().parents[1]
B, T = 4, 50
RUNTIMES = ("onnxruntime", "openvino", "litert")


def _mlx(model, x, lengths=None):
    return np.array(model(mx.array(x), lengths=None if lengths is None else mx.array(lengths)))


def _onnx_form(form, model, qmodel, tmp):
    """(proto or path, reference model, feeds-maker) of an ONNX form."""
    if form == "fp32":
        return export_proto(model), model
    if form == "QDQ int8":
        return export_proto(qmodel), qmodel
    if form == "streaming (2 chunks)":
        return export_proto(model, streaming=True), model
    if form == "lengths (padded batch)":
        return export_proto(model, lengths=True), model
    if form == "DynamicQuantizeLSTM int8":
        from edgelstm.converters import to_onnx
        from edgelstm.quantize.onnx_ort import ort_quantize

        f = to_onnx(model, Path(tmp) / "f.onnx", force=True)
        ort_quantize(f, Path(tmp) / "q.onnx", QuantConfig())
        return Path(tmp) / "q.onnx", qmodel
    raise KeyError(form)


def _run_onnx_form(form, graph, runtime, x, lengths, rnn):
    if runtime == "litert":
        raise EdgeLSTMError("-")
    if form.startswith("streaming"):
        half = T // 2
        zeros = np.zeros((rnn.num_layers, x.shape[0], rnn.hidden_size), np.float32)
        a = run_onnx(graph, {"input": x[:, :half], "h0": zeros, "c0": zeros}, backend=runtime)
        b = run_onnx(graph, {"input": x[:, half:], "h0": a["h_n"], "c0": a["c_n"]},
                     backend=runtime)
        return np.concatenate([a["output"], b["output"]], axis=1) if a["output"].ndim == 3 \
            else b["output"]
    feeds = {"input": x}
    if form.startswith("lengths"):
        feeds["lengths"] = lengths
    return next(iter(run_onnx(graph, feeds, backend=runtime).values()))


def _tflite(model, x, streaming=False):
    from ai_edge_litert.interpreter import Interpreter

    from edgelstm.converters.tflite_export import build_tflite

    data = build_tflite(model)
    outs = []
    for row in x:  # batch 1 per sequence: the export's fixed batch
        interp = Interpreter(model_content=data)
        idx = interp.get_input_details()[0]["index"]
        chunks = [row[None, :T // 2], row[None, T // 2:]] if streaming else [row[None]]
        ys = []
        for c in chunks:  # state tensors carry over between invokes
            interp.resize_tensor_input(idx, list(c.shape))
            interp.allocate_tensors() if not ys else None
            interp.set_tensor(idx, c)
            interp.invoke()
            ys.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
        outs.append(np.concatenate(ys, 1) if ys[0].ndim == 3 else ys[-1])
    return np.concatenate(outs, 0)


NOTES = {
    "lengths (padded batch)": "OpenVINO runs past a sequence_lens < T (full lengths match)",
    "DynamicQuantizeLSTM int8": "com.microsoft op; it also quantizes activations, so it "
                                "differs from MLX int8 (weights only)",
    "QDQ int8": "vs the MLX int8 model with the same weights",
}
FORMS = ("fp32", "QDQ int8", "streaming (2 chunks)", "lengths (padded batch)",
         "DynamicQuantizeLSTM int8", "TFLite fp32", "TFLite streaming (2 chunks)")


def measure() -> dict[tuple[str, str], str]:
    import tempfile

    cells: dict[tuple[str, str], list] = {}
    rng = np.random.default_rng(0)
    models = sorted((ROOT / "examples").glob("*/model"))
    with tempfile.TemporaryDirectory() as tmp:
        for path in models:
            model = load(path)
            qmodel = quantize_mlx(load(path))
            x = rng.standard_normal((B, T, model.input_size)).astype(np.float32)
            lengths = np.array([T, 37, 20, 9], np.int32)
            for form in FORMS:
                for runtime in RUNTIMES:
                    key = (form, runtime)
                    try:
                        if form.startswith("TFLite"):
                            if runtime != "litert":
                                raise EdgeLSTMError("-")
                            got = _tflite(model, x, streaming="streaming" in form)
                            ref = _mlx(model, x)
                        else:
                            graph, ref_model = _onnx_form(form, model, qmodel, tmp)
                            lens = lengths if form.startswith("lengths") else None
                            got = _run_onnx_form(form, graph, runtime, x, lens, model.rnn)
                            ref = _mlx(ref_model, x, lens)
                        cells.setdefault(key, []).append(float(np.max(np.abs(got - ref))))
                    except EdgeLSTMError as exc:
                        cells.setdefault(key, []).append(str(exc).split(":")[0][:60])
    return {k: _cell(v) for k, v in cells.items()}


def _cell(values) -> str:
    nums = [v for v in values if isinstance(v, float)]
    if len(nums) != len(values):
        why = next(v for v in values if isinstance(v, str))
        return "—" if why == "-" else f"refused ({why})"
    worst = max(nums)
    return f"{worst:.1e}" + ("" if worst < 1e-4 else " (!)")


def table(cells) -> str:
    lines = ["| form | ONNX Runtime | OpenVINO (CPU, f32) | LiteRT | MLX | note |",
             "|---|---|---|---|---|---|"]
    for form in FORMS:
        row = [cells[(form, r)] for r in RUNTIMES]
        lines.append(f"| {form} | " + " | ".join(row) + f" | reference | {NOTES.get(form, '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import importlib.metadata as md

    import onnxruntime

    from edgelstm.converters import openvino_run

    print(table(measure()))
    print(f"\nonnxruntime {onnxruntime.__version__}, openvino {openvino_run.version()}, "
          f"ai-edge-litert {md.version('ai-edge-litert')}; max abs difference of the first "
          f"output vs MLX, worst of the 3 shipped models, random input ({B}, {T}, I); "
          "(!) marks > 1e-4.")
