"""``edgelstm eval``: accuracy of a model on a dataset."""

from __future__ import annotations

import json

import click

from edgelstm.cli._common import handle_errors


@click.command()
@click.argument("model", type=click.Path(exists=True))
@click.argument("data", type=click.Path(exists=True))
@click.option("--split", type=click.Choice(["test", "train", "all"]), default="test",
              show_default=True, help="Split of DATA when it has one.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the metrics as JSON, with each misclassified example.")
@handle_errors
def evaluate(model, data, split, as_json):
    """Accuracy of MODEL on DATA (a .ts file or folder, the FSDD folder, or an .npz).

    Audio is turned into features with the front end stored in the model.

    \b
        $ edgelstm eval examples/japanesevowels/model ../shared/data/uea/JapaneseVowels
        $ edgelstm eval examples/fsdd/model ../shared/data/fsdd --json
    """
    from edgelstm.errors import UnsupportedError
    from edgelstm.io.checkpoint import load
    from edgelstm.nn.model import SequenceModel
    from edgelstm.training.data import load_dataset
    from edgelstm.training.train import evaluate as score

    net = load(model)
    if not isinstance(net, SequenceModel) or net.head_type is None:
        raise UnsupportedError(f"{model} is not a classifier (a sequence model with a head)")
    dataset = load_dataset(data, split, features=net.features)
    metrics = score(net, dataset)
    metrics["data"] = dataset.name
    if as_json:
        from edgelstm.runtime.evaluation import misclassified

        metrics["misclassified"] = misclassified(net, dataset)
        click.echo(json.dumps(metrics, indent=2, sort_keys=True))
        return
    click.echo(f"accuracy {metrics['accuracy']:.4f} ({_correct(metrics)}/{metrics['n']}) "
               f"on {dataset.name}")
    click.echo(_confusion(metrics))


def _correct(metrics) -> int:
    return sum(row[k] for k, row in enumerate(metrics["confusion"]))


def _confusion(metrics) -> str:
    names = metrics["labels"] or [str(k) for k in range(len(metrics["confusion"]))]
    width = max(5, *(len(n) for n in names))
    lines = ["confusion (rows: true, columns: predicted)",
             " " * width + " " + " ".join(n[:width].rjust(width) for n in names)]
    for name, row in zip(names, metrics["confusion"], strict=True):
        lines.append(name.rjust(width) + " " + " ".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)
