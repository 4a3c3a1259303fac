"""The forms ``edgelstm bench`` times, each built on the fly from one model's weights.

A :class:`Form` is one backend's copy of the model: ``batch(x)`` returns a
zero-argument callable that runs ``x`` ``(B, T, I)`` once and waits for the
result; ``stream(chunk)`` returns a callable that feeds one ``(1, chunk, I)``
chunk, carrying the recurrent state from call to call. ``size_bytes`` is the
form's size on disk (saved to a temporary folder). A backend that cannot be
built here raises :class:`Unavailable` with a one-line reason.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BACKENDS = ("mlx", "mlx-int8", "mlx-pure", "mlx-nn", "onnxruntime", "onnxruntime-int8",
            "onnxruntime-ort-int8", "openvino", "torch")


class Unavailable(Exception):
    """A backend cannot run this model here; ``str()`` is the one-line reason."""


@dataclass
class Form:
    """One backend's copy of the model (see the module docstring)."""

    backend: str
    size_bytes: int
    batch: Callable[[np.ndarray], Callable[[], object]]
    stream: Callable[[int], Callable[[], object]] | None


def _disk(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def build(backend: str, model, model_path, is_onnx: bool, tmp: Path, threads: int | None,
          rng: np.random.Generator) -> Form:
    """Build ``backend``'s form of ``model`` (loaded from ``model_path``) under ``tmp``.

    Raises:
        Unavailable: the backend cannot run this model here (the reason).
    """
    builders = {"mlx": _mlx, "mlx-pure": _mlx, "mlx-int8": _mlx_int8, "mlx-nn": _mlx_nn,
                "onnxruntime": _ort, "onnxruntime-int8": _ort, "onnxruntime-ort-int8": _ort,
                "openvino": _openvino, "torch": _torch}
    form = builders[backend](backend, model, model_path, is_onnx, tmp, threads, rng)
    if getattr(getattr(model, "rnn", model), "num_directions", 1) != 1:
        form.stream = None  # a reverse direction needs the whole input: no streaming
    return form


def _summary_why_not(model) -> str | None:
    if getattr(model, "summary", None) is not None:
        return "its sequence head reads other final states than the last layer's (summary)"
    return None


def _parts(model):
    """``(rnn, norm or None, head or None, head_type)`` of a native model."""
    rnn = getattr(model, "rnn", model)
    norm = model["norm"] if "norm" in model else None
    head = model.head if getattr(model, "head_type", None) else None
    return rnn, norm, head, getattr(model, "head_type", None)


def _mlx_callables(model, fast):
    import mlx.core as mx

    from edgelstm.nn.model import SequenceModel

    seq = isinstance(model, SequenceModel)

    def batch(x):
        xa = mx.array(x)
        mx.eval(xa)
        return lambda: mx.eval(model(xa, fast=fast))

    def stream(chunk):
        xa = mx.array(rng_chunk(chunk, model.input_size))
        mx.eval(xa)
        box = [None]

        def step():
            if seq:
                y, box[0] = model(xa, state=box[0], return_state=True, fast=fast)
            else:
                y, box[0] = model(xa, box[0], fast=fast)
            mx.eval(y, box[0])
        return step

    return batch, stream


def rng_chunk(chunk: int, width: int) -> np.ndarray:
    """A fixed random ``(1, chunk, width)`` float32 chunk."""
    return np.random.default_rng(1).standard_normal((1, chunk, width)).astype(np.float32)


def _mlx(backend, model, model_path, is_onnx, tmp, threads, rng):
    path = tmp / "mlx"
    if not path.exists():
        model.save(path)
    batch, stream = _mlx_callables(model, None if backend == "mlx" else False)
    return Form(backend, _disk(path), batch, stream)


def _mlx_int8(backend, model, model_path, is_onnx, tmp, threads, rng):
    from edgelstm.io.checkpoint import load
    from edgelstm.quantize import quantize_mlx

    q = quantize_mlx(load(model_path))
    q.save(tmp / "mlx-int8")
    batch, stream = _mlx_callables(q, None)
    return Form(backend, _disk(tmp / "mlx-int8"), batch, stream)


def _mlx_nn(backend, model, model_path, is_onnx, tmp, threads, rng):
    """The same weights in an ``mlx.nn.LSTM``/``GRU``/``RNN`` stack, where they map."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    rnn, norm, head, head_type = _parts(model)
    why = _mlx_nn_why_not(rnn) or _summary_why_not(model)
    if why:
        raise Unavailable(why)
    cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[rnn.cell_type]
    layers = []
    for k, layer in enumerate(rnn.layers):
        width = rnn.input_size if k == 0 else rnn.hidden_size
        kw = {}
        if rnn.cell_type == "rnn" and rnn.cell_options.get("nonlinearity") == "relu":
            kw["nonlinearity"] = nn.relu
        m = cls(width, rnn.hidden_size, **kw)
        m.update(layer.forward.parameters())
        layers.append(m)
    weights = {f"{k}.{n}": v for k, m in enumerate(layers) for n, v in tree_flatten(m.parameters())}
    mx.save_safetensors(str(tmp / "mlx-nn.safetensors"), weights)

    def forward(x, state):
        if norm is not None:
            x = norm(x)
        new = []
        for k, m in enumerate(layers):
            s = state[k] if state else None
            if rnn.cell_type == "lstm":
                h, c = m(x, *(s or (None, None)))
                new.append((h[:, -1], c[:, -1]))
                x = h
            else:
                x = m(x, s)
                new.append(x[:, -1])
        y = x
        if head_type == "sequence":
            y = head(x[:, -1])
        elif head_type == "frame":
            y = head(x)
        return y, new

    def batch(x):
        xa = mx.array(x)
        mx.eval(xa)

        def call():
            y = forward(xa, None)[0]
            mx.eval(y)
            return y  # the timing ignores it; parity tests read it
        return call

    def stream(chunk):
        xa = mx.array(rng_chunk(chunk, rnn.input_size))
        box = [None]

        def step():
            y, box[0] = forward(xa, box[0])
            mx.eval(y, box[0])
        return step

    return Form(backend, _disk(tmp / "mlx-nn.safetensors"), batch, stream)


def _mlx_nn_why_not(rnn) -> str | None:
    opts = rnn.cell_options
    if getattr(rnn, "quantization", None):
        return "mlx.nn has no int8 recurrent layers"
    if rnn.num_directions != 1:
        return "mlx.nn recurrent layers are unidirectional"
    if not getattr(rnn, "batch_first", True):
        return "mlx.nn recurrent layers are batch-first"
    if opts.get("activations") is not None or opts.get("clip") is not None:
        return "mlx.nn has no custom activations or cell clip"
    if rnn.cell_type == "lstm" and (opts.get("peephole") or opts.get("input_forget")):
        return "mlx.nn.LSTM has no peepholes or coupled input-forget gate"
    if rnn.cell_type == "gru" and not opts.get("linear_before_reset", True):
        return "mlx.nn.GRU computes only the linear_before_reset form"
    return None


def _onnx_file(model, model_path, is_onnx, tmp: Path, streaming: bool) -> Path:
    from edgelstm.converters import to_onnx

    if is_onnx and not streaming:
        return Path(model_path)
    path = tmp / ("stream.onnx" if streaming else "model.onnx")
    if not path.exists():
        to_onnx(model, path, streaming=streaming)
    return path


def _ort(backend, model, model_path, is_onnx, tmp, threads, rng):
    import onnxruntime as ort

    from edgelstm.errors import EdgeLSTMError

    fmt = {"onnxruntime": None, "onnxruntime-int8": "onnx-qdq",
           "onnxruntime-ort-int8": "onnx-ort"}[backend]

    def form(streaming: bool) -> Path:
        src = _onnx_file(model, model_path, is_onnx, tmp, streaming)
        if fmt is None:
            return src
        dst = tmp / f"{src.stem}.{fmt}.onnx"
        if not dst.exists():
            from edgelstm.quantize import quantize_model

            try:
                quantize_model(src, dst, format=fmt)
            except EdgeLSTMError as exc:
                raise Unavailable(str(exc).splitlines()[0]) from None
        return dst

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads

    def session(path):
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    path = form(False)
    sess = session(path)
    names = [i.name for i in sess.get_inputs()]
    if len(names) != 1:
        raise Unavailable(f"benchmarking needs a single-input ONNX model; it takes {names}")

    def batch(x):
        return lambda: sess.run(None, {names[0]: x})

    stream = None
    if getattr(getattr(model, "rnn", model), "num_directions", 1) == 1:
        def stream(chunk):
            s = session(form(True))
            ins = [i for i in s.get_inputs()]
            outs = [o.name for o in s.get_outputs()]
            x = rng_chunk(chunk, model.input_size)
            feeds = {i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape],
                                      np.float32) for i in ins[1:]}
            state_out = outs[1:1 + len(feeds)]

            def step():
                res = s.run(None, {ins[0].name: x, **feeds})
                feeds.update(zip(feeds, res[1:1 + len(state_out)], strict=True))
            return step

    return Form(backend, _disk(path), batch, stream)


def _openvino(backend, model, model_path, is_onnx, tmp, threads, rng):
    """The ONNX export (and its streaming form) compiled by OpenVINO's CPU plugin, f32."""
    from edgelstm.converters import openvino_run
    from edgelstm.errors import UnsupportedError

    if not openvino_run.available():
        raise Unavailable(f"OpenVINO is not installed ({openvino_run.INSTALL_HINT})")

    def compiled(streaming: bool):
        try:
            return openvino_run.compile_onnx(
                _onnx_file(model, model_path, is_onnx, tmp, streaming), threads=threads)
        except UnsupportedError as exc:
            raise Unavailable(str(exc).splitlines()[0]) from None

    net = compiled(False)
    if len(net.inputs) != 1:
        raise Unavailable(f"benchmarking needs a single-input ONNX model; it takes "
                          f"{[p.get_any_name() for p in net.inputs]}")
    request = net.create_infer_request()

    def batch(x):
        return lambda: request.infer({0: x})

    def stream(chunk):
        snet = compiled(True)
        req = snet.create_infer_request()
        x = rng_chunk(chunk, model.input_size)
        # inputs: x, then the states; outputs: y, then the new states in the same order
        states = [np.zeros([d.get_length() if d.is_static else 1 for d in p.get_partial_shape()],
                           np.float32) for p in snet.inputs[1:]]

        def step():
            res = req.infer({0: x, **{k + 1: s for k, s in enumerate(states)}})
            states[:] = [np.array(res[snet.outputs[k + 1]]) for k in range(len(states))]
        return step

    return Form(backend, _disk(_onnx_file(model, model_path, is_onnx, tmp, False)), batch, stream)


def _torch(backend, model, model_path, is_onnx, tmp, threads, rng):
    """The same weights in ``torch.nn.LSTM``/``GRU``/``RNN`` (CPU), where they map."""
    if importlib.util.find_spec("torch") is None:
        raise Unavailable("PyTorch is not installed (pip install 'edgelstm[torch]')")
    import torch

    rnn, norm, head, head_type = _parts(model)
    why = _mlx_nn_why_not(rnn) or _summary_why_not(model)  # torch's layers have the same limits as mlx.nn's
    if why:
        raise Unavailable(why.replace("mlx.nn", "torch.nn"))
    if threads:
        torch.set_num_threads(threads)
    kind = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[rnn.cell_type]
    kw = {"nonlinearity": rnn.cell_options.get("nonlinearity", "tanh")} \
        if rnn.cell_type == "rnn" else {}
    net = kind(rnn.input_size, rnn.hidden_size, rnn.num_layers, batch_first=True, **kw).eval()
    with torch.no_grad():
        for k, layer in enumerate(rnn.layers):
            p = {n: np.array(v) for n, v in layer.forward.parameters().items()}
            p.setdefault("Wx", p.get("Wxh"))  # mlx.nn.RNN names them Wxh, Whh
            p.setdefault("Wh", p.get("Whh"))
            H = rnn.hidden_size
            getattr(net, f"weight_ih_l{k}").copy_(torch.from_numpy(p["Wx"]))
            getattr(net, f"weight_hh_l{k}").copy_(torch.from_numpy(p["Wh"]))
            b_ih = p.get("bias", p.get("b", np.zeros(p["Wx"].shape[0], np.float32)))
            b_hh = np.zeros_like(b_ih)
            if "bhn" in p:  # mlx.nn.GRU's recurrent bias of the new gate
                b_hh[2 * H:] = p["bhn"]
            getattr(net, f"bias_ih_l{k}").copy_(torch.from_numpy(b_ih))
            getattr(net, f"bias_hh_l{k}").copy_(torch.from_numpy(b_hh))
    def to_t(a):
        return torch.from_numpy(np.array(a))

    mean = std = None
    if norm is not None:
        mean, std = to_t(norm.mean), to_t(norm.std)
    lin = None
    if head is not None:
        lin = torch.nn.Linear(head.weight.shape[1], head.weight.shape[0])
        with torch.no_grad():
            lin.weight.copy_(to_t(head.weight))
            lin.bias.copy_(to_t(head.bias))
    torch.save(net.state_dict(), tmp / "torch.pt")

    @torch.inference_mode()
    def forward(x, state):
        if mean is not None:
            x = (x - mean) / std
        y, state = net(x, state)
        if head_type == "sequence":
            y = lin(y[:, -1])
        elif head_type == "frame":
            y = lin(y)
        return y, state

    def batch(x):
        xt = torch.from_numpy(x)
        return lambda: forward(xt, None)

    def stream(chunk):
        xt = torch.from_numpy(rng_chunk(chunk, rnn.input_size))
        box = [None]

        def step():
            _, box[0] = forward(xt, box[0])
        return step

    return Form(backend, _disk(tmp / "torch.pt"), batch, stream)
