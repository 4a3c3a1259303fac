"""Helpers shared by the example scripts (training, metrics, running the samples)."""

from __future__ import annotations

import argparse
import json
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

import edgelstm  # noqa: F401  (loads the BLAS before mlx)
from edgelstm.training.data import Dataset, load_dataset
from edgelstm.training.train import count_parameters, evaluate, predict_scores


def data_dir(description: str) -> Path:
    """``--data`` (default: ``$EDGELSTM_DATA`` or ``../shared/data``)."""
    from edgelstm.training.datasets import default_data_dir

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, default=None,
                        help="the shared data folder (default: $EDGELSTM_DATA or ../shared/data)")
    args = parser.parse_args()
    root = args.data or default_data_dir()
    if not root.is_dir():
        raise SystemExit(f"data folder {root} not found; pass --data")
    return root


def load_splits(folder: Path, **kwargs) -> tuple[Dataset, Dataset]:
    """The ``train`` and ``test`` splits of ``folder`` (``kwargs`` go to ``load_dataset``)."""
    return load_dataset(folder, "train", **kwargs), load_dataset(folder, "test", **kwargs)


def train_with_cli(here: Path, data: Path, data_arg: str, args: list[str]) -> dict:
    """``edgelstm train DATA -o here/model --force ARGS``, then test metrics in ``metrics.json``.

    The example is the CLI: the same command line trains the same model
    (same seed, machine and MLX version), so the README's ``train`` line
    reproduces the shipped accuracy. ``data_arg`` is how the command is
    written down (``../shared/data/...``); ``data`` where the data is here.
    The int8 accuracy (``edgelstm quantize`` defaults) is measured too.
    """
    cmd = [sys.executable, "-m", "edgelstm", "train", str(data), "-o", str(here / "model"),
           "--force", *args]
    # cwd: not the checkout, or `python -m` would import the source tree (no kernels
    # unless built in place) instead of the installed package the README's line runs.
    (_, seconds) = timed(subprocess.run, cmd, check=True, cwd=tempfile.gettempdir())
    model = edgelstm.load(here / "model")
    test = load_dataset(data, "test", features=model.features)
    with tempfile.TemporaryDirectory() as tmp:
        from edgelstm.quantize import quantize_model

        quantize_model(here / "model", Path(tmp) / "int8")
        int8 = evaluate(edgelstm.load(Path(tmp) / "int8"), test)
    rel = here.relative_to(here.parent.parent)
    command = f"edgelstm train {data_arg} -o {rel / 'model'} {shlex.join(args)}".strip()
    prov = model.provenance or {}
    history = {"loss": [None] * int(prov.get("epochs_run") or 0),
               "best_epoch": prov.get("best_epoch")}
    return finish(here, model, test, prov.get("settings"), history, seconds, save=False,
                  extra={"command": command, "seed": prov.get("seed"),
                         "int8_accuracy": round(int8["accuracy"], 6)})


def write_labels(samples: Path, labels: dict[str, str]) -> None:
    """Write ``samples/labels.json`` (file name -> expected label), as :func:`run_samples` reads."""
    (samples / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")


def finish(here: Path, model, test, settings: dict, history: dict, seconds: float,
           extra: dict | None = None, save: bool = True) -> dict:
    """Save ``model`` to ``here/model`` and its test metrics (plus ``extra``) to ``metrics.json``."""
    if save:
        model.save(here / "model", force=True)
    metrics = evaluate(model, test)
    size = sum(f.stat().st_size for f in (here / "model").iterdir())
    out = {
        "dataset": test.name,
        "split": "test",
        "accuracy": round(metrics["accuracy"], 6),
        "n": metrics["n"],
        "labels": metrics["labels"],
        "confusion": metrics["confusion"],
        **(extra or {}),
        "settings": settings,
        "epochs_run": len(history["loss"]),
        "best_epoch": history["best_epoch"],
        "train_seconds": round(seconds, 1),
        "parameters": count_parameters(model),
        "model_bytes": size,
        "machine": machine((model.provenance or {}).get("mlx_blas")),
    }
    (here / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    if "int8_accuracy" in out:
        print(f"int8 test accuracy {out['int8_accuracy']:.4f}")
    print(f"test accuracy {out['accuracy']:.4f} on {out['n']} ({test.name}); "
          f"{out['parameters']} parameters, {size} bytes; {seconds:.0f} s")
    return out


def machine(mlx_blas: str | None = None) -> str:
    """What the numbers depend on: OS, MLX, the kernels' ISA and OpenBLAS core kernel,
    and the BLAS MLX's own matmuls ran on while training (``mlx_blas``, from the model's
    provenance: the ``edgelstm`` command loads the wheel's by default).

    Training's rounding follows OpenBLAS's core kernel (``OPENBLAS_CORETYPE`` pins it), so
    the same command and seed reproduce a model bit for bit only where this matches.
    """
    import mlx.core as mx

    from edgelstm.fast import dispatch

    kernels = re.sub(r"; threads=\d+", "", dispatch.reason())  # threads do not move results
    where = f"{platform.system()} {platform.machine()}, mlx {mx.__version__} CPU; kernels {kernels}"
    return where + (f"; MLX matmuls: {mlx_blas}" if mlx_blas else "")


def timed(fn: Callable, *args, **kwargs):
    """``(result, seconds)``."""
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0


def run_samples(here: Path, read: Callable[[object, Path], np.ndarray]) -> list[dict]:
    """Classify every file in ``here/samples/labels.json`` with the shipped model.

    Args:
        here: the example folder (holding ``model/`` and ``samples/``).
        read: ``read(model, path) -> (T, I)`` model input for one sample file.

    Returns:
        One dict per sample: ``file``, ``expected``, ``predicted``, ``confidence``.
    """
    model = edgelstm.load(here / "model")
    samples = here / "samples"
    expected = json.loads((samples / "labels.json").read_text())
    results = []
    for name, label in expected.items():
        scores = predict_scores(model, read(model, samples / name))
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        k = int(np.argmax(probs))
        results.append({"file": name, "expected": label, "predicted": model.labels[k],
                        "confidence": float(probs[k])})
    return results


def report(results: list[dict]) -> None:
    """Print one line per sample and a total."""
    for r in results:
        mark = "ok" if r["predicted"] == r["expected"] else "WRONG"
        print(f"  {r['file']:<28} -> {r['predicted']:<10} p={r['confidence']:.2f}  "
              f"(expected {r['expected']}, {mark})")
    right = sum(r["predicted"] == r["expected"] for r in results)
    print(f"  {right}/{len(results)} correct")
