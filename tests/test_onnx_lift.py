"""Hand-written LSTM/GRU cells (tf2onnx Loops, Scans, unrolled steps) lifted to fused nodes.

Oracle: ONNX Runtime on the original graph. Every fixture runs on the MLX
executor with and without lifting, and (lifted graphs) on ONNX Runtime again,
within ATOL/RTOL (float32; the fused node sums the projections in another
order, so results differ by rounding only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgelstm.converters import from_onnx
from edgelstm.converters.lift_cells import lift_cells
from edgelstm.converters.onnx_exec.runner import OnnxMLXRunner
from edgelstm.errors import ConversionError

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import make_loop_fixtures as F  # noqa: E402

ATOL, RTOL = 1e-5, 1e-5
MODELS = F.build()
# graphs whose outputs a native model has: sequence or a Dense head on the last state
CONVERTIBLE = ["loop_gru_ra", "loop_gru_rb", "loop_lstm", "loop_gru_dyn", "scan_gru_ra",
               "scan_gru_rb"]


def _feeds(model, rng, batch=3, steps=F.T):
    feeds = {}
    for vi in model.graph.input:
        if vi.name == "steps":
            feeds["steps"] = np.array(steps, np.int64)
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in vi.type.tensor_type.shape.dim]
        shape = [batch if k == 0 else (steps if d is None else d) for k, d in enumerate(dims)]
        feeds[vi.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _ort(model, feeds):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def test_fixture_set_matches_expectations():
    assert set(MODELS) == set(F.LIFTED)
    kinds = {name.split("_")[0] for name in MODELS}
    assert kinds == {"loop", "scan", "step"}
    assert sum(1 for v in F.LIFTED.values() if not v) >= 5  # near misses
    for model in MODELS.values():
        onnx.checker.check_model(model)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lifted_set_and_parity(name, rng):
    """MLX with lifting == MLX op by op == ONNX Runtime; the lifted set is exactly as expected."""
    model = MODELS[name]
    before = model.SerializeToString()
    lifted_model, lifted = lift_cells(model)
    assert model.SerializeToString() == before  # the input model is not modified
    assert [(r.cell, r.form) for r in lifted] == F.LIFTED[name]
    with_lift, without = OnnxMLXRunner(model), OnnxMLXRunner(model, lift=False)
    assert [(r.cell, r.form) for r in with_lift.lifted] == F.LIFTED[name]
    assert without.lifted == []
    ops = [n.op_type for n in lifted_model.graph.node]
    inner = [m.op_type for n in lifted_model.graph.node for a in n.attribute
             if a.type == a.GRAPH for m in a.g.node]
    if lifted:
        want = {r.cell.upper() for r in lifted}
        assert want <= set(ops + inner)
        kept_loop = any(r.graph for r in lifted)  # only the body's step was fused
        assert kept_loop == ("Loop" in ops or "Scan" in ops)
        assert all(r.graph.startswith(("Loop '", "Scan '")) for r in lifted if r.graph)
        onnx.checker.check_model(lifted_model)
    else:
        assert lifted_model is model
    steps = (3, F.T) if "dyn" in name or name.startswith("scan") else (F.T,)
    for T in steps:
        feeds = _feeds(model, rng, steps=T)
        ref = _ort(model, feeds)
        assert ref
        got_lift, got_plain = with_lift.run(feeds), without.run(feeds)
        got_ort_lifted = _ort(lifted_model, feeds)
        for out, want in ref.items():
            for what, got in (("mlx lifted", got_lift), ("mlx op by op", got_plain),
                              ("ort lifted", got_ort_lifted)):
                np.testing.assert_allclose(got[out], want, atol=ATOL, rtol=RTOL,
                                           err_msg=f"{name} {out} {what} T={T}")


def test_lifted_records_describe_the_cell():
    _, lifted = lift_cells(MODELS["loop_gru_ra"])
    (r,) = lifted
    assert (r.cell, r.form, r.hidden_size, r.linear_before_reset) == ("gru", "loop", F.H, 1)
    assert r.replaced == [next(n.name for n in MODELS["loop_gru_ra"].graph.node
                               if n.op_type == "Loop")]
    assert "GRU" in str(r) and "loop" in str(r)
    assert lift_cells(MODELS["loop_gru_rb"])[1][0].linear_before_reset == 0
    (step,) = lift_cells(MODELS["step_lstm"])[1]
    assert step.form == "step" and len(step.replaced) >= 10  # the step's ops are gone


def test_short_loop_slices_and_keeps_names(rng):
    """M = 4 < T = 6: the lifted node reads x[:4]; outputs keep their names and shapes."""
    model = MODELS["loop_gru_short"]
    lifted_model, _ = lift_cells(model)
    assert "Slice" in [n.op_type for n in lifted_model.graph.node]
    feeds = _feeds(model, rng)
    got = OnnxMLXRunner(model).run(feeds)
    assert got["y"].shape == (3, 4, F.H) and got["h_n"].shape == (3, F.H)
    np.testing.assert_allclose(got["h_n"], got["y"][:, -1], atol=0, rtol=0)


def test_forms_can_be_chosen():
    # without "loop" the Loop stays and only the step in its body is fused
    (r,) = lift_cells(MODELS["loop_gru_ra"], forms=("scan", "step"))[1]
    assert r.form == "step" and r.graph.startswith("Loop '") and "in Loop" in str(r)
    assert lift_cells(MODELS["loop_gru_ra"], forms=("scan",))[1] == []
    assert [r.form for r in lift_cells(MODELS["scan_lstm"], forms=("scan",))[1]] == ["scan"]
    assert lift_cells(MODELS["step_gru"], forms=("loop",))[1] == []


def test_graphs_without_cells_are_returned_as_is():
    fx = Path(__file__).parent / "fixtures"
    for name in ("torch_gru_frame", "torch_lstm_bi_seq"):
        model = onnx.load(str(fx / f"{name}.onnx"))
        out, lifted = lift_cells(model)
        assert out is model and lifted == []


@pytest.mark.parametrize("name", CONVERTIBLE)
def test_convert_to_native_matches_ort(name, rng):
    """from_onnx maps the lifted graph to a native model equal to ORT on the original."""
    model = MODELS[name]
    native = from_onnx(model)
    assert native.input_names == ["x"]
    assert native.output_names == [o.name for o in model.graph.output]
    cell = {r.cell for r in lift_cells(model)[1]}.pop()
    assert type(native.rnn).__name__.lower().startswith(cell)
    for T in ((3, F.T) if "dyn" in name or name.startswith("scan") else (F.T,)):
        feeds = _feeds(model, rng, steps=T)
        ref = _ort(model, feeds)
        y = np.array(native(mx.array(feeds["x"])))
        np.testing.assert_allclose(y, ref[native.output_names[0]], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name,match", [
    ("loop_gru_short", "input X is not the model input"),
    ("loop_gru_backwards", r"cannot map node .*\(Slice\)"),  # the time reversal
    ("loop_lstm_state", "graph output 'h_n'"),
    ("step_gru", "input X is not the model input|cannot tell the time axis"),
    ("loop_gru_relu", "no LSTM, GRU or RNN node"),
])
def test_unconvertible_graphs_say_why(name, match):
    with pytest.raises(ConversionError, match=match):
        from_onnx(MODELS[name])


@pytest.mark.parametrize("name", ["loop_gru_dyn", "loop_lstm"])
def test_cli_convert_checkpoint_runs_like_ort(name, tmp_path, rng):
    """edgelstm convert tf2onnx-style.onnx ckpt --verify, then the checkpoint vs ORT."""
    from edgelstm.cli import cli
    from edgelstm.io.checkpoint import load_checkpoint

    src = tmp_path / f"{name}.onnx"
    onnx.save(MODELS[name], str(src))
    r = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "ck"), "--verify"])
    assert r.exit_code == 0, r.output
    native = load_checkpoint(tmp_path / "ck")
    feeds = _feeds(MODELS[name], rng)
    ref = _ort(MODELS[name], feeds)["logits"]
    np.testing.assert_allclose(np.array(native(mx.array(feeds["x"]))), ref, atol=ATOL, rtol=RTOL)


def test_cli_convert_unconvertible_is_one_line(tmp_path):
    from edgelstm.cli import cli

    src = tmp_path / "m.onnx"
    onnx.save(MODELS["loop_gru_relu"], str(src))
    r = CliRunner().invoke(cli, ["convert", str(src), str(tmp_path / "ck")])
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and r.output.count("\n") == 1
    assert not (tmp_path / "ck").exists()


def test_cli_info_names_lifted_cells(tmp_path):
    import json

    from edgelstm.cli import cli

    for name, want in (("loop_lstm", "loop -> LSTM"), ("step_gru_x2", "step -> GRU"),
                       ("loop_gru_swapped", None)):
        src = tmp_path / f"{name}.onnx"
        onnx.save(MODELS[name], str(src))
        r = CliRunner().invoke(cli, ["info", str(src)])
        assert r.exit_code == 0, r.output
        row = next(line for line in r.output.splitlines() if line.startswith("lifted cells"))
        assert (want in row) if want else row.split()[-1] == "none"
        d = json.loads(CliRunner().invoke(cli, ["info", str(src), "--json"]).output)
        assert len(d["lifted_cells"]) == len(F.LIFTED[name])


CELLS = Path(__file__).parent / "fixtures" / "cells"


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_torch_dynamo_unrolled_cells(cell):
    """torch.onnx (dynamo, opset 18) export of a GRUCell/LSTMCell loop: every step lifts,
    and the MLX executor (lifted and op by op) and ORT match PyTorch's own outputs."""
    path = CELLS / f"torch_{cell}cell_steps.onnx"
    data = np.load(CELLS / f"torch_{cell}cell_steps.npz")
    model = onnx.load(str(path))
    _, lifted = lift_cells(model)
    steps = data["x"].shape[1]
    assert [(r.cell, r.form) for r in lifted] == [(cell, "step")] * steps
    assert all(r.linear_before_reset == 1 for r in lifted if cell == "gru")  # PyTorch's GRU
    feeds = {k: data[k] for k in ("x", "h", "c") if k in data.files}
    outs = [o.name for o in model.graph.output]
    for what, got in (("mlx lifted", OnnxMLXRunner(path).run(feeds)),
                      ("mlx op by op", OnnxMLXRunner(path, lift=False).run(feeds)),
                      ("ort", _ort(model, feeds))):
        for name in outs:
            np.testing.assert_allclose(got[name], data[name], atol=ATOL, rtol=RTOL,
                                       err_msg=f"{what} {name}")


def test_damaged_graphs_are_left_alone():
    """Fixtures with a node, input, output or attribute removed: the pass never raises
    (the runner reports malformed graphs itself, naming the node)."""
    import random

    rnd = random.Random(0)
    names = sorted(MODELS)
    for _ in range(200):
        m = onnx.ModelProto()
        m.CopyFrom(MODELS[rnd.choice(names)])
        graphs = [m.graph] + [a.g for n in m.graph.node for a in n.attribute if a.type == a.GRAPH]
        g = rnd.choice(graphs)
        kind = rnd.randrange(4)
        if kind == 0 and len(g.node) > 1:
            del g.node[rnd.randrange(len(g.node))]
        elif kind == 1 and len(g.output) > 1:
            del g.output[rnd.randrange(len(g.output))]
        elif kind == 2:
            node = g.node[rnd.randrange(len(g.node))]
            if node.attribute:
                del node.attribute[rnd.randrange(len(node.attribute))]
        elif kind == 3 and len(g.input) > 1:
            del g.input[rnd.randrange(len(g.input))]
        _, lifted = lift_cells(m)  # must not raise
        assert all(r.cell in ("gru", "lstm") for r in lifted)


def test_state_broadcast_over_batch_is_not_lifted(rng):
    """h declared [1, H] against x [batch, I] broadcasts op by op; a GRU node would refuse."""
    m = onnx.ModelProto()
    m.CopyFrom(MODELS["step_gru"])
    h = next(i for i in m.graph.input if i.name == "h")
    h.type.tensor_type.shape.dim[0].Clear()
    h.type.tensor_type.shape.dim[0].dim_value = 1
    assert lift_cells(m)[1] == []
    feeds = {"x": rng.standard_normal((3, F.I)).astype(np.float32),
             "h": rng.standard_normal((1, F.H)).astype(np.float32)}
    got, want = OnnxMLXRunner(m).run(feeds), _ort(m, feeds)
    np.testing.assert_allclose(got["h_new"], want["h_new"], atol=ATOL, rtol=RTOL)
