"""Safe output: never overwrite without being asked, never leave half a file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from edgelstm.errors import EdgeLSTMError, OutputPathError


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


def _same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (hard links, bind mounts included)."""
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


def check_output_path(output: str | os.PathLike, inputs) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs``.

    Applies with or without ``--force``: replacing an output must never
    destroy what the command reads. Symlinks are resolved and hard links are
    caught by comparing ``(st_ino, st_dev)``.

    Args:
        output: the path a command will write (file or directory).
        inputs: paths the command reads (``None`` entries are skipped).

    Raises:
        OutputPathError: naming the clashing input.
    """
    out = Path(os.path.realpath(output))
    for item in inputs:
        if item is None:
            continue
        src = Path(os.path.realpath(item))
        if out == src or _same_file(out, src):
            raise OutputPathError(f"output {output} is the input {item}; "
                                  "choose another output path")
        if out in src.parents:
            raise OutputPathError(f"output {output} contains the input {item}; "
                                  "choose another output path")
        if src in out.parents:
            raise OutputPathError(f"output {output} lies inside the input {item}; "
                                  "choose another output path")
        if out.is_dir() and src.is_file() and src.stat().st_nlink > 1:
            # a hard link to the input somewhere inside an output folder to be replaced
            for root, _, files in os.walk(out):
                if any(_same_file(Path(root, f), src) for f in files):
                    raise OutputPathError(f"output {output} contains a hard link to the "
                                          f"input {item}; choose another output path")


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
        _apply_umask(tmp)
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


def _current_umask() -> int:
    # os.umask is the only portable reader, and it sets while it reads: set it back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(tmp: Path) -> None:
    """Give a temporary output the mode a plain ``open``/``mkdir`` would have.

    ``mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask; without this
    the rename would leak that mode onto every output (and into an output
    folder's top level).
    """
    if tmp.is_symlink() or not tmp.exists():
        return
    mask = _current_umask()
    os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~mask)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
