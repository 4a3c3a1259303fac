"""Shared pieces of the CLI commands: error handling and common options."""

from __future__ import annotations

import functools

import click

from edgelstm.errors import EdgeLSTMError


def handle_errors(fn):
    """Turn domain errors into ``Error: ...`` (exit 1), never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except EdgeLSTMError as exc:
            raise click.ClickException(_one_line(exc)) from None
        except (OSError, ValueError) as exc:
            raise click.ClickException(_one_line(exc)) from None
        except KeyboardInterrupt:
            raise click.Abort() from None

    return wrapper


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def log(message: str) -> None:
    """Progress and logs go to stderr; stdout is for data."""
    click.echo(message, err=True)


model_argument = click.argument("model", type=click.Path(exists=True, dir_okay=True))
force_option = click.option("--force", is_flag=True, help="Overwrite an existing output.")
backend_option = click.option(
    "--backend", type=click.Choice(["mlx", "onnxruntime"]), default=None,
    help="Execution backend (default: mlx for checkpoints, onnxruntime for .onnx).")
