"""Second half of the ONNX importer: walked graph -> native model, then a numeric check.

:mod:`edgelstm.converters.onnx_import` walks the graph; this module turns
its recurrent layers, normalisation, head and outputs into an edgelstm
``SequenceModel`` (weights through :mod:`edgelstm.converters.gates`) and
compares the result with onnxruntime on a random input.
"""

from __future__ import annotations

import numpy as np

from edgelstm.converters import gates
from edgelstm.errors import ConversionError, EdgeLSTMError, UnsupportedError

_KNOWN_ATTRS = {
    "lstm": {"hidden_size", "direction", "clip", "activations", "activation_alpha",
             "activation_beta", "layout", "input_forget"},
    "gru": {"hidden_size", "direction", "clip", "activations", "activation_alpha",
            "activation_beta", "layout", "linear_before_reset"},
    "rnn": {"hidden_size", "direction", "clip", "activations", "activation_alpha",
            "activation_beta", "layout"},
}
_DEFAULT_ACTS = {"lstm": ("sigmoid", "tanh", "tanh"), "gru": ("sigmoid", "tanh"),
                 "rnn": ("tanh",)}


def _activations(layer) -> list | None:
    """Per-layer activation specs (one direction's worth), or ``None`` for the defaults."""
    from edgelstm.nn import activations as A

    attrs = layer.attrs
    names = attrs.get("activations")
    if names is None:
        if "activation_alpha" in attrs or "activation_beta" in attrs:
            raise UnsupportedError(f"node '{layer.node}': activation_alpha/beta without "
                                   "activations")
        return None
    n = len(_DEFAULT_ACTS[layer.cell])
    if len(names) != n * layer.dirs:
        raise UnsupportedError(f"node '{layer.node}': attribute 'activations' has {len(names)} "
                               f"names, expected {n * layer.dirs}")
    alphas = list(attrs.get("activation_alpha", []))
    betas = list(attrs.get("activation_beta", []))
    specs = []
    for name in names:
        try:
            base = A.spec(name)
        except ValueError:
            raise UnsupportedError(f"node '{layer.node}': activation {name!r} is not "
                                   "supported") from None
        # as onnxruntime: values are consumed in order by the functions that take them
        alpha = alphas.pop(0) if base[1] is not None and alphas else None
        beta = betas.pop(0) if base[2] is not None and betas else None
        specs.append(A.spec(name, alpha, beta))
    if specs[:n] != specs[n:] and layer.dirs == 2:
        raise UnsupportedError(f"node '{layer.node}': different activations per direction "
                               "have no native form")
    specs = specs[:n]
    if tuple(s[0] for s in specs) == _DEFAULT_ACTS[layer.cell]:
        return None
    return [list(s) for s in specs]


def _options(layers) -> dict:
    first = layers[0]
    cell = first.cell
    for layer in layers:
        extra = sorted(set(layer.attrs) - _KNOWN_ATTRS[cell])
        if extra:
            raise UnsupportedError(f"node '{layer.node}' ({cell.upper()}): attribute "
                                   f"'{extra[0]}' is not supported")
    opts: dict = {}
    per_layer = []
    for layer in layers:
        o = {"clip": layer.attrs.get("clip"), "activations": _activations(layer)}
        if cell == "lstm":
            o["input_forget"] = bool(layer.attrs.get("input_forget", 0))
        if cell == "gru":
            o["linear_before_reset"] = bool(layer.attrs.get("linear_before_reset", 0))
        per_layer.append(o)
    for layer, o in zip(layers[1:], per_layer[1:], strict=True):
        if o != per_layer[0] or layer.cell != cell or layer.dirs != first.dirs \
                or layer.hidden != first.hidden:
            raise ConversionError(f"node '{layer.node}' differs from node '{first.node}' "
                                  "(cell, direction, hidden size or attributes); a native "
                                  "stack needs identical layers")
    opts = dict(per_layer[0])
    if opts["clip"] is not None:
        opts["clip"] = float(opts["clip"])
    if cell == "lstm":
        opts["peephole"] = any(layer.P is not None for layer in layers)
    if cell == "rnn":
        acts = opts.pop("activations")
        if acts is None:
            opts["nonlinearity"] = "tanh"
        elif len(acts) == 1 and acts[0][0] == "relu":
            opts["nonlinearity"] = "relu"
        else:
            opts["activations"] = acts
    return opts


def _weights(layers, cell, has_bias, peephole) -> dict[str, np.ndarray]:
    out = {}
    for k, layer in enumerate(layers):
        H = layer.hidden
        for d, dname in enumerate(("forward", "reverse")[: layer.dirs]):
            pre = f"layers.{k}.{dname}."
            B = layer.B[d] if layer.B is not None else None
            if cell == "lstm":
                if has_bias and B is None:
                    B = np.zeros((8 * H,), np.float32)
                P = layer.P[d] if layer.P is not None else None
                if peephole and P is None:
                    P = np.zeros((3 * H,), np.float32)
                Wx, Wh, bias, peep = gates.lstm_from_onnx(layer.W[d], layer.R[d], B, P)
                out.update({pre + "Wx": Wx, pre + "Wh": Wh})
                if has_bias:
                    out[pre + "bias"] = bias
                if peephole:
                    out[pre + "peephole"] = peep
            elif cell == "gru":
                if has_bias and B is None:
                    B = np.zeros((6 * H,), np.float32)
                Wx, Wh, b, bhn = gates.gru_from_onnx(layer.W[d], layer.R[d], B)
                out.update({pre + "Wx": Wx, pre + "Wh": Wh})
                if has_bias:
                    out.update({pre + "b": b, pre + "bhn": bhn})
            else:
                if has_bias and B is None:
                    B = np.zeros((2 * H,), np.float32)
                Wxh, Whh, bias = gates.rnn_from_onnx(layer.W[d], layer.R[d], B)
                out.update({pre + "Wxh": Wxh, pre + "Whh": Whh})
                if has_bias:
                    out[pre + "bias"] = bias
    return out


def _normalisation(affine, size):
    if not affine:
        return None
    ops = [op for op, _ in affine]
    full = lambda v: np.broadcast_to(v, (size,)).astype(np.float32)  # noqa: E731
    if ops == ["sub", "div"]:
        return full(affine[0][1]), full(affine[1][1])
    a, b = np.ones(size, np.float64), np.zeros(size, np.float64)
    for op, c in affine:
        c = np.broadcast_to(c.astype(np.float64), (size,))
        if op == "sub":
            b = b - c
        elif op == "add":
            b = b + c
        elif op == "mul":
            a, b = a * c, b * c
        else:
            a, b = a / c, b / c
    if np.any(a == 0):
        raise ConversionError("input normalisation multiplies a feature by zero")
    return (-b / a).astype(np.float32), (1.0 / a).astype(np.float32)


def _fold_summary(head, blocks, all_rows) -> dict:
    """Head over ``blocks`` (rows or sums of rows, ``H`` features each) -> head over plain rows.

    A head ``W (C, n*H)`` on ``[sum(rows of block 0), ...]`` equals a head on the
    distinct rows concatenated, with each block's slice of ``W`` added to the
    slice of every row in it. Returns the head with ``W`` refolded and
    ``summary`` (indices into ``all_rows``, the final state's rows).
    """
    from edgelstm.converters.onnx_import import _terms

    W = np.asarray(head["W"], np.float64)
    if W.shape[1] % len(blocks):
        raise ConversionError(f"head weight has shape {W.shape}, which does not split into "
                              f"{len(blocks)} state rows")
    H = W.shape[1] // len(blocks)
    order = []
    for block in blocks:
        for row in _terms(block):
            if row not in order:
                order.append(row)
    out = np.zeros((W.shape[0], len(order) * H), np.float64)
    for j, block in enumerate(blocks):
        for row in _terms(block):
            i = order.index(row)
            out[:, i * H:(i + 1) * H] += W[:, j * H:(j + 1) * H]
    return {**head, "W": out.astype(np.float32), "summary": [all_rows.index(r) for r in order]}


def _outputs(walker, L, dirs):
    """Classify graph outputs: (main name, head kind, head dict, {state kind: name})."""
    from edgelstm.converters.onnx_import import Opaque, Seq, State

    last_rows = [(L - 1, d) for d in range(dirs)]
    all_rows = [(k, d) for k in range(L) for d in range(dirs)]
    want = walker.input_labels
    main, states = None, {}
    for out in walker.graph.output:
        v = walker.env.get(out.name)
        found = None
        if isinstance(v, State) and v.rows == all_rows and v.labels == ("R", "B", "H"):
            states[v.kind] = out.name
            continue
        if isinstance(v, Seq) and v.stage == ("rnn", L - 1) and v.labels == want:
            found = (None, None)
        elif isinstance(v, Seq) and v.stage == "head":
            src = v.head["src"]
            if src.stage == ("rnn", L - 1) and src.labels == want:
                found = ("frame", v.head)
            elif src.stage[0] == "summary" and list(src.stage[1]) == last_rows:
                found = ("sequence", v.head)
            elif src.stage == ("last", L - 1) and dirs == 1:
                found = ("sequence", v.head)
            elif src.stage[0] == "summary":
                found = ("sequence", _fold_summary(v.head, src.stage[1], all_rows))
            elif src.stage[0] == "last":
                raise ConversionError(f"graph output '{out.name}': the per-sequence head reads "
                                      f"the last step of layer {src.stage[1]}, not of the last "
                                      "layer")
        if found is None:
            why = f": {v.why}" if isinstance(v, Opaque) else ""
            raise ConversionError(f"graph output '{out.name}' is not the recurrent stack's "
                                  f"output, a linear head or the final states{why}")
        if main is not None:
            raise ConversionError(f"graph outputs '{main[0]}' and '{out.name}' are both model "
                                  "outputs; a native model has one")
        main = (out.name, *found)
    if main is None:
        raise ConversionError("no graph output is the recurrent stack's output or its head")
    return main, states


def build_native(walker):
    """Build a ``SequenceModel`` (eval mode) from a walked graph."""
    import mlx.core as mx

    from edgelstm.io.checkpoint import load_weights
    from edgelstm.nn.layers import RECURRENT
    from edgelstm.nn.model import SequenceModel

    layers = walker.layers
    if not layers:
        raise ConversionError("the graph has no LSTM, GRU or RNN node")
    cell, dirs, H = layers[0].cell, layers[0].dirs, layers[0].hidden
    opts = _options(layers)
    has_bias = any(layer.B is not None for layer in layers)
    input_size = int(layers[0].W.shape[-1])
    (main, head_kind, head), states = _outputs(walker, len(layers), dirs)
    rnn = RECURRENT[cell](input_size, H, num_layers=len(layers), bidirectional=dirs == 2,
                          bias=has_bias, batch_first=bool(walker.batch_first), **opts)
    weights = _weights(layers, cell, has_bias, opts.get("peephole", False))
    load_weights(rnn, {k: mx.array(np.ascontiguousarray(v, np.float32))
                       for k, v in weights.items()}, source="ONNX graph")
    norm = _normalisation(walker.affine, input_size)
    ins = [walker.input_name] + [i.name for i in walker.graph.input
                                 if i.name != walker.input_name and i.name in walker.env
                                 and (type(walker.env[i.name]).__name__ == "StateIn"
                                      or i.name == walker.lengths_input)]
    outs = [main] + [o.name for o in walker.graph.output if o.name != main]
    num_outputs = int(head["W"].shape[0]) if head is not None else None
    summary = head.get("summary") if head is not None else None
    model = SequenceModel(rnn, num_outputs=num_outputs, head=head_kind, normalize=norm is not None,
                          input_names=ins, output_names=outs, summary=summary)
    if norm is not None:
        model.norm.mean, model.norm.std = mx.array(norm[0]), mx.array(norm[1])
    if head is not None:
        W = np.ascontiguousarray(head["W"], np.float32)
        width = model.head.weight.shape[1]
        if W.shape[1] != width:
            raise ConversionError(f"head weight has shape {W.shape}, expected (C, {width})")
        b = head["b"] if head["b"] is not None else np.zeros(W.shape[0], np.float32)
        model.head.weight = mx.array(W)
        model.head.bias = mx.array(np.ascontiguousarray(b, np.float32))
    mx.eval(model.parameters())
    model.eval()
    model._onnx_states = states  # state output names, for the import check
    return model


def declared_steps(proto, name: str, batch_first: bool) -> int | None:
    """The input's static time length, when the graph fixes one (e.g. tf2onnx's Keras)."""
    for vi in proto.graph.input:
        dims = vi.type.tensor_type.shape.dim if vi.name == name else ()
        if len(dims) == 3 and dims[1 if batch_first else 0].dim_value > 0:
            return int(dims[1 if batch_first else 0].dim_value)
    return None


def check_import(proto, model, walker, atol: float) -> float | None:
    """Run graph and model on one random input; raise if they differ by more than ``atol``.

    Returns the max abs difference, or ``None`` when no runtime could run the graph.
    """
    import mlx.core as mx

    from edgelstm.converters import run_onnx

    rnn = model.rnn
    Bn, T = 2, declared_steps(proto, walker.input_name, rnn.batch_first) or 5
    rng = np.random.default_rng(0)
    x = rng.standard_normal((Bn, T, rnn.input_size)).astype(np.float32)
    if not rnn.batch_first:
        x = x.transpose(1, 0, 2).copy()
    feeds = {walker.input_name: x}
    zero = np.zeros((rnn.num_layers * rnn.num_directions, Bn, rnn.hidden_size), np.float32)
    for name in model.input_names[1:]:
        if name != walker.lengths_input:
            feeds[name] = zero
    lengths = None
    if walker.lengths_input is not None:  # padded batch: one full, one short sequence
        lengths = np.array([T, 2], np.int32)
        feeds[walker.lengths_input] = lengths
    got = None
    for backend in ("onnxruntime", "mlx"):
        try:
            got = run_onnx(proto, feeds, backend=backend)
            break
        except EdgeLSTMError:
            continue
    if got is None:
        return None
    y, final = model(mx.array(x), lengths=None if lengths is None else mx.array(lengths),
                     return_state=True)
    final = final if isinstance(final, tuple) else (final,)
    pairs = [(model.output_names[0], np.array(y))]
    for kind, i in (("h", 0), ("c", 1)):
        name = model._onnx_states.get(kind)
        if name is not None and i < len(final):
            pairs.append((name, np.array(final[i])))
    worst = 0.0
    for name, want in pairs:
        ref = got[name]
        if ref.shape != want.shape:
            raise ConversionError(f"imported model gives output '{name}' of shape {want.shape}, "
                                  f"the graph {ref.shape}")
        worst = max(worst, float(np.max(np.abs(ref - want))) if ref.size else 0.0)
    if not worst <= atol:
        raise ConversionError(f"imported model differs from the graph by {worst:.3g} (max abs, "
                              f"tolerance {atol:g}); the graph is not a plain recurrent stack "
                              "plus head")
    return worst
