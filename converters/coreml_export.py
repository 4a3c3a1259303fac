"""Export an edgelstm LSTM model to a Core ML ML program (``.mlpackage``).

Built with ``coremltools``' MIL builder (``pip install coremltools``), which
runs on Linux; Core ML itself runs only on Apple platforms, so the package is
checked structurally here (:func:`describe_mlpackage`) and numerical checks
need a Mac. Program (iOS 17 opset, float32 compute pinned):

- inputs ``input`` ``(B, T, I)`` (``T`` flexible, 1..65536; ``(T, B, I)``
  when not ``batch_first``), ``h0`` and ``c0`` ``(L, B, H)``;
- normalisation ``sub``/``real_div``; each layer one MIL ``lstm`` op
  (time-major, gate order re-packed from ``i, f, g, o`` to Core ML's
  ``i, f, o, g``, summed bias);
- head ``linear`` on every step (frame), on the last layer's final ``h``
  (sequence, last) or on ``reduce_mean`` over time (sequence, mean);
- outputs the model's first output name, ``h_n``, ``c_n`` ``(L, B, H)``: the
  state is carried as inputs and outputs, so a host streams chunks.

Refused by name: GRU/RNN, bidirectional stacks, peepholes, clip, coupled
gates, custom activations, summary heads and quantized weights (only what
can be checked structurally here is exported).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelstm.errors import ConversionError, UnsupportedError

INSTALL_HINT = "pip install 'edgelstm[coreml]' (or pip install coremltools)"
MAX_STEPS = 65536
_IFGO_TO_IFOG = (0, 1, 3, 2)


def _ct():
    try:
        import coremltools as ct
    except ImportError:
        raise UnsupportedError(f"Core ML export needs coremltools; {INSTALL_HINT}") from None
    return ct


def check_exportable(model) -> None:
    """Refuse what this Core ML export does not cover, naming it.

    Raises:
        UnsupportedError: anything but a plain unidirectional float LSTM stack.
    """
    from edgelstm.converters.onnx_export import _split_model
    from edgelstm.quantize.mlx_quant import is_quantized

    seq, rnn = _split_model(model)
    opts = rnn.cell_options
    what = None
    if rnn.cell_type != "lstm":
        what = f"a {rnn.cell_type.upper()} (the Core ML export covers LSTM only)"
    elif rnn.bidirectional:
        what = "a bidirectional LSTM"
    elif opts.get("peephole"):
        what = "peephole connections"
    elif opts.get("clip") is not None:
        what = "clip"
    elif opts.get("input_forget"):
        what = "coupled input-forget gates (input_forget)"
    elif opts.get("activations") is not None:
        what = "non-default activations"
    elif getattr(seq, "summary", None) is not None:
        what = "a sequence head reading other final states than the last layer's (summary)"
    elif seq is not None and "stem" in seq:
        what = "a conv stem (export it to ONNX)"
    elif seq is not None and "fcn" in seq:
        what = "an fcn branch (export it to ONNX)"
    elif is_quantized(model) or getattr(model, "quantization", None):
        what = "quantized weights (export the float model)"
    if what:
        raise UnsupportedError(f"Core ML export cannot express {what}")


def build_mlmodel(model, batch_size: int = 1):
    """The ``coremltools.models.MLModel`` (ML program, not loaded) of ``model``."""
    from edgelstm.converters.onnx_export import _head_weight, _split_model

    check_exportable(model)
    ct = _ct()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import get_new_symbol

    seq, rnn = _split_model(model)
    if not 1 <= batch_size <= 65536:
        raise ConversionError(f"batch_size must be 1..65536, got {batch_size}")
    B, I, H, L = batch_size, rnn.input_size, rnn.hidden_size, rnn.num_layers
    tm = not rnn.batch_first
    names = (seq.input_names, seq.output_names) if seq is not None else (["input"], ["output"])
    x_shape = (get_new_symbol(), B, I) if tm else (B, get_new_symbol(), I)
    layers = [_lstm_weights(layer.forward, H) for layer in rnn.layers]
    head = seq.head_type if seq is not None else None

    @mb.program(input_specs=[mb.TensorSpec(shape=x_shape), mb.TensorSpec(shape=(L, B, H)),
                             mb.TensorSpec(shape=(L, B, H))],
                opset_version=ct.target.iOS17)
    def prog(x, h0, c0):
        if seq is not None and "norm" in seq:
            x = mb.sub(x=x, y=np.array(seq.norm.mean, np.float32))
            x = mb.real_div(x=x, y=np.array(seq.norm.std, np.float32))
        if not tm:
            x = mb.transpose(x=x, perm=[1, 0, 2])  # the lstm op is time-major
        hs, cs = [], []
        for k, w in enumerate(layers):
            h_k = mb.squeeze(x=mb.slice_by_index(x=h0, begin=[k, 0, 0], end=[k + 1, B, H]),
                             axes=[0])
            c_k = mb.squeeze(x=mb.slice_by_index(x=c0, begin=[k, 0, 0], end=[k + 1, B, H]),
                             axes=[0])
            x, h_n, c_n = mb.lstm(x=x, initial_h=h_k, initial_c=c_k, direction="forward",
                                  output_sequence=True, recurrent_activation="sigmoid",
                                  cell_activation="tanh", activation="tanh", name=f"lstm{k}",
                                  **w)
            hs.append(h_n)
            cs.append(c_n)
        if head == "sequence" and seq.pool == "mean":
            x = mb.reduce_mean(x=x, axes=[0], keep_dims=False)
        elif head == "sequence":
            x = hs[-1]
        elif not tm:
            x = mb.transpose(x=x, perm=[1, 0, 2])
        if head is not None:
            bias = seq.head.get("bias")
            x = mb.linear(x=x, weight=_head_weight(seq.head),
                          bias=np.zeros(seq.num_outputs, np.float32) if bias is None
                          else np.array(bias, np.float32))
        out = mb.identity(x=x, name=names[1][0])
        return (out, mb.stack(values=hs, axis=0, name="h_n"),
                mb.stack(values=cs, axis=0, name="c_n"))

    steps = ct.RangeDim(1, MAX_STEPS)
    x_spec = (steps, B, I) if tm else (B, steps, I)
    mlmodel = ct.convert(
        prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
        compute_precision=ct.precision.FLOAT32, skip_model_load=True,
        inputs=[ct.TensorType(name="x", shape=x_spec),
                ct.TensorType(name="h0", shape=(L, B, H)), ct.TensorType(name="c0", shape=(L, B, H))])
    if names[0][0] == "x":
        return mlmodel
    spec = mlmodel.get_spec()  # MIL names inputs after the Python parameters: rename
    ct.utils.rename_feature(spec, "x", names[0][0])
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


def _lstm_weights(cell, H: int) -> dict[str, np.ndarray]:
    """MIL ``lstm`` weights: ``weight_ih (4H, I)``, ``weight_hh (4H, H)``, ``bias (4H,)`` in
    Core ML's gate order ``i, f, o, g``."""
    def reorder(w):
        return np.concatenate([np.split(w, 4)[k] for k in _IFGO_TO_IFOG])

    bias = cell.get("bias")
    b = np.zeros(4 * H, np.float32) if bias is None else np.array(bias, np.float32)
    return {"weight_ih": reorder(np.array(cell.Wx, np.float32)),
            "weight_hh": reorder(np.array(cell.Wh, np.float32)), "bias": reorder(b)}


def to_mlpackage(model, path: str | os.PathLike, batch_size: int = 1,
                 force: bool = False) -> Path:
    """Write ``model`` as a ``.mlpackage`` directory (atomically)."""
    from edgelstm.io.fileio import atomic_output

    mlmodel = build_mlmodel(model, batch_size)
    path = Path(path)
    with atomic_output(path, force=force, directory=True) as tmp:
        save_into(mlmodel, tmp)
    return path


def save_into(mlmodel, tmp: Path) -> None:
    """Save into the empty directory ``tmp`` that an atomic output handed out."""
    import shutil

    staged = Path(tmp) / "staged.mlpackage"  # coremltools wants the suffix on its path
    mlmodel.save(str(staged))
    for child in staged.iterdir():
        shutil.move(str(child), str(Path(tmp) / child.name))
    staged.rmdir()


def describe_mlpackage(path: str | os.PathLike) -> dict:
    """What a saved package holds, read back from its spec (no Core ML runtime needed).

    Returns:
        ``{"spec_version", "inputs": {name: shape}, "outputs": {name: shape},
        "flexible": {name: [(lo, hi) per dim]}, "ops": [op types], "lstm": [{weight
        arrays}], "precision": set of tensor dtypes}`` (``shape`` entries of
        ``None`` are flexible).
    """
    ct = _ct()
    from coremltools.converters.mil.frontend.milproto.load import load

    spec = ct.utils.load_spec(str(path))
    weights = Path(path) / "Data" / "com.apple.CoreML" / "weights"
    prog = load(spec, spec.specificationVersion, str(weights))
    func = prog.functions["main"]
    ops = list(func.operations)

    def shapes(features):
        out, flex = {}, {}
        for f in features:
            arr = f.type.multiArrayType
            out[f.name] = tuple(int(d) for d in arr.shape) or None
            ranges = arr.shapeRange.sizeRanges
            if ranges:
                flex[f.name] = [(int(r.lowerBound), int(r.upperBound)) for r in ranges]
        return out, flex

    inputs, flex = shapes(spec.description.input)
    outputs, _ = shapes(spec.description.output)
    lstm = []
    for op in ops:
        if op.op_type == "lstm":
            lstm.append({k: np.array(op.inputs[k].val) for k in ("weight_ih", "weight_hh", "bias")})
    dtypes = {str(v.dtype.__name__) for op in ops for v in op.outputs if hasattr(v, "dtype")}
    return {"spec_version": spec.specificationVersion, "inputs": inputs, "outputs": outputs,
            "flexible": flex, "ops": [op.op_type for op in ops], "lstm": lstm,
            "precision": dtypes}
