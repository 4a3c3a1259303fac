"""Control flow: ``If``, ``Loop`` and ``Scan`` with nested subgraphs.

The runner prepares each subgraph attribute once (``ctx.graphs``) and binds
``ctx.scope`` to the enclosing environment while the node runs, so bodies
read outer-scope names directly. Loop and Scan iterate in Python, one body
call per step (the trip count is data; MLX builds each step lazily).
"""

from __future__ import annotations

import mlx.core as mx

from edgelstm.converters.onnx_exec.ops import opt, register, to_mx, to_np


@register("If", ("else_branch", "then_branch"))
def _if(ctx, ins):
    cond = bool(to_np(ins[0]).reshape(-1)[0])
    return ctx.graphs["then_branch" if cond else "else_branch"].call(ctx.scope, [])


def _stack(vals, axis=0):
    return mx.stack([to_mx(v) for v in vals], axis=axis)


def _cond_passthrough(body) -> bool:
    """Whether the body hands its condition input straight back (tf2onnx's ``for`` loops)."""
    if len(body.input_names) < 2 or not body.output_names:
        return False
    cin, cout = body.input_names[1], body.output_names[0]
    return cin == cout or any(
        c.node.op_type == "Identity" and list(c.node.input) == [cin]
        and list(c.node.output) == [cout] for c, _ in body.plan)


@register("Loop", ("body",))
def _loop(ctx, ins):
    body = ctx.graphs["body"]
    m, cond = opt(ins, 0), opt(ins, 1)
    trips = int(to_np(m).reshape(-1)[0]) if m is not None else None
    keep = bool(to_np(cond).reshape(-1)[0]) if cond is not None else True
    # a condition the body passes through never changes: no host read per iteration,
    # so a Loop with a shape-derived trip count can be traced like a Scan
    fixed = _cond_passthrough(body)
    if fixed and keep and trips is None:
        raise ctx.unsupported("a Loop without trip count whose condition never changes")
    state = list(ins[2:])
    n_state = len(state)
    scans: list[list] = []
    i = 0
    while keep and (trips is None or i < trips):
        # MLX scalars, not numpy: one signature for every iteration, so a compiled body
        # is reused (a node that needs the count on the host runs eagerly in it)
        outs = body.call(ctx.scope, [mx.array(i, mx.int64), mx.array(keep), *state])
        if not fixed:
            keep = bool(to_np(outs[0]).reshape(-1)[0])
        state = outs[1 : 1 + n_state]
        step = outs[1 + n_state :]
        if not scans:
            scans = [[] for _ in step]
        for acc, v in zip(scans, step, strict=True):
            acc.append(v)
        i += 1
    n_scan = len(body.output_names) - 1 - n_state
    if n_scan and not scans:
        raise ctx.unsupported("a Loop with scan outputs that runs zero iterations")
    return state + [_stack(acc) for acc in scans]


@register("Scan", ("body", "num_scan_inputs", "scan_input_axes", "scan_input_directions",
                   "scan_output_axes", "scan_output_directions"))
def _scan(ctx, ins):
    if ctx.opset < 9:
        raise ctx.unsupported("opset-8 Scan (batched, with sequence_lens)")
    body = ctx.graphs["body"]
    m = ctx.get("num_scan_inputs")
    n_state = len(ins) - m
    state, xs = list(ins[:n_state]), [to_mx(v) for v in ins[n_state:]]
    in_axes = list(ctx.get("scan_input_axes", [0] * m))
    in_dirs = list(ctx.get("scan_input_directions", [0] * m))
    xs = [mx.moveaxis(x, a if a >= 0 else a + x.ndim, 0) for x, a in zip(xs, in_axes, strict=True)]
    xs = [x[::-1] if d else x for x, d in zip(xs, in_dirs, strict=True)]
    steps = xs[0].shape[0] if xs else 0
    scans: list[list] = [[] for _ in range(len(body.output_names) - n_state)]
    for t in range(steps):
        outs = body.call(ctx.scope, [*state, *(x[t] for x in xs)])
        state = outs[:n_state]
        for acc, v in zip(scans, outs[n_state:], strict=True):
            acc.append(v)
    if scans and not steps:
        raise ctx.unsupported("a Scan over zero steps")
    k = len(scans)
    out_axes = list(ctx.get("scan_output_axes", [0] * k))
    out_dirs = list(ctx.get("scan_output_directions", [0] * k))
    ys = []
    for acc, a, d in zip(scans, out_axes, out_dirs, strict=True):
        y = _stack(acc[::-1] if d else acc)
        ys.append(mx.moveaxis(y, 0, a if a >= 0 else a + y.ndim))
    return state + ys
