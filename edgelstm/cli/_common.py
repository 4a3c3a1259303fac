"""Shared pieces of the CLI commands: error handling and common options."""

from __future__ import annotations

import errno
import functools
import os

import click

from edgelstm.errors import EdgeLSTMError

# File-access failures are the user's environment, not a bug: one line too.
# Any other OSError, ValueError, ... is a bug and keeps its traceback.
FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError,
               FileExistsError)
FILE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.ENAMETOOLONG, errno.ELOOP}


def debug_enabled() -> bool:
    """``edgelstm --debug ...`` or ``EDGELSTM_DEBUG=1``: show tracebacks of mapped errors."""
    if os.environ.get("EDGELSTM_DEBUG", "").strip() not in ("", "0"):
        return True
    ctx = click.get_current_context(silent=True)
    return bool(ctx and (ctx.find_root().obj or {}).get("debug"))


def handle_errors(fn):
    r"""Turn edgelstm's own errors and file-access errors into ``Error: ...`` (exit 1).

    Only :class:`EdgeLSTMError` (raised on purpose at validation points),
    file-access ``OSError``\ s and ``MemoryError`` are mapped; anything else
    is a bug and propagates with its traceback. ``--debug`` re-raises the
    mapped ones too.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            raise click.Abort() from None
        except Exception as exc:
            message = _mapped(exc)
            if message is None or debug_enabled():
                raise
            raise click.ClickException(message) from None

    return wrapper


def _mapped(exc: Exception) -> str | None:
    if isinstance(exc, EdgeLSTMError):
        return _one_line(exc)
    if isinstance(exc, FILE_ERRORS) or (isinstance(exc, OSError) and exc.errno in FILE_ERRNOS):
        return _one_line(exc)
    if isinstance(exc, MemoryError):
        return "out of memory: " + _one_line(exc)
    return None


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


class AliasOption(click.Option):
    """An option whose extra names work but stay out of ``--help`` (renamed options).

    ``click.option("--batch", "--batch-size", "batch_size", cls=AliasOption,
    hidden_aliases=("--batch-size",))`` accepts both and documents ``--batch``.
    """

    def __init__(self, *args, hidden_aliases: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx):
        shown = [o for o in self.opts if o not in self.hidden_aliases]
        saved, self.opts = self.opts, shown
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = saved
