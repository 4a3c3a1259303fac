"""``convert()``: any supported model -> ONNX or a native checkpoint, with verification.

The module is not called ``convert.py`` so that ``edgelstm.converters.convert``
stays the function (a submodule import would shadow a same-named attribute;
style-anchors §6.3).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelstm.errors import ConversionError, EdgeLSTMError

VERIFY_BATCH, VERIFY_STEPS = 2, 8
#: Runtimes ``verify_on`` accepts for an ONNX output; ONNX Runtime always runs.
RUNTIMES = ("onnxruntime", "openvino")
LENGTHS = "lengths"  # graph input of a --lengths export (onnx_export.LENGTHS_INPUT)

# The one table of what ``convert`` can write, by destination suffix; a path
# without a suffix is a native checkpoint directory. Any other suffix
# (``.pt``, ``.keras``, ``.tflite`` ...) is refused rather than silently
# becoming a checkpoint directory of that name. A new writer adds its row here.
OUTPUT_FORMATS = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml", "": "checkpoint"}


def output_format(dst: str | os.PathLike) -> str:
    """The format ``convert`` writes to ``dst``: ``"onnx"``, ``"tflite"``, ``"coreml"`` or
    ``"checkpoint"``.

    Raises:
        UnsupportedError: ``dst`` has a suffix that is not an output format.
    """
    from edgelstm.errors import UnsupportedError

    suffix = Path(dst).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        named = ", ".join(repr(k) for k in OUTPUT_FORMATS if k)
        raise UnsupportedError(
            f"cannot write {Path(dst).name}: {suffix!r} is not an output format; DST must end "
            f"in {named} or be a directory name without a suffix (a native checkpoint)")
    return OUTPUT_FORMATS[suffix]


def _native_outputs(model, x: np.ndarray, lengths: np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    from edgelstm.runtime.inference import model_io, run_native

    feeds = {model_io(model)[0][0]: x}
    if lengths is not None:
        feeds[LENGTHS] = lengths
    return run_native(model, feeds)


def _takes_lengths(path_or_proto) -> bool:
    from edgelstm.converters import onnx_io_names

    return LENGTHS in onnx_io_names(path_or_proto)[0][1:]


def _verify_lengths(rng, batch: int, steps: int, src_takes: bool, dst_takes: bool):
    """Random lengths ``(B,)`` (one full, the rest shorter) when both sides take them.

    Otherwise ``None``: a ``lengths`` graph input facing a side without one
    gets full lengths (:func:`_onnx_outputs`), the same result as no lengths.
    """
    if not (src_takes and dst_takes):
        return None
    return np.concatenate([[steps], rng.integers(1, steps, batch - 1)]).astype(np.int32)


def _graph_feeds(ins: list[str], model, x: np.ndarray, lengths: np.ndarray | None) -> dict:
    """Feeds of graph inputs ``ins``: ``x``, then ``lengths`` (full if ``None``) or zero states."""
    rnn = getattr(model, "rnn", model)
    feeds = {ins[0]: x}
    batch = x.shape[0] if rnn.batch_first else x.shape[1]
    for name in ins[1:]:
        if name == LENGTHS:
            feeds[name] = lengths if lengths is not None else np.full(
                batch, x.shape[1] if rnn.batch_first else x.shape[0], np.int32)
            continue
        feeds[name] = np.zeros((rnn.num_layers * rnn.num_directions, batch, rnn.hidden_size),
                               np.float32)
    return feeds


def _onnx_outputs(path_or_proto, model, x: np.ndarray, lengths: np.ndarray | None = None,
                  allow_mlx: bool = False) -> tuple[dict[str, np.ndarray], str]:
    """Run an ONNX graph on ``x`` plus zero states (and ``lengths``) for other graph inputs.

    ONNX Runtime runs it; only a *source* graph may fall back to edgelstm's MLX
    runner (``allow_mlx``, e.g. ``layout=1``, which ORT refuses). An output we
    wrote must load in ORT, or the conversion fails.

    Returns:
        The outputs by name and the backend that produced them.
    """
    from edgelstm.converters import onnx_io_names, run_onnx

    feeds = _graph_feeds(onnx_io_names(path_or_proto)[0], model, x, lengths)
    if not allow_mlx:
        return run_onnx(path_or_proto, feeds, backend="onnxruntime"), "onnxruntime"
    try:
        return run_onnx(path_or_proto, feeds, backend="onnxruntime"), "onnxruntime"
    except EdgeLSTMError:
        return run_onnx(path_or_proto, feeds, backend="mlx"), "edgelstm mlx runner"


def verify_outputs(src_out: dict, dst_out: dict, main: str) -> tuple[float, list[str]]:
    """Max abs difference over the outputs both sides have (``main`` must be one)."""
    common = [k for k in src_out if k in dst_out]
    if main not in common:
        raise ConversionError(f"cannot verify: output {main!r} is missing on one side "
                              f"(source has {sorted(src_out)}, result {sorted(dst_out)})")
    worst = 0.0
    for k in common:
        a, b = np.asarray(src_out[k]), np.asarray(dst_out[k])
        if a.shape != b.shape:
            raise ConversionError(f"verification failed: output {k!r} has shape {b.shape}, "
                                  f"the source {a.shape}")
        worst = max(worst, float(np.max(np.abs(a - b))) if a.size else 0.0)
    return worst, common


def convert(src: str | os.PathLike, dst: str | os.PathLike, opset: int = 17,
            streaming: bool = False, verify: bool = False, force: bool = False,
            atol: float = 1e-4, lengths: bool = False,
            verify_on: tuple[str, ...] | list[str] | str = ("onnxruntime",), **options) -> dict:
    """Convert a model between formats.

    Args:
        src: checkpoint directory, ``.onnx``, PyTorch (``.pt``/``.pth``/
            ``.safetensors``) or Keras (``.keras``/``.h5``) file.
        dst: ``*.onnx`` writes ONNX, ``*.mlpackage`` a Core ML ML program (LSTM,
            batch 1, not runnable here: no ``verify``; see
            :mod:`edgelstm.converters.coreml_export`), ``*.tflite`` a LiteRT flatbuffer (batch 1,
            see :mod:`edgelstm.converters.tflite_export`), a path without a
            suffix a checkpoint directory; other suffixes are refused (:data:`OUTPUT_FORMATS`).
        opset: ONNX opset (14 or newer). Default: ``17``.
        streaming: ONNX or TFLite with ``h0``/``c0`` inputs and ``h_n``/``c_n`` outputs.
        verify: run source and result on the same random input
            ``(2, 8, I)`` (with random ``lengths`` when both take them);
            fail above ``atol`` (the output is then not written).
        force: overwrite an existing ``dst``.
        atol: verification tolerance (max abs difference). Default: ``1e-4``.
        lengths: ONNX with an int32 ``lengths`` input ``(B,)`` feeding every
            recurrent node's ``sequence_lens`` (padded batches).
        verify_on: runtimes that run an ONNX ``dst`` for ``verify``, from
            :data:`RUNTIMES` (a list or comma-separated string). ONNX Runtime
            always runs; ``openvino`` adds OpenVINO's CPU plugin at float32.
        options: importer options for ``src`` (e.g. ``head="frame"``).

    Returns:
        A report dict: ``src``, ``dst``, ``src_format``, ``dst_format``,
        ``architecture``, ``opset``, ``streaming``, ``lengths``, ``max_abs_diff`` (``None``
        without ``verify``; the worst over every runtime), ``atol``, ``compared``
        (output names); with ``verify`` also ``verified_by`` and ``runtimes``
        (``{name: {"max_abs_diff", "version", "precision"}}``).

    Raises:
        ConversionError: conversion or verification failed; ``dst`` is untouched.
    """
    from edgelstm.io.checkpoint import detect_format, load, load_checkpoint, save
    from edgelstm.io.fileio import atomic_output, check_output_path, check_writable

    src, dst = Path(src), Path(dst)
    to_onnx = output_format(dst) == "onnx"
    to_tflite = output_format(dst) == "tflite"
    if streaming and not (to_onnx or to_tflite):
        raise ConversionError("--streaming applies to ONNX or TFLite output only "
                              "(DST must end in .onnx or .tflite)")
    if lengths and not to_onnx:
        raise ConversionError("--lengths applies to ONNX output only (DST must end in .onnx)")
    to_coreml = output_format(dst) == "coreml"
    if to_coreml and verify:
        raise ConversionError("--verify cannot run a .mlpackage here: Core ML runs on Apple "
                              "platforms only (the package is checked structurally; compare "
                              "outputs on a Mac)")
    runtimes = parse_runtimes(verify_on)
    if runtimes != ("onnxruntime",) and not to_onnx:
        raise ConversionError("--verify-on applies to ONNX output only (DST must end in .onnx)")
    if "openvino" in runtimes:
        from edgelstm.converters.openvino_run import _openvino

        _openvino()  # missing OpenVINO is reported before anything is loaded or written
    check_writable(dst, force)
    src_format = detect_format(src)
    model = load(src, **options)  # a bad source is reported first; loading writes nothing
    if to_tflite:
        from edgelstm.converters.tflite_export import _schema, check_exportable

        check_exportable(model, streaming=streaming)
        _schema()
    if to_coreml:
        from edgelstm.converters import coreml_export

        coreml_export.check_exportable(model)
        coreml_export._ct()
    check_output_path(dst, [src])  # not the source, inside it or around it, even with force
    report = {"src": str(src), "dst": str(dst), "src_format": src_format,
              "dst_format": "onnx" if to_onnx else "tflite" if to_tflite
              else "coreml" if to_coreml else "checkpoint",
              "architecture": _describe(model), "opset": opset if to_onnx else None,
              "streaming": bool(streaming), "lengths": bool(lengths), "max_abs_diff": None, "atol": atol, "compared": []}
    with atomic_output(dst, force=force, directory=not (to_onnx or to_tflite)) as tmp:
        if to_tflite:
            from edgelstm.converters.tflite_export import build_tflite

            tmp.write_bytes(build_tflite(model, streaming=streaming))
        elif to_coreml:
            from edgelstm.converters.coreml_export import build_mlmodel, save_into

            save_into(build_mlmodel(model), tmp)
        elif to_onnx:
            import onnx

            from edgelstm.converters.onnx_export import export_proto

            onnx.save(export_proto(model, opset=opset, streaming=streaming, lengths=lengths),
                      str(tmp))
        else:
            save(model, tmp, force=True)
        if verify:
            rnn = getattr(model, "rnn", model)
            rng = np.random.default_rng(0)
            steps = _source_steps(src, src_format, model, rnn) or VERIFY_STEPS
            x = rng.standard_normal((VERIFY_BATCH, steps,
                                     getattr(model, "input_size", rnn.input_size))
                                    ).astype(np.float32)
            if not rnn.batch_first:
                x = np.ascontiguousarray(x.transpose(1, 0, 2))
            # native models always take lengths; an ONNX graph only with the input
            lens = _verify_lengths(rng, VERIFY_BATCH, steps,
                                   src_format != "onnx" or _takes_lengths(src),
                                   not (to_onnx or to_tflite) or (to_onnx and _takes_lengths(tmp)))
            if src_format == "onnx":
                src_out, src_by = _onnx_outputs(src, model, x, lens, allow_mlx=True)
            else:
                src_out, src_by = _native_outputs(model, x, lens), "edgelstm mlx"
            if to_tflite:
                dst_out, dst_by = _tflite_outputs(tmp, model, x, dst)
            elif to_onnx:
                try:
                    dst_out, dst_by = _onnx_outputs(tmp, model, x, lens)
                except EdgeLSTMError as exc:
                    raise ConversionError(f"verification failed: ONNX Runtime cannot run the "
                                          f"exported graph ({exc}); {dst} was not written"
                                          ) from None
            else:
                dst_out, dst_by = _native_outputs(load_checkpoint(tmp), x, lens), "edgelstm mlx"
            report["verified_by"] = {"source": src_by, "output": dst_by}
            main = getattr(model, "output_names", ["output"])[0]
            if main not in src_out or main not in dst_out:
                main = _first_common(src_out, dst_out)
            worst, common = verify_outputs(src_out, dst_out, main)
            report.update(max_abs_diff=worst, compared=common)
            if to_onnx:
                report["runtimes"] = {"onnxruntime": _runtime_entry("onnxruntime", worst)}
            for name in runtimes[1:]:
                diff = _verify_extra(name, tmp, model, x, lens, src_out, main, dst)
                report["runtimes"][name] = _runtime_entry(name, diff)
                worst = max(worst, diff)
                if not diff <= atol:
                    raise ConversionError(f"verification failed on {name}: max abs diff "
                                          f"{diff:.3g} exceeds the tolerance {atol:g}; {dst} "
                                          "was not written")
            report["max_abs_diff"] = worst
            if not worst <= atol:
                raise ConversionError(f"verification failed: max abs diff {worst:.3g} exceeds "
                                      f"the tolerance {atol:g}; {dst} was not written")
    return report


def _source_steps(src, src_format, model, rnn) -> int | None:
    """The time length an ONNX source fixes in its input shape (tf2onnx's Keras graphs)."""
    if src_format != "onnx":
        return None
    from edgelstm.converters import _load_onnx
    from edgelstm.converters.onnx_build import declared_steps

    name = getattr(model, "input_names", [None])[0]
    return declared_steps(_load_onnx(src), name, rnn.batch_first)


def _tflite_outputs(path, model, x: np.ndarray, dst) -> tuple[dict[str, np.ndarray], str]:
    """The written ``.tflite`` run by LiteRT on ``x``, one sequence at a time (batch 1)."""
    from edgelstm.converters import litert_run

    rnn = getattr(model, "rnn", model)
    axis = 0 if rnn.batch_first else 1
    try:
        parts = [litert_run.run_tflite(path, np.take(x, [b], axis=axis))
                 for b in range(x.shape[axis])]
    except EdgeLSTMError as exc:
        raise ConversionError(f"verification failed: LiteRT cannot run the exported model "
                              f"({exc}); {dst} was not written") from None
    name = getattr(model, "output_names", ["output"])[0]
    out = np.concatenate(parts, axis=axis if parts[0].ndim == 3 else 0)
    return {name: out}, f"LiteRT {litert_run.version()}"


def parse_runtimes(verify_on, known: tuple[str, ...] = RUNTIMES) -> tuple[str, ...]:
    """``"onnxruntime,openvino"`` or a list -> ``("onnxruntime", ...)``, ORT first, deduplicated.

    ``known``: the names accepted (``quantize`` adds ``"mlx"``, the MLX executor).

    Raises:
        ConversionError: a name outside ``known``.
    """
    names = verify_on.split(",") if isinstance(verify_on, str) else list(verify_on)
    out = ["onnxruntime"]
    for name in (n.strip().lower() for n in names):
        if name not in known:
            raise ConversionError(f"unknown runtime {name!r} for --verify-on; choose from "
                                  f"{', '.join(known)}")
        if name not in out:
            out.append(name)
    return tuple(out)


def _runtime_entry(name: str, diff: float) -> dict:
    if name == "openvino":
        from edgelstm.converters import openvino_run

        return {"max_abs_diff": diff, "version": openvino_run.version(),
                "precision": openvino_run.PRECISION, "device": openvino_run.DEVICE}
    import onnxruntime

    return {"max_abs_diff": diff, "version": onnxruntime.__version__, "precision": "f32",
            "device": "CPU"}


def _verify_extra(name, tmp, model, x, lens, src_out, main, dst) -> float:
    """Max abs diff of ``tmp`` run on runtime ``name`` against the source outputs."""
    from edgelstm.converters import onnx_io_names, run_onnx

    feeds = _graph_feeds(onnx_io_names(tmp)[0], model, x, lens)
    try:
        out = run_onnx(tmp, feeds, backend=name)
    except EdgeLSTMError as exc:
        raise ConversionError(f"verification failed on {name}: {exc}; {dst} was not written"
                              ) from None
    return verify_outputs(src_out, out, main)[0]


def _first_common(a: dict, b: dict) -> str:
    return next((k for k in a if k in b), next(iter(a)))


def _describe(model) -> str:
    rnn = getattr(model, "rnn", model)
    head = getattr(model, "head_type", None)
    return (f"{rnn.cell_type.upper()} {rnn.num_layers}x{rnn.hidden_size}"
            f"{' bidirectional' if rnn.bidirectional else ''}"
            + (", conv stem" if "stem" in model else "")
            + (", fcn branch" if "fcn" in model else "")
            + (f", {head} head" if head else ""))
