"""``quantize_model``: file in, quantized file out, report back.

What ``edgelstm quantize`` calls. The float model and the quantized output
run on the same seeded random input (and on ``eval_data`` when given); the
quantized side is read back from the written file, so the report also checks
the round trip.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from edgelstm.errors import ConfigError, DataError, EdgeLSTMError, UnsupportedError
from edgelstm.limits import check_elements
from edgelstm.quantize.config import Format, QuantConfig
from edgelstm.quantize.report import (
    QuantReport,
    accuracy,
    load_eval_data,
    output_error,
    random_input,
    size_on_disk,
)


def output_format(dst: str | os.PathLike, fmt: Format | str | None) -> Format:
    """The output format: explicit, else from ``dst`` (``.onnx`` -> QDQ, ``.tflite``, else MLX)."""
    suffix = Path(dst).suffix.lower()
    is_onnx = suffix == ".onnx"
    if fmt is None:
        return Format.ONNX_QDQ if is_onnx else Format.TFLITE if suffix == ".tflite" else Format.MLX
    fmt = Format.parse(fmt)
    if (fmt is Format.TFLITE) != (suffix == ".tflite"):
        raise ConfigError(f"format tflite writes a .tflite file and a .tflite DST takes format "
                          f"tflite; got {fmt} for {dst}")
    if fmt is Format.TFLITE:
        return fmt
    if (fmt is Format.MLX) == is_onnx:
        want = "a checkpoint directory (no .onnx suffix)" if fmt is Format.MLX else "a .onnx file"
        raise ConfigError(f"format {fmt} writes {want}; got {dst}")
    return fmt


def quantize_model(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    config: QuantConfig | None = None,
    *,
    format: Format | str | None = None,  # noqa: A002 - the CLI's option name
    eval_data: str | os.PathLike | None = None,
    force: bool = False,
    seed: int = 0,
    verify_on: tuple[str, ...] | list[str] | str = ("onnxruntime", "mlx"),
    tflite_int8: str = "dequantize",
    consts: dict | list | None = None,
    dims: dict | list | None = None,
    feeds: str | os.PathLike | dict | None = None,
) -> QuantReport:
    """Quantize the model at ``src`` and write it to ``dst``.

    Args:
        src: any model edgelstm loads (checkpoint, ``.onnx``, PyTorch, Keras).
        dst: checkpoint directory (``mlx``), ``.onnx`` or ``.tflite`` file.
        config: :class:`QuantConfig`; default int8 ``Wx``/``Wh``.
        format: ``mlx``, ``onnx-qdq``, ``onnx-ort`` or ``tflite`` (LiteRT, int8
            weights checked against the MLX int8 model); default from ``dst``.
        eval_data: ``.npz`` with ``x (N, T, I)``, ``y (N,)|(N, T)``, optional
            ``lengths (N,)``, or a dataset spec (UEA ``.ts`` file/folder, FSDD
            folder; its test split): accuracy before and after goes in the report.
        force: overwrite ``dst``.
        seed: seed of the random comparison input.
        verify_on: runtimes that run an ONNX ``dst`` (``"onnxruntime,mlx,openvino"``
            or a list; default ONNX Runtime and the MLX executor); ONNX Runtime
            always runs. Each other runtime must agree with ONNX Runtime on every
            output of the quantized file within
            :data:`edgelstm.converters.DEFAULT_ATOL` (``report.runtimes``).
        tflite_int8: a ``.tflite`` ``dst``'s int8 form, ``"dequantize"``
            (weight-only, matches the MLX int8 model to 1e-4) or ``"hybrid"``
            (LiteRT's dynamic-range kernels, within 2% of the output scale).
        consts: values of graph inputs that are not signals, e.g.
            ``{"sr": 16000}`` or ``["sr=16000"]`` (ONNX output).
        dims: sizes of symbolic dims of the generated inputs, e.g.
            ``{"samples": 288}`` (ONNX output); see
            :func:`edgelstm.quantize.onnx_verify.graph_feeds`.
        feeds: ``.npz`` (or dict) of arrays by input name used instead of
            generated ones in the comparison (ONNX output), e.g. real audio.

    Returns:
        :class:`QuantReport`.
    """
    from edgelstm.converters.conversion import parse_runtimes
    from edgelstm.io.fileio import check_output_path, check_writable
    from edgelstm.quantize.onnx_verify import CHECK_RUNTIMES, parse_consts, parse_dims

    config = config or QuantConfig()
    fmt = config.check_format(output_format(dst, format))
    try:
        runtimes = parse_runtimes(verify_on, known=("onnxruntime", *CHECK_RUNTIMES))
    except EdgeLSTMError as exc:
        raise ConfigError(str(exc)) from None
    if tflite_int8 not in ("dequantize", "hybrid"):
        raise ConfigError(f"tflite_int8 must be 'dequantize' or 'hybrid', got {tflite_int8!r}")
    if tflite_int8 != "dequantize" and fmt is not Format.TFLITE:
        raise ConfigError("--tflite-int8 applies to .tflite output only")
    if fmt in (Format.MLX, Format.TFLITE):
        if set(runtimes) - {"onnxruntime", "mlx"}:
            raise ConfigError("--verify-on applies to ONNX output only (DST must end in .onnx)")
        if consts or dims or feeds is not None:
            raise ConfigError("--const, --dim and --feeds apply to ONNX output only")
    consts, dims = parse_consts(consts), parse_dims(dims)
    if feeds is not None:
        from edgelstm.frontend.arrays import load_npz

        given = load_npz(feeds) if not isinstance(feeds, dict) else feeds
        consts = {**{k: np.asarray(v) for k, v in given.items()}, **consts}
    if "openvino" in runtimes:
        from edgelstm.converters.openvino_run import _openvino

        _openvino()  # missing OpenVINO is reported before anything is written
    check_output_path(dst, [src, eval_data, feeds if not isinstance(feeds, dict) else None])
    check_writable(dst, force)
    data = None
    if eval_data is not None:
        from edgelstm.io.checkpoint import load

        data = load_eval_data(eval_data, model=load(src))
    if fmt is Format.MLX:
        report = _to_mlx(src, dst, config, data, force, seed)
    elif fmt is Format.TFLITE:
        from edgelstm.quantize.tflite_out import to_tflite_int8

        report = to_tflite_int8(src, dst, config, data, force, seed, _float_model(src),
                                tflite_int8)
    else:
        report = _to_onnx(src, dst, config, fmt, data, force, seed, runtimes, consts, dims)
    if data is not None:
        report.eval_data, report.eval_samples = str(eval_data), len(data["x"])
    return report


def mlx_predict(model):
    """``predict(x, lengths)`` of a native model, numpy in and out."""
    import mlx.core as mx

    def predict(x, lengths=None):
        lengths = None if lengths is None else mx.array(np.asarray(lengths, np.int32))
        out = model(mx.array(x), lengths=lengths)
        out = out[0] if isinstance(out, tuple) else out  # a bare LSTM returns (y, state)
        return np.array(out)

    return predict


def _float_model(src):
    from edgelstm.io.checkpoint import load
    from edgelstm.quantize.mlx_quant import is_quantized

    model = load(src)
    if is_quantized(model):
        raise UnsupportedError(f"{src} is already quantized")
    return model


def _to_mlx(src, dst, config, data, force, seed) -> QuantReport:
    from edgelstm.io.checkpoint import load, save
    from edgelstm.io.fileio import atomic_output
    from edgelstm.quantize.mlx_quant import quantize_mlx
    from edgelstm.runtime.info import describe_model

    model = _float_model(src)
    x = random_input(model.input_size, seed=seed)
    ref = mlx_predict(model)(x)
    acc_before = accuracy(mlx_predict(model), data) if data is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        before = size_on_disk(save(model, Path(tmp) / "float"))
    # read back and score inside the atomic output: a failure leaves no dst behind
    with atomic_output(dst, force=force, directory=True) as out:
        save(quantize_mlx(model, config), out, force=True)
        back = load(out)
        max_abs, cos = output_error(ref, mlx_predict(back)(x))
        bits = describe_model(back)["bits_per_weight"]
        acc_after = accuracy(mlx_predict(back), data) if data is not None else None
    return QuantReport(
        src=str(src), dst=str(dst), format=Format.MLX.value, scheme=config.label,
        bytes_before=before, bytes_after=size_on_disk(dst), max_abs_error=max_abs, cosine=cos,
        input_shape=x.shape, backend="mlx", bits_per_weight=bits,
        accuracy_before=acc_before, accuracy_after=acc_after,
        notes=["4-bit is experimental: check the error and accuracy above"]
        if config.bits == 4 else [])


def ort_predict(path):
    """``predict(x, lengths)`` of an ONNX file through ONNX Runtime.

    Extra float inputs (streaming states) are fed zeros. With ``lengths`` the
    batch runs in groups of equal length, each truncated, as the exported
    graph has no ``sequence_lens`` input.
    """
    from edgelstm.converters import ort_session

    sess = ort_session(path)
    first, *rest = sess.get_inputs()

    def run(x):
        feeds = {first.name: x}
        for i in rest:
            shape = [len(x) if not isinstance(d, int) else d for d in i.shape]
            check_elements(shape, f"ONNX input {i.name!r}")
            feeds[i.name] = np.zeros(shape, np.float32)
        try:
            return sess.run([sess.get_outputs()[0].name], feeds)[0]
        except Exception as exc:  # ORT's own Fail/InvalidArgument/RuntimeException types
            from edgelstm.converters import _ort_message

            raise DataError(f"onnxruntime failed on {path}: {_ort_message(exc)}") from None

    def predict(x, lengths=None):
        if lengths is None:
            return run(x)
        outs = [None] * len(x)
        for L in np.unique(lengths):
            idx = np.flatnonzero(lengths == L)
            y = run(x[idx, :L])
            for j, k in enumerate(idx):
                outs[k] = y[j] if y.ndim == 2 else np.pad(y[j], ((0, x.shape[1] - L), (0, 0)))
        return np.stack(outs)

    return predict, (first.shape[-1] if first.shape else None)


def _onnx_errors() -> tuple[type[BaseException], ...]:
    """What onnx raises on a malformed graph: decode, checker and shape-inference errors."""
    import onnx
    from google.protobuf.message import DecodeError

    return (DecodeError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError)


def check_onnx_source(path) -> None:
    """Refuse an ONNX file ``quantize`` cannot treat faithfully, before any output exists.

    Raises:
        ConversionError: unreadable or invalid graph; UnsupportedError: an op
        outside the standard domain (it would be copied into the output unchecked).
    """
    import onnx

    from edgelstm.converters import _load_onnx
    from edgelstm.errors import ConversionError

    model = _load_onnx(path)
    try:
        onnx.checker.check_model(model)
    except _onnx_errors() as exc:
        raise ConversionError(f"{path} is not a valid ONNX model: {_line(exc)}") from None
    for node in _all_nodes(model.graph):
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedError(f"{path}: node {node.name or node.op_type!r} uses op "
                                   f"{node.domain}.{node.op_type}; quantize takes standard "
                                   "ONNX ops only")


def _all_nodes(graph):
    """Every node of ``graph`` and of its subgraphs (``If``/``Loop``/``Scan`` bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _to_onnx(src, dst, config, fmt, data, force, seed, runtimes=("onnxruntime",),
             consts=None, dims=None) -> QuantReport:
    import onnx

    from edgelstm.converters import _load_onnx
    from edgelstm.errors import ConversionError
    from edgelstm.io.checkpoint import detect_format
    from edgelstm.io.fileio import atomic_output
    from edgelstm.quantize.onnx_ort import ort_quantize
    from edgelstm.quantize.onnx_qdq import qdq_rewrite
    from edgelstm.quantize.onnx_verify import (
        check_runtime,
        compare_outputs,
        graph_feeds,
        run_reference,
    )

    notes = []
    if fmt is Format.ONNX_ORT and "mlx" in runtimes:
        # DynamicQuantizeLSTM quantizes activations at run time as ORT does; MLX's
        # executor runs it only approximately, so agreement within DEFAULT_ATOL is no test
        runtimes = tuple(r for r in runtimes if r != "mlx")
        notes.append("not checked on mlx: onnx-ort is an ONNX Runtime format")
    with tempfile.TemporaryDirectory() as tmp:
        if detect_format(src) == "onnx":
            float_path = Path(src)
            check_onnx_source(float_path)
        else:
            from edgelstm.converters import to_onnx

            float_path = to_onnx(_float_model(src), Path(tmp) / "float.onnx")
        float_model = _load_onnx(float_path)
        # the float graph must run before anything is written
        feeds = graph_feeds(float_model, consts, dims, seed=seed)
        ref = run_reference(float_path, feeds)
        before = size_on_disk(float_path)
        ref_predict = ort_predict(float_path)[0] if data is not None else None
        acc_before = accuracy(ref_predict, data) if data is not None else None
        with atomic_output(dst, force=force) as out:
            try:
                if fmt is Format.ONNX_QDQ:
                    res = qdq_rewrite(float_model, config)
                    onnx.save(res.model, str(out))
                    notes += res.notes + [f"kept float: {s}" for s in res.skipped]
                    changed = {"quantized": list(dict.fromkeys(res.quantized)),
                               "compacted": res.compacted}
                else:
                    ort_quantize(float_path, out, config)
                    changed = {}
            except _onnx_errors() as exc:
                raise ConversionError(f"cannot quantize {src}: {_line(exc)}") from None
            # score the written file inside the atomic output: a failure leaves no dst
            q_out = run_reference(out, feeds)
            outputs = compare_outputs(ref, q_out)
            first = next(iter(outputs.values()))
            acc_after = accuracy(ort_predict(out)[0], data) if data is not None else None
            checks = {}
            for name in runtimes[1:]:
                checks[name], diffs = check_runtime(name, out, feeds, q_out, dst)
                for k, d in diffs.items():
                    outputs[k][f"{name}_max_abs_diff"] = d
    if fmt is Format.ONNX_ORT:
        notes.append("ONNX Runtime only: com.microsoft.DynamicQuantizeLSTM")
    return QuantReport(
        src=str(src), dst=str(dst), format=fmt.value, scheme=config.label,
        bytes_before=before, bytes_after=size_on_disk(dst),
        max_abs_error=first["max_abs_error"], cosine=first["cosine"],
        input_shape=next(iter(feeds.values())).shape if feeds else (), backend="onnxruntime",
        accuracy_before=acc_before, accuracy_after=acc_after, notes=notes, runtimes=checks,
        outputs=outputs, inputs={k: list(v.shape) for k, v in feeds.items()},
        weights=changed)
