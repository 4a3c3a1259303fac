"""``edgelstm train``: fit a sequence classifier on a dataset and save it."""

from __future__ import annotations

import json
import os
import sys

import click

from edgelstm.cli._common import AliasOption, force_option, handle_errors, log
from edgelstm.limits import MAX_BATCH, MAX_HIDDEN, MAX_LAYERS


@click.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--output", "-o", required=True, type=click.Path(),
              help="Checkpoint directory to write.")
@click.option("--cell", type=click.Choice(["lstm", "gru", "rnn"]), default="lstm",
              show_default=True)
@click.option("--hidden", type=click.IntRange(1, MAX_HIDDEN), default=64, show_default=True,
              help="Hidden units per direction.")
@click.option("--layers", type=click.IntRange(1, MAX_LAYERS), default=1, show_default=True)
@click.option("--bidirectional", is_flag=True, help="Add a reverse direction (cannot stream).")
@click.option("--head", type=click.Choice(["sequence", "frame"]), default=None,
              help="Default: frame for per-frame labels, else sequence.")
@click.option("--target", type=click.Choice(["last", "all", "mixed"]), default="last",
              show_default=True, help="Frames a frame head is trained on, for sequence labels.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.0,
              show_default=True, help="Dropout between stacked layers.")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Maximum epochs (default: 200, or enough for 1500 steps on small data; 100 "
              "with an fcn branch; cut short by early stopping or --time-budget).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=3e-3, show_default=True,
              help="Peak learning rate (warm-up, then cosine decay).")
@click.option("--batch", "--batch-size", "batch_size", type=click.IntRange(1, MAX_BATCH),
              default=None, help="Sequences per step (default: 8-32 from the data size).",
              cls=AliasOption, hidden_aliases=("--batch-size",))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val", "val_fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Fraction of the training data held out for early stopping (0: none; "
              "default 0.1, or 0 for a model with an fcn branch, which trains the whole "
              "schedule).")
@click.option("--patience", type=click.IntRange(1), default=20, show_default=True)
@click.option("--crop", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Augment with random windows of at least this fraction of each sequence.")
@click.option("--augment", default="auto", show_default=True,
              help="Comma-separated crop,jitter,scale,warp,mix,mask, or none; auto: mask for "
              "audio, jitter,scale otherwise.")
@click.option("--pool", type=click.Choice(["auto", "last", "mean"]), default="auto",
              show_default=True, help="Sequence head input: last valid step (streams) or mean "
              "over valid steps; auto: mean with a conv stem (which cannot stream), else last.")
@click.option("--stem", "stem_spec", default="auto", show_default=True,
              help="Conv feature stem before the LSTM: auto (one for long series of 1-3 "
              "channels), none, or CHANNELS,KERNEL,STRIDE (e.g. 32,8,4). A stem cannot stream.")
@click.option("--fcn", "fcn_spec", default="auto", show_default=True,
              help="Fully convolutional branch beside the LSTM, its pooled features joined to "
              "the LSTM's before the head (LSTM-FCN): auto (one for short multi-channel "
              "sequences), none, or CHANNELS:KERNELS[:DROPOUT][:same|causal] (e.g. 64,128,64:8,5,3; "
              "DROPOUT: on the LSTM's features while training; padding: same unless causal). "
              "A model with one cannot stream.")
@click.option("--weight-decay", type=click.FloatRange(0), default=1e-4, show_default=True)
@click.option("--time-budget", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds of training; the epochs are picked to fit.")
@click.option("--ema", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Decay per step of a moving average of the weights, used for validation "
              "and the saved model (0: off).")
@click.option("--label-smoothing", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Cross-entropy target weight spread over all classes (default: 0.1 when "
              "nothing is held out for early stopping, else 0).")
@click.option("--refit", type=click.Choice(["same", "fit", "none"]), default="none",
              show_default=True, help="After early stopping on the split, retrain on all the "
              "data for the picked epochs (same: the first run's schedule; fit: a schedule "
              "over those epochs).")
@click.option("--search", "search_space", type=click.Choice(["small"]), default=None,
              help="Try a few configurations on the validation split and keep the best.")
@click.option("--features", "feature_kind", type=click.Choice(["mfcc", "logmel"]), default=None,
              help="Audio front end for WAV data (default: mfcc).")
@click.option("--n-mels", type=click.IntRange(1, 512), default=None, help="Mel filters (audio).")
@click.option("--n-mfcc", type=click.IntRange(1, 512), default=None, help="MFCCs kept (audio).")
@click.option("--progress/--no-progress", default=None,
              help="Progress bar on stderr (default: when stderr is a terminal).")
@click.option("--json", "as_json", is_flag=True, help="Print the history and test metrics as JSON.")
@force_option
@handle_errors
def train(data, output, cell, hidden, layers, bidirectional, head, target, dropout, epochs, lr,
          batch_size, seed, val_fraction, patience, crop, augment, pool, stem_spec, fcn_spec,
          weight_decay,
          time_budget, ema, label_smoothing, refit, search_space, feature_kind, n_mels, n_mfcc,
          progress, as_json, force):
    """Train a classifier on DATA and save it to OUTPUT.

    DATA is a UEA .ts file or folder (its TRAIN split is used), the FSDD
    folder (takes 5-49, MFCC features stored in the model), a folder of
    class folders of WAVs (data/yes/*.wav, data/no/*.wav) or an .npz with
    x (N, T, I), y (N,) or (N, T) and optional lengths. When DATA has a test
    split its accuracy is reported at the end. Ctrl-C stops training and
    saves the best epoch so far.

    Under MLX's launcher the run is data-parallel over its processes (each
    takes a shard of every batch; rank 0 logs and saves):

    \b
        $ mlx.launch -n 2 --backend ring --python .venv/bin/python \\
              $(command -v edgelstm) train DATA -o MODEL

    \b
        $ edgelstm train ../shared/data/uea/JapaneseVowels -o jv-model --epochs 60
        $ edgelstm eval jv-model ../shared/data/uea/JapaneseVowels
    """
    from edgelstm.errors import ConfigError, EdgeLSTMError
    from edgelstm.io.fileio import check_output_path, check_writable
    from edgelstm.training.data import load_dataset
    from edgelstm.training.distributed import world
    from edgelstm.training.recipe import search
    from edgelstm.training.train import evaluate
    from edgelstm.training.train import train as fit

    w = world()
    say = log if w.main else (lambda _line: None)  # rank 0 speaks and writes for the run
    check_output_path(output, [data])  # `train DATA -o DATA --force` once deleted DATA
    check_writable(output, force)
    features = {k: v for k, v in (("kind", {"logmel": "fbank"}.get(feature_kind, feature_kind)),
                                  ("n_mels", n_mels), ("n_mfcc", n_mfcc)) if v is not None}
    dataset = load_dataset(data, "train", features=features or None)
    if features and (dataset.features or {}).get("kind") not in ("mfcc", "fbank"):
        raise ConfigError("--features, --n-mels and --n-mfcc apply to WAV data only")
    dataset.meta["source"] = os.path.basename(os.path.abspath(data))
    if w.size > 1:
        say(f"world size {w.size} (mx.distributed): rank 0 writes {output}")
    say(f"{dataset.name}: {dataset.n} sequences, {dataset.input_size} features, "
        f"{dataset.num_classes} classes")
    # a dict, so train() seeds before it builds the model: --seed fixes the init too
    spec = {"cell": cell, "hidden": hidden, "layers": layers, "bidirectional": bidirectional,
            "head": head, "dropout": dropout, "pool": pool, "stem": _parse_stem(stem_spec),
            "fcn": _parse_fcn(fcn_spec)}
    if progress is None:
        progress = sys.stderr.isatty() and w.main
    bar = _Progress() if progress else None
    kwargs = dict(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, patience=patience,
                  target=target, crop=crop, augment=augment, weight_decay=weight_decay,
                  time_budget=time_budget, ema=ema, label_smoothing=label_smoothing,
                  refit=None if refit == "none" else refit, log=bar.log if bar else say,
                  progress=bar.update if bar else None)
    try:
        if search_space:
            model, history = search(spec, dataset, search_space, validation=val_fraction or 0.2,
                                    **kwargs)
        else:
            model, history = fit(spec, dataset, validation=(
                "auto" if val_fraction is None else val_fraction or None), **kwargs)
    finally:
        if bar:
            bar.close()
    summary = {"history": history, "output": str(output)}
    best = history["best_epoch"]
    ran = len(history["loss"])
    if not w.main:
        return
    if history.get("interrupted"):
        log(f"interrupted in epoch {history['interrupted']}; "
            + (f"restored epoch {best} (best validation)" if best else
               f"kept the weights after epoch {ran}"))
    elif best and history.get("refit"):
        log(f"best epoch {best} of {ran} on the split (val_acc "
            f"{history['val_accuracy'][best - 1]:.4f}); retrained on all "
            f"{history['refit']['sequences']} sequences for {best} epochs")
    elif best:
        log(f"restored epoch {best} of {ran} (val_acc {history['val_accuracy'][best - 1]:.4f})")
    try:
        test = load_dataset(data, "test", features=model.features)
    except (EdgeLSTMError, OSError):  # no separate test split: nothing more to report
        test = None
    if test is not None and test.name != dataset.name:
        metrics = evaluate(model, test)
        summary["test"] = {k: metrics[k] for k in ("accuracy", "n")}
        model.provenance["test_accuracy"] = round(metrics["accuracy"], 6)
        model.provenance["test"] = test.name
    model.save(output, force=force)
    log(f"saved {output}")
    if "test" in summary:
        log(f"test accuracy {summary['test']['accuracy']:.4f} on {summary['test']['n']} "
            f"({test.name})")
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))


def _parse_stem(spec: str):
    """``--stem``: ``"auto"``, ``None`` (none) or a stem dict from ``C,K,S``."""
    from edgelstm.errors import ConfigError

    spec = spec.strip().lower()
    if spec in ("auto", "none"):
        return None if spec == "none" else "auto"
    parts = spec.split(",")
    try:
        channels, kernel, stride = (int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--stem takes auto, none or CHANNELS,KERNEL,STRIDE, got {spec!r}") \
            from None
    return {"kind": "conv", "channels": channels, "kernel": kernel, "stride": stride}


def _parse_fcn(spec: str):
    """``--fcn``: ``"auto"``, ``None`` (none) or a branch dict from
    ``C1,C2,..:K1,K2,..[:DROPOUT][:same|causal]`` (padding default: same)."""
    from edgelstm.errors import ConfigError
    from edgelstm.nn.fcn import PADDINGS

    spec = spec.strip().lower()
    if spec in ("auto", "none"):
        return None if spec == "none" else "auto"
    parts = spec.split(":")
    padding = parts.pop() if parts[-1] in PADDINGS else "same"
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        channels, kernels = ([int(p) for p in part.split(",")] for part in parts[:2])
        dropout = float(parts[2]) if len(parts) == 3 else 0.0
    except ValueError:
        raise ConfigError("--fcn takes auto, none or CHANNELS:KERNELS[:DROPOUT][:same|causal] "
                          f"(e.g. 64,128,64:8,5,3), got {spec!r}") from None
    return {"kind": "fcn", "channels": channels, "kernels": kernels, "padding": padding,
            **({"dropout": dropout} if dropout else {})}


class _Progress:
    """One click progress bar per epoch on stderr; epoch lines printed between bars."""

    def __init__(self):
        self.bar, self.epoch, self.done = None, None, 0

    def update(self, epoch: int, done: int, total: int) -> None:
        if epoch != self.epoch:
            self.close()
            self.epoch, self.done = epoch, 0
            self.bar = click.progressbar(length=total, label=f"epoch {epoch}", file=sys.stderr,
                                         show_eta=True, show_percent=True)
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def log(self, line: str) -> None:
        self.close()
        log(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None
