"""The fully convolutional branch (edgelstm.nn.fcn, LSTM-FCN): a NumPy reference,
causality and padded batches, masked batch statistics, checkpoint and ONNX round trips
against ONNX Runtime and the MLX ONNX executor (batch norm folded), int8, streaming
refusals and the ``--fcn`` option."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from click.testing import CliRunner
from conv_part_checks import check_quantized_model_file, check_refuses_streaming
from mlx.utils import tree_flatten

from edgelstm.cli import cli
from edgelstm.errors import ConfigError, UnsupportedError
from edgelstm.fast import dispatch
from edgelstm.io.checkpoint import load
from edgelstm.nn.fcn import ConvBranch, MaskedBatchNorm
from edgelstm.nn.layers import LSTM
from edgelstm.nn.model import SequenceModel
from edgelstm.training.data import Dataset
from edgelstm.training.train import build_model, evaluate, train

FCN = {"kind": "fcn", "channels": [6, 5], "kernels": [4, 3], "padding": "same"}
PADDINGS = ["same", "causal"]


def _randomise_bn(branch: ConvBranch, seed: int = 0) -> None:
    """Non-trivial evaluation statistics, so folding the batch norm is really tested."""
    rng = np.random.default_rng(seed)
    for block in branch.blocks:
        C = block.bn.weight.shape[0]
        block.bn.running_mean = mx.array(rng.normal(size=C).astype(np.float32))
        block.bn.running_var = mx.array(rng.uniform(0.5, 2.0, size=C).astype(np.float32))
        block.bn.weight = mx.array(rng.uniform(0.5, 1.5, size=C).astype(np.float32))
        block.bn.bias = mx.array(rng.normal(size=C).astype(np.float32))


def _model(pool="last", stem=None, seed=0, padding="same"):
    mx.random.seed(seed)
    m = SequenceModel(LSTM(3 if stem is None else stem["channels"], 8), num_outputs=4,
                      head="sequence", normalize=True, pool=pool, labels=list("abcd"),
                      fcn={**FCN, "padding": padding}, stem=stem)
    m.norm.mean = mx.array([0.5, -1.0, 0.2])
    m.norm.std = mx.array([2.0, 0.5, 1.0])
    _randomise_bn(m.fcn, seed)
    return m.eval()


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(4, 13, 3)).astype(np.float32)
    lengths = np.array([13, 9, 4, 1], np.int32)
    return x, lengths


def _numpy_branch(branch: ConvBranch, x: np.ndarray) -> np.ndarray:
    """Independent reference: zero-padded correlation (``same``: ``(k-1)//2`` zeros before and
    ``k//2`` after; ``causal``: ``k-1`` before), affine batch norm, ReLU, mean: ``(T, I) -> (C,)``."""
    for block in branch.blocks:
        w, b = np.array(block.conv.weight), np.array(block.conv.bias)  # (C, k, I)
        k = block.kernel
        before = (k - 1) // 2 if branch.padding == "same" else k - 1
        xp = np.concatenate([np.zeros((before, x.shape[1]), np.float32), x,
                             np.zeros((k - 1 - before, x.shape[1]), np.float32)])
        y = np.stack([np.einsum("ki,cki->c", xp[t:t + k], w) + b for t in range(len(x))])
        bn = block.bn
        y = ((y - np.array(bn.running_mean)) / np.sqrt(np.array(bn.running_var) + bn.eps)
             * np.array(bn.weight) + np.array(bn.bias))
        x = np.maximum(y, 0.0)
    return x.mean(axis=0)


@pytest.mark.parametrize("padding", PADDINGS)
def test_branch_matches_a_numpy_reference_and_reads_the_right_steps(padding):
    mx.random.seed(1)
    branch = ConvBranch(3, [6, 5], [4, 3], padding=padding)
    _randomise_bn(branch, 1)
    branch.eval()
    x = np.random.default_rng(1).normal(size=(1, 11, 3)).astype(np.float32)
    got = np.array(branch(mx.array(x)))[0]
    np.testing.assert_allclose(got, _numpy_branch(branch, x[0]), atol=1e-5)
    # changing step 7 moves exactly the steps that read it: causal 7.., same (kernels 4
    # then 3, each reading k // 2 steps ahead) 7 - 2 - 1 = 4 on
    y = x.copy()
    y[0, 7] += 5.0
    before, after = (np.array(branch.steps(mx.array(v)))[0] for v in (x, y))
    moved = np.abs(after - before).max(axis=1)
    first = 7 if padding == "causal" else 4
    assert np.all(moved[:first] == 0.0) and moved[first] > 0
    assert ConvBranch(3, [6], [4]).padding == "same"  # the LSTM-FCN design


def test_a_config_without_padding_is_the_causal_branch_saved_before_it():
    old = {"kind": "fcn", "channels": [6, 5], "kernels": [4, 3]}
    assert ConvBranch.from_config(3, old).padding == "causal"
    assert ConvBranch.from_config(3, old).config() == {**old, "padding": "causal"}
    with pytest.raises(ConfigError, match="fcn padding must be one of same, causal"):
        ConvBranch.from_config(3, {**old, "padding": "valid"})


@pytest.mark.skipif(not dispatch.available(), reason="the fused kernels are not loaded")
@pytest.mark.parametrize("padding", PADDINGS)
def test_kernel_convolutions_match_mlx_conv_and_refold_on_new_parameters(tmp_path, padding):
    # Evaluation runs each block as one GEMM on the kernels (conv and batch norm folded,
    # remembered per parameter arrays); fast=False keeps MLX's Conv1d. Both match the
    # NumPy reference, the folding is a cache (never a parameter or saved), and a new
    # statistics array refolds.
    m = _model(padding=padding)
    x, lengths = _batch()
    xs, ls = mx.array(x), mx.array(lengths)
    normed = m.norm(xs)
    fast, slow = (np.array(m.fcn(normed, ls, fast=f)) for f in (None, False))
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-5)
    block = m.fcn.blocks[0]
    assert "_folded" in block.__dict__ and "_folded" not in block
    assert all("_folded" not in k for k, _ in tree_flatten(m.parameters()))
    xn = np.array(normed)
    want = np.stack([_numpy_branch(m.fcn, xn[b, :lengths[b]]) for b in range(len(x))])
    np.testing.assert_allclose(fast, want, atol=1e-5)
    block.bn.running_mean = block.bn.running_mean + 0.5
    moved = np.array(m.fcn(normed, ls))
    want = np.stack([_numpy_branch(m.fcn, xn[b, :lengths[b]]) for b in range(len(x))])
    np.testing.assert_allclose(moved, want, atol=1e-5)
    assert np.abs(moved - fast).max() > 1e-3


def test_training_batch_norm_uses_valid_steps_only():
    bn = MaskedBatchNorm(2)
    x = np.random.default_rng(2).normal(size=(2, 5, 2)).astype(np.float32)
    lengths = np.array([5, 2])
    x[1, 2:] = 1e3  # padding: must not move the statistics
    mask = (np.arange(5)[None] < lengths[:, None]).astype(np.float32)[:, :, None]
    got = np.array(bn(mx.array(x), mx.array(mask)))
    valid = np.concatenate([x[0], x[1, :2]])
    want = (valid - valid.mean(0)) / np.sqrt(valid.var(0) + bn.eps)
    np.testing.assert_allclose(np.concatenate([got[0], got[1, :2]]), want, atol=1e-4)
    np.testing.assert_allclose(np.array(bn.running_mean), 0.1 * valid.mean(0), atol=1e-5)
    assert set(dict(bn.trainable_parameters())) == {"weight", "bias"}


def test_rejects_bad_settings():
    with pytest.raises(ConfigError, match="2 channel counts but 1 kernels"):
        ConvBranch(3, [4, 4], [3])
    with pytest.raises(ConfigError, match="fcn channels must be integers in 1..1024"):
        ConvBranch(3, [0], [3])
    with pytest.raises(ConfigError, match="fcn kernels must be integers in 1..64"):
        ConvBranch(3, [4], [65])
    with pytest.raises(ConfigError, match="unknown fcn setting"):
        ConvBranch.from_config(3, {"kind": "fcn", "dilation": 2})
    with pytest.raises(ConfigError, match="needs head='sequence'"):
        SequenceModel(LSTM(3, 4), num_outputs=2, head="frame", fcn=FCN)


@pytest.mark.parametrize("pool", ["last", "mean"])
@pytest.mark.parametrize("padding", PADDINGS)
def test_padded_batch_equals_each_sequence_alone(pool, padding):
    m = _model(pool, padding=padding)
    x, lengths = _batch()
    batch = np.array(m(mx.array(x), lengths=mx.array(lengths)))
    for k in range(len(x)):
        alone = np.array(m(mx.array(x[k:k + 1, :lengths[k]])))[0]
        np.testing.assert_allclose(batch[k], alone, atol=1e-5)
    unbatched = np.array(m(mx.array(x[0])))
    np.testing.assert_allclose(unbatched, batch[0], atol=1e-5)


def test_fcn_model_cannot_stream():
    m = _model()
    assert not m.can_stream
    with pytest.raises(ConfigError, match="fcn branch cannot stream"):
        m(mx.zeros((1, 8, 3)), state=m.zero_state(1))
    check_refuses_streaming(m, "fcn branch")


def test_checkpoint_round_trip_keeps_the_statistics(tmp_path):
    m = _model()
    m.save(tmp_path / "m")
    back = load(tmp_path / "m")
    assert back.config()["fcn"] == FCN and not back.training
    np.testing.assert_array_equal(np.array(back.fcn.blocks[1].bn.running_var),
                                  np.array(m.fcn.blocks[1].bn.running_var))
    x, lengths = _batch()
    np.testing.assert_array_equal(np.array(back(mx.array(x), lengths=mx.array(lengths))),
                                  np.array(m(mx.array(x), lengths=mx.array(lengths))))


@pytest.mark.parametrize("pool,stem", [("last", None), ("mean", None),
                                       ("last", {"kind": "conv", "channels": 4, "kernel": 2,
                                                 "stride": 1, "input_size": 3})])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("padding", PADDINGS)
def test_onnx_export_matches_onnxruntime_and_mlx_executor(tmp_path, pool, stem, with_lengths,
                                                          padding):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    import onnx

    from edgelstm.converters import run_onnx
    from edgelstm.converters.onnx_export import build_onnx

    m = _model(pool, stem, padding=padding)
    x, lengths = _batch()
    path = tmp_path / "m.onnx"
    onnx.save(build_onnx(m, lengths=with_lengths), str(path))
    feeds = {"input": x, **({"lengths": lengths} if with_lengths else {})}
    want = np.array(m(mx.array(x), lengths=mx.array(lengths) if with_lengths else None))
    ort = run_onnx(path, feeds, backend="onnxruntime")["output"]
    on_mlx = run_onnx(path, feeds, backend="mlx")["output"]
    np.testing.assert_allclose(ort, want, atol=1e-5)
    np.testing.assert_allclose(on_mlx, ort, atol=1e-5)
    if with_lengths:  # every row of the padded batch is its sequence's own result
        for k in range(len(x)):
            alone = run_onnx(path, {"input": x[k:k + 1, :lengths[k]],
                                    "lengths": lengths[k:k + 1]}, backend="onnxruntime")
            np.testing.assert_allclose(alone["output"][0], ort[k], atol=1e-5)


def test_int8_keeps_the_branch_float_and_stays_close():
    from edgelstm.quantize.mlx_quant import is_quantized, quantize_mlx

    m = _model()
    x, lengths = _batch()
    ref = np.array(m(mx.array(x), lengths=mx.array(lengths)))
    weight = np.array(m.fcn.blocks[0].conv.weight)
    q = quantize_mlx(_model())
    got = np.array(q(mx.array(x), lengths=mx.array(lengths)))
    np.testing.assert_array_equal(np.array(q.fcn.blocks[0].conv.weight), weight)
    assert is_quantized(q)
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max()


@pytest.mark.parametrize("dst", ["int8", "m.int8.onnx"])
def test_quantize_model_writes_a_working_int8_fcn_model(tmp_path, dst):
    """`edgelstm quantize` on an fcn model: MLX checkpoint and QDQ ONNX (run by ONNX Runtime)."""
    check_quantized_model_file(_model(), _batch()[0], "fcn", tmp_path, dst)


def _series(n, T=24, I=3, classes=3, seed=0):
    """Classes told apart by a local bump shape at a random position, variable lengths."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(0, 0.3, size=(n, T, I)).astype(np.float32)
    lengths = rng.integers(T // 2, T + 1, size=n).astype(np.int32)
    shapes = [np.array([1.0, 1.0, 1.0]), np.array([1.0, -1.0, 1.0]), np.array([-1.0, 1.0, -1.0])]
    for i in range(n):
        at = rng.integers(0, lengths[i] - 3)
        x[i, at:at + 3, i % I] += 2.0 * shapes[y[i]]
        x[i, lengths[i]:] = 0.0
    return Dataset(x, y, lengths, [f"c{k}" for k in range(classes)], name="bumps")


def test_train_with_a_branch_learns_and_moves_the_statistics():
    ds, test = _series(96, seed=0), _series(60, seed=1)
    model, _ = train({"hidden": 8, "fcn": {"channels": [16, 16], "kernels": [3, 3]}}, ds,
                     epochs=30, seed=0, validation=None, log=None)
    assert "fcn" in model and not model.training
    assert np.abs(np.array(model.fcn.blocks[0].bn.running_mean)).max() > 0.01
    assert evaluate(model, test)["accuracy"] >= 0.9
    assert build_model(ds, hidden=4).config().get("fcn") is None  # library default: none


def test_auto_fcn_only_for_short_multichannel_sequence_labels():
    from edgelstm.training.recipe import AUTO_FCN, auto_fcn, auto_validation

    short = _series(12)
    assert auto_fcn(short) == AUTO_FCN and AUTO_FCN["dropout"] == 0.8   # JapaneseVowels-like
    assert auto_fcn(_series(12, T=100)) is None                          # long (BasicMotions)
    assert auto_fcn(_series(12, I=1)) is None                            # univariate
    audio = _series(12)
    audio.features = {"kind": "mfcc"}
    assert auto_fcn(audio) is None                                       # audio keeps streaming
    assert build_model(short, hidden=4, fcn="auto").config()["fcn"] == AUTO_FCN
    assert build_model(short, hidden=4, head="frame", fcn="auto").config().get("fcn") is None
    # the early-stopping split goes only for a model that gets a branch
    assert auto_validation({"fcn": "auto"}, short) == 0.0
    assert auto_validation({"fcn": "auto"}, _series(12, T=100)) == 0.1
    assert auto_validation({"fcn": None}, short) == 0.1
    assert auto_validation(_model(), short) == 0.0
    from edgelstm.training.recipe import auto_label_smoothing  # 0.1 only without a split

    assert auto_label_smoothing(None) == 0.1 and auto_label_smoothing(short) == 0.0
    model, hist = train({"hidden": 4, "fcn": {"channels": [4], "kernels": [3]}}, short,
                        epochs=2, seed=0, validation="auto", log=None)
    assert hist["best_epoch"] is None and model.provenance["validation_sequences"] == 0
    from edgelstm.training.recipe import FCN_EPOCHS, has_fcn

    assert has_fcn({"fcn": "auto"}, short) and not has_fcn({"fcn": "auto", "head": "frame"}, short)
    _, hist = train({"hidden": 4, "fcn": {"channels": [4], "kernels": [3]}}, short, seed=0,
                    validation="auto", log=None, _stop_after=1)
    assert hist["epochs"] == FCN_EPOCHS
    with pytest.raises(ConfigError, match="validation must be"):
        train({"hidden": 4}, short, epochs=1, validation="some", log=None)


def test_cli_fcn_option(tmp_path):
    ds = _series(30)
    data = tmp_path / "d.npz"
    np.savez(data, x=ds.x, y=ds.y, lengths=ds.lengths)
    runner = CliRunner()
    for spec, says in (("8,x:3", "Error: --fcn takes"), ("8,8:3", "2 channel counts but 1"),
                       ("8:0", "fcn kernels must be integers"), ("1:2:3:4", "Error: --fcn takes"), ("4:3:x", "Error: --fcn takes"), ("4:3:1.5", "fcn dropout must be")):
        bad = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "m"), "--fcn", spec])
        assert bad.exit_code != 0 and says in bad.output, (spec, bad.output)
        assert "Traceback" not in bad.output and not (tmp_path / "m").exists()
    bad = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "m"), "--fcn", "8:3",
                              "--head", "frame"])
    assert bad.exit_code != 0 and "needs head='sequence'" in bad.output
    ok = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "m"), "--fcn", "8,4:3,3",
                             "--epochs", "2", "--hidden", "4"])
    assert ok.exit_code == 0, ok.output
    assert load(tmp_path / "m").config()["fcn"] == {"kind": "fcn", "channels": [8, 4],
                                                    "kernels": [3, 3], "padding": "same"}
    causal = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "c"), "--fcn",
                                 "8:3:0.5:causal", "--epochs", "1", "--hidden", "4"])
    assert causal.exit_code == 0, causal.output
    assert load(tmp_path / "c").config()["fcn"] == {"kind": "fcn", "channels": [8],
                                                    "kernels": [3], "padding": "causal",
                                                    "dropout": 0.5}
    info = runner.invoke(cli, ["info", str(tmp_path / "m")])
    assert info.exit_code == 0 and "fcn branch 3->8->4" in info.output
    # no flag: short multi-channel sequences get the auto branch and no early-stopping split
    auto = runner.invoke(cli, ["train", str(data), "-o", str(tmp_path / "a"), "--epochs", "2",
                               "--hidden", "4"])
    assert auto.exit_code == 0, auto.output
    config = load(tmp_path / "a").config()
    assert config["fcn"]["channels"] == [64, 128, 64] and config["fcn"]["dropout"] == 0.8
    assert config["fcn"]["padding"] == "same"
    assert config["provenance"]["validation_sequences"] == 0
    assert config["provenance"]["settings"]["label_smoothing"] == 0.1
    big = _series(210)  # 10% holds out 21 sequences: above the small-data rule's 20
    np.savez(tmp_path / "big.npz", x=big.x, y=big.y, lengths=big.lengths)
    plain = runner.invoke(cli, ["train", str(tmp_path / "big.npz"), "-o", str(tmp_path / "p"),
                                "--epochs", "2", "--hidden", "4", "--fcn", "none"])
    assert plain.exit_code == 0 and load(tmp_path / "p").can_stream
    assert load(tmp_path / "p").provenance["validation_sequences"] > 0
    assert load(tmp_path / "p").provenance["settings"]["label_smoothing"] == 0.0


def test_checkpoint_limits_check_the_branch():
    from edgelstm.errors import LimitError
    from edgelstm.limits import check_model_config

    config = _model().config()
    check_model_config(config)
    for bad, says in (({**FCN, "channels": [6]}, "same length"),
                      ({**FCN, "channels": [6, 5000]}, r"fcn.channels\[1\]"),
                      ("conv", "fcn must be an object")):
        with pytest.raises((ConfigError, LimitError), match=says):
            check_model_config({**config, "fcn": bad})


def test_tflite_and_coreml_exports_refuse_the_branch_by_name():
    """Their graphs have no conv branch: refused, never exported without it."""
    from edgelstm.converters.coreml_export import check_exportable as coreml_check
    from edgelstm.converters.tflite_export import check_exportable as tflite_check

    for check, tool in ((tflite_check, "TFLite"), (coreml_check, "Core ML")):
        with pytest.raises(UnsupportedError, match=f"{tool} export cannot express an fcn branch"):
            check(_model())


def test_dropout_on_the_stack_summary_acts_in_training_only():
    x, lengths = _batch()
    plain = _model()
    spec = {**FCN, "dropout": 0.5}
    m = SequenceModel.from_config({**plain.config(), "fcn": spec})
    m.update(plain.parameters())
    m.eval()
    assert m.config()["fcn"] == spec and "dropout" not in plain.config()["fcn"]
    np.testing.assert_array_equal(np.array(m(mx.array(x), lengths=mx.array(lengths))),
                                  np.array(plain(mx.array(x), lengths=mx.array(lengths))))
    m.train()
    a, b = (np.array(m(mx.array(x), lengths=mx.array(lengths))) for _ in range(2))
    assert np.abs(a - b).max() > 0  # a fresh mask each call
    with pytest.raises(ConfigError, match="fcn dropout must be in"):
        ConvBranch.from_config(3, {**FCN, "dropout": 1.0})


@pytest.mark.parametrize("mlx_blas,fcn,says", [
    ("MLX's bundled reference BLAS (set EDGELSTM_BLAS=wheel to replace it)", True, True),
    ("OpenBLAS from the scipy-openblas32 wheel (loaded process-wide by EDGELSTM_BLAS=wheel)",
     True, False),
    ("MLX's bundled reference BLAS (set EDGELSTM_BLAS=wheel to replace it)", False, False),
])
def test_training_a_conv_branch_on_the_reference_blas_says_how_to_speed_it_up(
        monkeypatch, mlx_blas, fcn, says):
    from edgelstm.fast import blas

    monkeypatch.setattr(blas, "MLX_BLAS", mlx_blas)
    lines = []
    spec = {"hidden": 4, **({"fcn": {"channels": [4], "kernels": [3]}} if fcn else {})}
    train(spec, _series(12), epochs=1, seed=0, validation=None, log=lines.append)
    assert any("EDGELSTM_BLAS=wheel" in line for line in lines) is says
