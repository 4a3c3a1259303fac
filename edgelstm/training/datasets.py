"""Loaders for the real data: UEA/sktime ``.ts`` files and the Free Spoken Digit Dataset.

Also :func:`pad_sequences`, which batches variable-length sequences with their lengths
(the ``lengths`` argument of the recurrent layers).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError
from edgelstm.frontend.readers import read_wav

__all__ = [
    "FSDDItem",
    "FSDDRecording",
    "TSDataset",
    "default_data_dir",
    "list_fsdd",
    "load_fsdd",
    "load_ts",
    "load_uea",
    "pad_sequences",
]

FSDD_TEST_TAKES = range(0, 5)  # official split: takes 0-4 test, 5-49 train
_FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")


def default_data_dir() -> Path:
    """Where the shared data lives: ``$EDGELSTM_DATA``, else ``../shared/data``.

    ``../shared/data`` is tried relative to the working directory, then relative to
    the source checkout; the first that exists wins.
    """
    env = os.environ.get("EDGELSTM_DATA")
    if env:
        return Path(env)
    candidates = [Path.cwd().parent / "shared" / "data",
                  Path(__file__).resolve().parents[2] / "shared" / "data"]
    return next((p for p in candidates if p.is_dir()), candidates[0])


# ---------------------------------------------------------------- UEA .ts


@dataclass
class TSDataset:
    """A multivariate time-series classification set.

    Attributes:
        series: One ``(T_i, C)`` float32 array per case (lengths may differ).
        labels: ``(B,)`` int64 class indices into ``class_names``; float64 targets for
            regression files; ``None`` when the file has no labels.
        class_names: Class labels in the order the header declares them.
        name: ``@problemName``, else the file stem.
        header: Every ``@key value`` header line, keys lower-cased.
    """

    series: list[np.ndarray]
    labels: np.ndarray | None
    class_names: tuple[str, ...]
    name: str = ""
    header: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.series)

    @property
    def lengths(self) -> np.ndarray:
        """``(B,)`` int32 sequence lengths."""
        return np.array([len(s) for s in self.series], dtype=np.int32)

    @property
    def num_channels(self) -> int:
        """Channels per time step (``C``)."""
        return self.series[0].shape[1] if self.series else 0

    def padded(self, max_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Zero-padded batch ``(B, T, C)`` and lengths ``(B,)``; see :func:`pad_sequences`."""
        return pad_sequences(self.series, max_len=max_len)


def _flag(header: dict[str, str], key: str) -> bool:
    return header.get(key, "false").split()[0:1] == ["true"]


def load_ts(path: str | os.PathLike) -> TSDataset:
    """Read a sktime/aeon ``.ts`` file (equal or unequal lengths, ``?`` as missing).

    Args:
        path: File path.

    Returns:
        The cases as :class:`TSDataset`.

    Raises:
        DataError: On time-stamped files, inconsistent channels or lengths, or
            labels the header does not declare; the message names file and line.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    header: dict[str, str] = {}
    series: list[np.ndarray] = []
    raw_labels: list[str] = []
    in_data = False
    for lineno, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise DataError(f"{path}: line {lineno}: expected a header line or @data")
            key, _, value = line[1:].partition(" ")
            key = key.lower()
            if key == "data":
                in_data = True
                if _flag(header, "timestamps"):
                    raise DataError(f"{path}: time-stamped .ts files are not supported")
                labelled = _flag(header, "classlabel") or _flag(header, "targetlabel")
                try:
                    dims = int(header["dimensions"]) if "dimensions" in header else None
                except ValueError:
                    raise DataError(f"{path}: @dimensions {header['dimensions']!r} is not an "
                                    "integer") from None
            else:
                header[key] = value.strip()
            continue
        parts = line.split(":")
        if labelled:
            if len(parts) < 2:
                raise DataError(f"{path}: line {lineno}: no label")
            raw_labels.append(parts.pop().strip())
        if dims is None:
            dims = len(parts)
        if len(parts) != dims:
            raise DataError(f"{path}: line {lineno}: {len(parts)} channels, expected {dims}")
        try:
            chans = [np.array(p.replace("?", "nan").split(","), dtype=np.float64) for p in parts]
        except ValueError:
            raise DataError(f"{path}: line {lineno}: non-numeric value") from None
        if len({len(c) for c in chans}) != 1:
            lens = sorted({len(c) for c in chans})
            raise DataError(f"{path}: line {lineno}: channels have different lengths {lens}")
        series.append(np.stack(chans, axis=1).astype(np.float32))
    if not in_data:
        raise DataError(f"{path}: no @data section")
    labels, class_names = _labels(path, header, raw_labels)
    return TSDataset(series, labels, class_names, header.get("problemname", path.stem), header)


def _labels(
    path: Path, header: dict[str, str], raw: list[str]
) -> tuple[np.ndarray | None, tuple[str, ...]]:
    if _flag(header, "targetlabel"):
        try:
            return np.array(raw, dtype=np.float64), ()
        except ValueError:
            raise DataError(f"{path}: non-numeric regression target") from None
    if not _flag(header, "classlabel"):
        return None, ()
    names = tuple(header["classlabel"].split()[1:]) or tuple(sorted(set(raw)))
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw) - index.keys())
    if unknown:
        raise DataError(f"{path}: labels {unknown} are not in @classLabel {list(names)}")
    return np.array([index[r] for r in raw], dtype=np.int64), names


def load_uea(
    name: str, split: str = "train", root: str | os.PathLike | None = None
) -> TSDataset:
    """Load ``{root}/{name}/{name}_{TRAIN|TEST}.ts``.

    Args:
        name: Problem name, e.g. ``"BasicMotions"`` or ``"JapaneseVowels"``.
        split: ``"train"`` or ``"test"``.
        root: Folder holding the problem folders. Default: ``default_data_dir() / "uea"``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root) if root is not None else default_data_dir() / "uea"
    return load_ts(root / name / f"{name}_{split.upper()}.ts")


# ---------------------------------------------------------------- FSDD


@dataclass(frozen=True)
class FSDDItem:
    """One FSDD file: ``{digit}_{speaker}_{take}.wav``."""

    path: Path
    digit: int
    speaker: str
    take: int

    @property
    def split(self) -> str:
        """``"test"`` for takes 0-4, else ``"train"`` (the official split)."""
        return "test" if self.take in FSDD_TEST_TAKES else "train"


@dataclass
class FSDDRecording:
    """A loaded FSDD recording; ``samples`` is ``(N,)`` float32 at ``rate`` Hz."""

    samples: np.ndarray
    rate: int
    digit: int
    speaker: str
    take: int
    path: Path


def _fsdd_dir(root: str | os.PathLike | None) -> Path:
    root = Path(root) if root is not None else default_data_dir() / "fsdd"
    return root / "recordings" if (root / "recordings").is_dir() else root


def list_fsdd(root: str | os.PathLike | None = None, split: str = "all") -> list[FSDDItem]:
    """List FSDD files, sorted by speaker, digit, take.

    Args:
        root: The ``fsdd`` folder or its ``recordings`` folder. Default:
            ``default_data_dir() / "fsdd"``.
        split: ``"train"`` (takes 5-49), ``"test"`` (takes 0-4) or ``"all"``.

    Raises:
        DataError: If the folder is missing or holds no FSDD-named WAV files.
    """
    if split not in ("train", "test", "all"):
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    folder = _fsdd_dir(root)
    if not folder.is_dir():
        raise DataError(f"{folder}: FSDD folder not found")
    items = []
    for p in folder.iterdir():
        m = _FSDD_NAME.match(p.name)
        if m:
            items.append(FSDDItem(p, int(m[1]), m[2], int(m[3])))
    if not items:
        raise DataError(f"{folder}: no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav)")
    items.sort(key=lambda i: (i.speaker, i.digit, i.take))
    return [i for i in items if split == "all" or i.split == split]


def load_fsdd(
    root: str | os.PathLike | None = None,
    split: str = "train",
    *,
    target_rate: int | None = None,
) -> list[FSDDRecording]:
    """Load FSDD recordings of one split (see :func:`list_fsdd`), resampled if asked."""
    return [
        FSDDRecording(*read_wav(i.path, target_rate=target_rate), i.digit, i.speaker, i.take, i.path)
        for i in list_fsdd(root, split)
    ]


# ---------------------------------------------------------------- batching


def pad_sequences(
    seqs: Sequence[np.ndarray],
    *,
    max_len: int | None = None,
    value: float = 0.0,
    dtype=np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """Stack variable-length sequences into one padded batch.

    Args:
        seqs: ``B`` arrays of shape ``(T_i, ...)`` with equal trailing shapes.
        max_len: Pad or truncate to this length. Default: the longest ``T_i``.
        value: Padding value. Default: ``0.0``.
        dtype: Output dtype. Default: float32.

    Returns:
        ``(batch (B, T, ...), lengths (B,) int32)`` with ``lengths[i] = min(T_i, T)``.
    """
    seqs = [np.asarray(s) for s in seqs]
    if not seqs:
        raise ValueError("pad_sequences needs at least one sequence")
    trailing = {s.shape[1:] for s in seqs}
    if len(trailing) != 1:
        raise ValueError(f"sequences have different trailing shapes: {sorted(trailing)}")
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    T = int(lengths.max()) if max_len is None else int(max_len)
    lengths = np.minimum(lengths, T)
    out = np.full((len(seqs), T) + seqs[0].shape[1:], value, dtype=dtype)
    for i, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        out[i, :n] = s[:n]
    return out, lengths
