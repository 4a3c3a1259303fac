"""Which runtime runs which export form, and how far its outputs are from MLX.

For each shipped model (examples/*/model, all one-layer LSTMs) and each form,
the exported file runs on ONNX Runtime, OpenVINO (CPU,
INFERENCE_PRECISION_HINT=f32) and LiteRT; the cell is the max abs difference
of the first output against the MLX model (the int8 forms against the MLX
int8 model with the same weights), worst over the models, on seeded random
input (4, 50, I). The cells the shipped models lack (GRU, RNN, bidirectional,
two layers) run as seeded random-weight models (I=6, H=32, sequence head).
The Core ML package is built and read back (structure only: Core ML runs on
Apple platforms). Prints a markdown table (README "Targets").

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
RUNTIMES = ("onnxruntime", "openvino", "litert", "coreml")


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


def _tflite(model, x, streaming=False, int8="dequantize"):
    """Variable-state form; ``streaming``: two invokes, the builtin ops' state carried over."""
    from ai_edge_litert.interpreter import Interpreter

    from edgelstm.converters.tflite_export import build_tflite

    data = build_tflite(model, int8=int8)
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


def _tflite_state_io(model, x):
    """Streaming form (h0/c0 in, h_n/c_n out): two chunks, the state fed back by the host."""
    from edgelstm.converters.litert_run import run_tflite_all
    from edgelstm.converters.tflite_export import build_tflite

    data = build_tflite(model, batch_size=x.shape[0], streaming=True)
    a = run_tflite_all(data, x[:, :T // 2])
    b = run_tflite_all(data, x[:, T // 2:], {k.replace("_n", "0"): v for k, v in a.items()
                                             if k in ("h_n", "c_n")})
    name = next(iter(a))
    return np.concatenate([a[name], b[name]], 1) if a[name].ndim == 3 else b[name]


def _coreml(model):
    """Build and read back the .mlpackage; raises with the reason when it cannot."""
    import tempfile
    import warnings

    from edgelstm.converters.coreml_export import describe_mlpackage, to_mlpackage

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = describe_mlpackage(to_mlpackage(model, Path(tmp) / "m.mlpackage"))
    if d["ops"].count("lstm") != model.rnn.num_layers:
        raise EdgeLSTMError("lstm ops missing")
    return "built + read back (runs on macOS only)"


SYNTHETIC = {"GRU, 2 layers": ("gru", {}), "RNN, 2 layers": ("rnn", {}),
             "bidirectional LSTM, 2 layers": ("lstm", {"bidirectional": True})}


def _synthetic(kind, kw):
    import edgelstm

    mx.random.seed(0)
    rnn = {"lstm": edgelstm.LSTM, "gru": edgelstm.GRU, "rnn": edgelstm.RNN}[kind](
        6, 32, num_layers=2, **kw)
    return edgelstm.SequenceModel(rnn, num_outputs=4, head="sequence")


NOTES = {
    "lengths (padded batch)": "OpenVINO runs past a sequence_lens < T (full lengths match)",
    "DynamicQuantizeLSTM int8": "com.microsoft op; it also quantizes activations, so it "
                                "differs from MLX int8 (weights only)",
    "QDQ int8": "vs the MLX int8 model with the same weights",
}
FORMS = ("fp32", "QDQ int8", "streaming (2 chunks)", "lengths (padded batch)",
         "DynamicQuantizeLSTM int8", "TFLite fp32", "TFLite chunks, variable state (2 chunks)",
         "TFLite streaming, state I/O (2 chunks)", "TFLite int8 (DEQUANTIZE)",
         "TFLite int8 hybrid", "Core ML ML program")
NOTES.update({
    "TFLite fp32": "UNIDIRECTIONAL_SEQUENCE_LSTM",
    "TFLite chunks, variable state (2 chunks)": "builtin ops' state tensors persist between "
                                                "invokes",
    "TFLite streaming, state I/O (2 chunks)": "WHILE loop form; h0/c0 in, h_n/c_n out",
    "TFLite int8 (DEQUANTIZE)": "int8 tensors, per-channel scales; vs MLX int8",
    "TFLite int8 hybrid": "dynamic-range kernels also quantize activations; vs MLX int8",
    "Core ML ML program": "structure checked; numbers need a Mac",
    "GRU, 2 layers": "random weights; LiteRT: WHILE loop form",
    "RNN, 2 layers": "random weights; LiteRT: UNIDIRECTIONAL_SEQUENCE_RNN",
    "bidirectional LSTM, 2 layers": "random weights; LiteRT: two sequence ops per layer, "
                                    "REVERSE_V2",
})


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
                        got, ref = _measure_form(form, runtime, model, qmodel, x, lengths, tmp)
                        if isinstance(got, str):
                            cells.setdefault(key, []).append(got)
                            continue
                        cells.setdefault(key, []).append(float(np.max(np.abs(got - ref))))
                    except EdgeLSTMError as exc:
                        cells.setdefault(key, []).append(str(exc).split(":")[0][:60])
        for form, (kind, kw) in SYNTHETIC.items():
            model = _synthetic(kind, kw)
            x = rng.standard_normal((B, T, 6)).astype(np.float32)
            ref = _mlx(model, x)
            for runtime in RUNTIMES:
                try:
                    if runtime == "coreml":
                        raise EdgeLSTMError("-")
                    got = (_tflite(model, x) if runtime == "litert" else
                           _run_onnx_form("fp32", export_proto(model), runtime, x, None, model.rnn))
                    cells[(form, runtime)] = [float(np.max(np.abs(got - ref)))]
                except EdgeLSTMError as exc:
                    cells[(form, runtime)] = [str(exc).split(":")[0][:60]]
    return {k: _cell(v) for k, v in cells.items()}


def _measure_form(form, runtime, model, qmodel, x, lengths, tmp):
    """(output, reference) of one form on one runtime; a string output is the cell itself."""
    if form.startswith("Core ML"):
        if runtime != "coreml":
            raise EdgeLSTMError("-")
        return _coreml(model), None
    if runtime == "coreml":
        raise EdgeLSTMError("-")
    if form.startswith("TFLite"):
        if runtime != "litert":
            raise EdgeLSTMError("-")
        if "int8" in form:
            return (_tflite(qmodel, x, int8="hybrid" if "hybrid" in form else "dequantize"),
                    _mlx(qmodel, x))
        if "state I/O" in form:
            return _tflite_state_io(model, x), _mlx(model, x)
        return _tflite(model, x, streaming="chunks" in form), _mlx(model, x)
    graph, ref_model = _onnx_form(form, model, qmodel, tmp)
    lens = lengths if form.startswith("lengths") else None
    return (_run_onnx_form(form, graph, runtime, x, lens, model.rnn), _mlx(ref_model, x, lens))


def _cell(values) -> str:
    nums = [v for v in values if isinstance(v, float)]
    if len(nums) != len(values):
        why = next(v for v in values if isinstance(v, str))
        return "—" if why == "-" else why if why.startswith("built") else f"refused ({why})"
    worst = max(nums)
    return f"{worst:.1e}" + ("" if worst < 1e-4 else " (!)")


def table(cells) -> str:
    lines = ["| form | ONNX Runtime | OpenVINO (CPU, f32) | LiteRT | Core ML | MLX | note |",
             "|---|---|---|---|---|---|---|"]
    for form in (*FORMS, *SYNTHETIC):
        row = [cells[(form, r)] for r in RUNTIMES]
        lines.append(f"| {form} | " + " | ".join(row) + f" | reference | {NOTES.get(form, '')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import importlib.metadata as md

    import onnxruntime

    from edgelstm.converters import openvino_run

    print(table(measure()))
    print(f"\nonnxruntime {onnxruntime.__version__}, openvino {openvino_run.version()}, "
          f"ai-edge-litert {md.version('ai-edge-litert')}, coremltools "
          f"{md.version('coremltools')}; max abs difference of the first output vs MLX, worst "
          f"of the 3 shipped models (last three rows: one random-weight model each), random "
          f"input ({B}, {T}, I); (!) marks > 1e-4.")
