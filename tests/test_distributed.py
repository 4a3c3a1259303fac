"""Data-parallel training: sharding unit tests, and 2 processes on loopback vs 1 process.

The loopback test starts MLX's own launcher (``mlx.launch --backend ring``,
two local processes over TCP on 127.0.0.1) and skips with a reason when it
cannot start.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelstm.training.distributed import World, shard

BIN = Path(sys.executable).parent


def test_shard_weights_sum_to_one_and_cover_the_batch():
    idx = np.arange(10, 17)  # 7 items over 3 ranks
    parts = [shard(idx, World(None, r, 3)) for r in range(3)]
    assert np.concatenate([p for p, _ in parts]).tolist() == idx.tolist()
    assert sum(wt for _, wt in parts) == pytest.approx(1.0)
    counts = np.array([1, 2, 3, 4, 5, 6, 7])
    parts = [shard(idx, World(None, r, 3), counts) for r in range(3)]
    assert sum(wt for _, wt in parts) == pytest.approx(1.0)
    assert parts[0][1] == pytest.approx((1 + 2 + 3) / 28)


def test_a_rank_without_items_still_takes_part_with_weight_zero():
    local, wt = shard(np.array([4]), World(None, 1, 2))
    assert local.tolist() == [4] and wt == 0.0
    local, wt = shard(np.array([4]), World(None, 0, 2))
    assert local.tolist() == [4] and wt == 1.0


def test_single_process_world_is_the_identity():
    from edgelstm.training.distributed import world

    w = world()
    assert (w.rank, w.size) == (0, 1)
    assert shard(np.arange(5), w)[1] == 1.0


def _data(path: Path, frame_labels: bool = False) -> Path:
    rng = np.random.default_rng(3)
    n, T, I = 36, 12, 3
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, T, I)).astype(np.float32) + y[:, None, None] * 0.7
    lengths = rng.integers(5, T + 1, n)
    for k, L in enumerate(lengths):
        x[k, L:] = 0
    np.savez(path, x=x, y=y, lengths=lengths)
    return path


def _launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    launcher = shutil.which("mlx.launch", path=str(BIN))
    edgelstm = shutil.which("edgelstm", path=str(BIN))
    if launcher is None or edgelstm is None:
        pytest.skip(reason="mlx.launch or the edgelstm script is not installed next to this Python")
    port = random.randint(20000, 60000)  # other runs on this machine may hold the default
    cmd = [launcher, "-n", "2", "--backend", "ring", "--starting-port", str(port),
           "--python", sys.executable, edgelstm, *args]
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(reason=f"mlx.launch could not start 2 local processes: {exc}")


@pytest.mark.parametrize("extra", [[], ["--head", "frame", "--target", "mixed"]],
                         ids=["sequence", "frame-mixed"])
def test_two_processes_give_the_single_process_model(tmp_path, extra):
    from click.testing import CliRunner
    from mlx.utils import tree_flatten

    from edgelstm.cli import cli
    from edgelstm.io.checkpoint import load

    data = _data(tmp_path / "tiny.npz")
    common = [str(data), "--hidden", "8", "--epochs", "3", "--batch", "8", "--seed", "5",
              "--val", "0.2", "--augment", "jitter,scale", "--fcn", "none", *extra]
    # --fcn none: an fcn branch's batch norm takes each rank's shard statistics and its
    # dropout draws per rank, so only the plain stack matches the single process
    res = CliRunner().invoke(cli, ["train", *common, "-o", str(tmp_path / "one")])
    assert res.exit_code == 0, res.output
    proc = _launch(["train", *common, "-o", str(tmp_path / "two")], tmp_path)
    if proc.returncode != 0 and not (tmp_path / "two").exists():
        if "Traceback" in proc.stderr and "edgelstm" in proc.stderr:
            pytest.fail(proc.stderr[-3000:])
        pytest.skip(reason=f"mlx.launch could not run 2 ring processes: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "world size 2" in out and "seq/s per rank" in out
    assert out.count("saved ") == 1  # rank 0 alone writes
    one = dict(tree_flatten(load(tmp_path / "one").parameters()))
    two = dict(tree_flatten(load(tmp_path / "two").parameters()))
    assert one.keys() == two.keys()
    for k in one:
        # 3 epochs x 4 AdamW steps: reduction order alone moves weights ~1e-6
        np.testing.assert_allclose(np.array(two[k]), np.array(one[k]), rtol=1e-4, atol=1e-5,
                                   err_msg=k)
