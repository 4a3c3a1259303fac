"""``edgelstm stream``: run a WAV, CSV, .npy file or stdin through a model, chunk by chunk."""

from __future__ import annotations

import json
import math
import os
import sys

import click

from edgelstm.cli._common import backend_option, handle_errors, log
from edgelstm.limits import MAX_CHUNK_FRAMES, MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from edgelstm.streaming.run import STDIN_FORMATS, StopStream


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("input_path", metavar="[INPUT|-]", required=False, default="-")
@click.option("--chunk-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Chunk length in ms of signal (default 100).")
@click.option("--chunk-frames", type=click.IntRange(1, MAX_CHUNK_FRAMES), default=None,
              help="Chunk length in model frames.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object per chunk (or detection) on stdout.")
@backend_option
@click.option("--rate", type=click.IntRange(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE), default=None,
              help="Sample rate of raw PCM on stdin (default: the model's).")
@click.option("--stdin-format", type=click.Choice(STDIN_FORMATS), default="auto",
              show_default=True,
              help="stdin: WAV header or raw s16le audio (speech models), else CSV lines.")
@click.option("--columns", default=None, help="CSV/.npy columns to use: indices or header names, "
              "comma-separated.")
@click.option("--frame-ms", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frame duration when the model does not say (default 10).")
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Print detections (smoothed posterior crossing this) instead of every chunk.")
@click.option("--smooth-ms", type=click.FloatRange(min=0), default=0.0,
              help="Moving-average window over posteriors for --threshold.")
@click.option("--ignore", multiple=True,
              help="Label that never fires a detection (repeatable; default: background names).")
@click.option("--state", "state_map", multiple=True, metavar="IN=OUT",
              help="ONNX state input and the output it becomes (repeatable, hidden state "
              "first; default: pairs by name, h0->h_n, h->hn, state->stateN).")
@click.option("--frame-samples", type=click.IntRange(1), default=None, metavar="N",
              help="Raw-sample ONNX model: N new samples per model step (a WAV or stdin "
              "PCM feeds it directly).")
@click.option("--context-samples", type=click.IntRange(0), default=0, show_default=True,
              metavar="M", help="With --frame-samples: M samples of left context before "
              "each step's N (carried between chunks).")
@click.option("--sample-rate", type=click.IntRange(MIN_SAMPLE_RATE, MAX_SAMPLE_RATE),
              default=16000, show_default=True,
              help="With --frame-samples: the model's sample rate (audio is resampled to it).")
@click.option("--const", "consts", multiple=True, metavar="NAME=VALUE",
              help="With --frame-samples: value of another model input, e.g. sr=16000 "
              "(repeatable).")
@click.option("--output", "output_name", default=None, metavar="NAME",
              help="With --frame-samples: the output to report (default: first non-state).")
@click.option("--events", is_flag=True,
              help="Print speech start/end segments from a per-frame probability output "
              "instead of every chunk.")
@click.option("--on", "on_threshold", type=click.FloatRange(0, 1, min_open=True), default=0.5,
              show_default=True, help="--events: probability that starts speech.")
@click.option("--off", "off_threshold", type=click.FloatRange(0, 1), default=None,
              help="--events: probability below which speech stops (default: on - 0.15).")
@click.option("--min-speech-ms", type=click.FloatRange(min=0), default=250.0, show_default=True,
              help="--events: shorter segments are dropped.")
@click.option("--min-silence-ms", type=click.FloatRange(min=0), default=100.0,
              show_default=True, help="--events: shorter pauses do not end a segment.")
@handle_errors
def stream(model, input_path, chunk_ms, chunk_frames, as_json, backend, rate, stdin_format,
           columns, frame_ms, threshold, smooth_ms, ignore, state_map, frame_samples,
           context_samples, sample_rate, consts, output_name, events, on_threshold,
           off_threshold, min_speech_ms, min_silence_ms):
    """Stream INPUT through MODEL chunk by chunk, carrying the recurrent state.

    INPUT is a .wav (speech models), .csv (one frame per row) or .npy (T, F)
    file, or - (the default) for stdin read as it arrives: raw PCM s16le
    (--rate) or a WAV stream for speech models, CSV lines otherwise. A summary
    (frames, chunks, p50/p99 chunk latency, real-time factor) goes to stderr
    at the end or on Ctrl-C.

    \b
        $ edgelstm stream examples/fsdd/model examples/fsdd/samples/8_jackson_2.wav --json
        $ arecord -f S16_LE -r 8000 | edgelstm stream examples/fsdd/model -
        $ some-sensor-tool | edgelstm stream sensor.onnx - --chunk-frames 5
        $ edgelstm stream torch_lstm.onnx x.npy --backend mlx --state h=hn --state c=cn
        $ edgelstm stream kws/model mic.wav --threshold 0.8 --smooth-ms 300
        $ edgelstm stream vad.onnx a.wav --frame-samples 512 --context-samples 64 --events

    With --frame-samples, MODEL is an ONNX graph taking M+N raw samples, its
    state and constant inputs (--const sr=16000) per call, as streaming VADs
    are published; each chunk is --chunk-frames such steps, and --events
    prints speech segments from its probability output.
    """
    from edgelstm.streaming.detect import DEFAULT_IGNORE, Detector
    from edgelstm.streaming.run import DEFAULT_FRAME_MS, open_input, run_stream
    from edgelstm.streaming.session import StreamingSession

    if chunk_ms is not None and chunk_frames is not None:
        raise click.UsageError("--chunk-ms and --chunk-frames are mutually exclusive")
    states = {}
    for pair in state_map:
        src, sep, dst = pair.partition("=")
        if not sep or not src.strip() or not dst.strip():
            raise click.BadParameter(f"{pair!r} is not IN=OUT", param_hint="--state")
        states[src.strip()] = dst.strip()
    if frame_samples is not None:
        from edgelstm.quantize.onnx_verify import parse_consts

        session = StreamingSession.from_onnx_samples(
            model, frame_samples, context_samples, sample_rate, consts=parse_consts(consts),
            backend=backend or "onnxruntime", states=states or None, output=output_name)
    elif consts or output_name:
        raise click.UsageError("--const and --output need --frame-samples")
    else:
        session = StreamingSession.from_path(model, backend=backend, states=states or None)
    fms = frame_ms or session.frame_ms or DEFAULT_FRAME_MS
    n = chunk_frames or max(1, round((chunk_ms or 100.0) / fms))
    if n > MAX_CHUNK_FRAMES:
        raise click.BadParameter(f"{chunk_ms} ms is {n} frames; the limit is "
                                 f"{MAX_CHUNK_FRAMES}", param_hint="--chunk-ms")
    session = StreamingSession(session.backend, chunk_frames=n)
    cols = None
    if columns:  # indices as ints (CSV and .npy), names as strings (CSV headers)
        cols = [int(c) if c.strip().lstrip("-").isdigit() else c.strip()
                for c in columns.split(",")]
    chunks, name = open_input(session, input_path, chunk_frames=n, rate=rate,
                              stdin_format=stdin_format, columns=cols)
    detector = None
    if events and threshold is not None:
        raise click.UsageError("--events and --threshold are mutually exclusive")
    if events:
        from edgelstm.streaming.segments import SegmentDetector

        detector = SegmentDetector(on_threshold, off_threshold,
                                   _frames_for(min_speech_ms, fms), _frames_for(min_silence_ms,
                                                                                fms), fms)
    elif threshold is not None:
        if not session.labels:
            raise click.UsageError("--threshold needs a model with labels")
        detector = Detector(session.labels, threshold, max(1, round(smooth_ms / fms)),
                            ignore=tuple(ignore) or DEFAULT_IGNORE, frame_ms=fms)
    session.warmup()
    view = _LiveView(session, fms)
    if as_json:
        on_result = None if detector else _print_json
        on_detection = _print_json
    else:
        on_result = None if detector else view.show
        on_detection = view.detection
    summary = run_stream(session, chunks, name=name, on_result=on_result, detector=detector,
                         on_detection=on_detection, frame_ms=fms)
    view.close()
    log(summary.line())
    if summary.interrupted:
        sys.exit(130)


def _frames_for(ms: float, frame_ms: float) -> int:
    """Frames covering at least ``ms``."""
    return int(math.ceil(ms / frame_ms - 1e-9))


def _print_json(item) -> None:
    _out(json.dumps(item.to_dict()))


def _out(text: str, nl: bool = True) -> None:
    """Write to stdout; a closed pipe (``| head``) ends the stream quietly."""
    try:
        click.echo(text, nl=nl)
        sys.stdout.flush()
    except BrokenPipeError:
        # keep the interpreter's final flush from failing on the dead pipe
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise StopStream() from None


class _LiveView:
    """A readable view: one updating line on a terminal, one line per chunk otherwise."""

    def __init__(self, session, frame_ms: float):
        self.labels = session.labels
        self.frame_ms = frame_ms
        self.tty = sys.stdout.isatty()
        self.dirty = False

    def show(self, r) -> None:
        t = r.end * self.frame_ms / 1000.0
        head = f"[{t:8.2f} s] chunk {r.chunk:5d}  frames {r.start}-{r.end}"
        if r.label is not None:
            top = sorted(r.scores.items(), key=lambda kv: -kv[1])[:3]
            body = f"{r.label:<12} " + "  ".join(f"{k} {v:.2f}" for k, v in top)
        else:
            last = r.output[-1]
            body = "out " + " ".join(f"{v:+.3f}" for v in last[:4]) + (" ..." if len(last) > 4
                                                                         else "")
        line = f"{head}  {body}  {r.latency_ms:6.2f} ms"
        if self.tty:
            _out("\r" + line.ljust(100)[:120], nl=False)
            self.dirty = True
        else:
            _out(line)

    def detection(self, d) -> None:
        if hasattr(d, "line"):  # a speech segment event
            if self.dirty:
                _out("")
                self.dirty = False
            _out(d.line())
            return
        when = f"{d.time_s:.2f} s" if d.time_s is not None else f"frame {d.frame}"
        if self.dirty:
            _out("")
            self.dirty = False
        _out(f"detected {d.label} ({d.score:.2f}) at {when}")

    def close(self) -> None:
        if self.dirty:
            _out("")
