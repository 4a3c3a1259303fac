"""Safe output: never overwrite without being asked, never leave half a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgelstm.errors import EdgeLSTMError


class OutputExistsError(EdgeLSTMError):
    """The output path exists and overwriting was not requested."""


def check_writable(dst: str | os.PathLike, force: bool = False) -> Path:
    """Raise :class:`OutputExistsError` if ``dst`` exists and ``force`` is off."""
    dst = Path(dst)
    if dst.exists() and not force:
        raise OutputExistsError(f"{dst} already exists; pass --force to overwrite it")
    if not dst.parent.exists():
        raise EdgeLSTMError(f"output folder {dst.parent} does not exist")
    return dst


@contextlib.contextmanager
def atomic_output(dst: str | os.PathLike, force: bool = False, directory: bool = False
                  ) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; move it into place on success.

    On any exception the temporary output is removed and ``dst`` is untouched.

    Args:
        dst: final file or directory path.
        force: replace an existing ``dst``.
        directory: the output is a directory (the temporary path is created).
    """
    dst = check_writable(dst, force)
    parent = dst.parent
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp" + dst.suffix,
                                    dir=parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if dst.exists():
            backup = parent / f".{dst.name}.old"
            _remove(backup)
            os.replace(dst, backup)
            os.replace(tmp, dst)
            _remove(backup)
        else:
            os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
