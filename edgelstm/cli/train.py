"""``edgelstm train``: fit a sequence classifier on a dataset and save it."""

from __future__ import annotations

import json

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
@click.option("--epochs", type=click.IntRange(1), default=30, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=1e-3, show_default=True)
@click.option("--batch", "--batch-size", "batch_size", type=click.IntRange(1, MAX_BATCH), default=32,
              show_default=True, help="Sequences per training step.",
              cls=AliasOption,
              hidden_aliases=("--batch-size",))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--val", "val_fraction", type=click.FloatRange(0, 1, max_open=True), default=0.1,
              show_default=True, help="Fraction of the training data held out for early "
              "stopping (0: none).")
@click.option("--patience", type=click.IntRange(1), default=10, show_default=True)
@click.option("--crop", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Augment with random windows of at least this fraction of each sequence.")
@click.option("--json", "as_json", is_flag=True, help="Print the history and test metrics as JSON.")
@force_option
@handle_errors
def train(data, output, cell, hidden, layers, bidirectional, head, target, dropout, epochs, lr,
          batch_size, seed, val_fraction, patience, crop, as_json, force):
    """Train a classifier on DATA and save it to OUTPUT.

    DATA is a UEA .ts file or folder (its TRAIN split is used), the FSDD
    folder (takes 5-49, MFCC features stored in the model) or an .npz with
    x (N, T, I), y (N,) or (N, T) and optional lengths. When DATA has a test
    split its accuracy is reported at the end.

    \b
        $ edgelstm train ../shared/data/uea/JapaneseVowels -o jv-model --epochs 60
        $ edgelstm eval jv-model ../shared/data/uea/JapaneseVowels
    """
    from edgelstm.errors import EdgeLSTMError
    from edgelstm.io.fileio import check_output_path, check_writable
    from edgelstm.training.data import load_dataset
    from edgelstm.training.train import evaluate
    from edgelstm.training.train import train as fit

    check_output_path(output, [data])  # `train DATA -o DATA --force` once deleted DATA
    check_writable(output, force)
    dataset = load_dataset(data, "train")
    log(f"{dataset.name}: {dataset.n} sequences, {dataset.input_size} features, "
        f"{dataset.num_classes} classes")
    # a dict, so train() seeds before it builds the model: --seed fixes the init too
    spec = {"cell": cell, "hidden": hidden, "layers": layers, "bidirectional": bidirectional,
            "head": head, "dropout": dropout}
    model, history = fit(spec, dataset, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                         validation=val_fraction or None, patience=patience, target=target,
                         crop=crop, log=log)
    model.save(output, force=force)
    summary = {"history": history, "output": str(output)}
    log(f"saved {output}")
    try:
        test = load_dataset(data, "test", features=model.features)
    except (EdgeLSTMError, OSError):  # no separate test split: nothing more to report
        test = None
    if test is not None and test.name != dataset.name:
        metrics = evaluate(model, test)
        summary["test"] = {k: metrics[k] for k in ("accuracy", "n")}
        log(f"test accuracy {metrics['accuracy']:.4f} on {metrics['n']} ({test.name})")
    if as_json:
        click.echo(json.dumps(summary, indent=2, sort_keys=True))
