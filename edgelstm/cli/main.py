"""The ``edgelstm`` command line: a thin Click layer over the library.

Commands are imported lazily, so ``edgelstm --help`` starts fast and works
without optional parts. Each lives in ``edgelstm/cli/<name>.py``.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from edgelstm._version import __version__

# name -> "module:attribute" of the click.Command
COMMANDS = {
    "info": "edgelstm.cli.info:info",
    "run": "edgelstm.cli.run:run",
    "convert": "edgelstm.cli.convert:convert",
    "quantize": "edgelstm.cli.quantize:quantize",
    "stream": "edgelstm.cli.stream:stream",
    "predict": "edgelstm.cli.predict:predict",
    "bench": "edgelstm.cli.bench:bench",
    "train": "edgelstm.cli.train:train",
    "eval": "edgelstm.cli.evaluate:evaluate",
}

SUMMARIES = {
    "info": "Describe a model: architecture, parameters, size, I/O.",
    "run": "Offline inference on .npy/.npz input, outputs to .npz.",
    "convert": "Convert between checkpoint, ONNX, PyTorch and Keras.",
    "quantize": "Quantize gate weights to int8 (MLX or ONNX).",
    "stream": "Stream WAV, CSV, .npy or stdin through a model, chunk by chunk.",
    "predict": "Classify files or folders: one record per file to JSONL or CSV.",
    "bench": "Measure latency and throughput against peers.",
    "train": "Train a sequence model on a dataset.",
    "eval": "Accuracy of a model on a dataset.",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when it is invoked."""

    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._available(name)]

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                return None
            raise

    def format_commands(self, ctx, formatter):
        rows = [(name, SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    @staticmethod
    def _available(name):
        module = COMMANDS[name].split(":")[0]
        return importlib.util.find_spec(module) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgelstm")
@click.option("--debug", is_flag=True, envvar="EDGELSTM_DEBUG",
              help="Show the traceback of errors (also EDGELSTM_DEBUG=1).")
@click.pass_context
def cli(ctx, debug):
    """edgelstm: LSTM, GRU and RNN for the edge.

    Native MLX inference, ONNX in and out, int8 gate weights, streaming.

    \b
        $ edgelstm info examples/basicmotions/model
        $ edgelstm convert examples/basicmotions/model model.onnx --verify
        $ edgelstm stream examples/fsdd/model examples/fsdd/samples/8_jackson_2.wav --json
    """
    ctx.obj = {"debug": debug}


def main():  # pragma: no cover - entry point
    cli()
