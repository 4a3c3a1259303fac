"""Datasets for training and evaluation: one spec (a path) -> padded arrays.

:func:`load_dataset` accepts

- a UEA/sktime ``.ts`` file, or a folder holding ``*_TRAIN.ts`` and
  ``*_TEST.ts`` (BasicMotions, JapaneseVowels, ...);
- the Free Spoken Digit Dataset (its root or its ``recordings/`` folder):
  8 kHz WAVs become MFCC frames through :mod:`edgelstm.frontend.features`, with the
  official split (takes 0-4 test, 5-49 train);
- a labelled folder tree of WAVs (``data/yes/*.wav``, ``data/no/*.wav``):
  one class per sub-folder, features as for FSDD (at the first file's rate
  unless ``features`` says otherwise); it has no test split;
- an ``.npz`` with ``x (N, T, I)``, ``y (N,)`` or ``(N, T)`` and optional
  ``lengths (N,)`` and ``labels (C,)``.

Every source becomes a :class:`Dataset`: zero-padded ``x (N, T, I)``
float32, integer ``y`` indexing ``labels``, and ``lengths`` (``None`` when
every sequence is full length).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError, LimitError
from edgelstm.frontend.arrays import check_finite, read_npz
from edgelstm.limits import MAX_CLASSES

__all__ = ["Dataset", "load_dataset", "from_sequences", "SPLITS"]

SPLITS = ("train", "test", "all")


@dataclass
class Dataset:
    """Padded sequences with integer labels.

    Attributes:
        x: inputs ``(N, T, I)`` float32, zero past each length.
        y: class indices ``(N,)``, or per-frame ``(N, T)`` (``-1`` = ignore).
        lengths: valid steps ``(N,)`` int32, or ``None`` (all ``T``).
        labels: class names (``labels[y]``), or ``None``.
        features: front-end settings that produced ``x`` (a dict), or ``None``.
        name: where the data came from, for messages.
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray | None = None
    labels: list[str] | None = None
    features: dict | None = None
    name: str = "data"
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.x = np.asarray(self.x, dtype=np.float32)
        self.y = np.asarray(self.y)
        if self.x.ndim != 3:
            raise DataError(f"{self.name}: x must be (N, T, I), got shape {self.x.shape}")
        if not np.issubdtype(self.y.dtype, np.integer):
            raise DataError(f"{self.name}: y must hold integer class indices, got {self.y.dtype}")
        self.y = self.y.astype(np.int32)
        N, T = self.x.shape[:2]
        if self.y.shape not in ((N,), (N, T)):
            raise DataError(f"{self.name}: y must be ({N},) or ({N}, {T}), got {self.y.shape}")
        if self.lengths is not None:
            self.lengths = np.asarray(self.lengths)
            if self.lengths.size and not np.issubdtype(self.lengths.dtype, np.integer):
                raise DataError(f"{self.name}: lengths must be integers, "
                                f"got {self.lengths.dtype}")
            self.lengths = self.lengths.astype(np.int64)
            if self.lengths.shape != (N,):
                raise DataError(f"{self.name}: lengths must be ({N},), got {self.lengths.shape}")
            if N and (self.lengths.min() < 1 or self.lengths.max() > T):
                raise DataError(f"{self.name}: lengths must lie in [1, {T}]")
            self.lengths = self.lengths.astype(np.int32)
            if N and (self.lengths == T).all():
                self.lengths = None
        # before any model is sized from these: a label of 1e9 once meant a 1e9-way head
        lowest = -1 if self.y.ndim == 2 else 0
        if self.y.size and self.y.min() < lowest:
            k = tuple(int(i) for i in np.unravel_index(int(np.argmin(self.y)), self.y.shape))
            raise DataError(f"{self.name}: label {int(self.y.min())} at index {k} is negative"
                            + (" (-1 marks ignored frames)" if lowest == -1 else ""))
        if self.y.size and self.labels is None and int(self.y.max()) >= MAX_CLASSES:
            raise LimitError(f"{self.name}: label {int(self.y.max())} implies more than "
                             f"{MAX_CLASSES:,} classes")
        check_finite(f"{self.name}: x", self.x)
        if self.labels is not None:
            self.labels = [str(s) for s in self.labels]
            if self.y.size and self.y.max() >= len(self.labels):
                raise DataError(f"{self.name}: label index {int(self.y.max())} but only "
                                f"{len(self.labels)} labels")

    @property
    def n(self) -> int:
        """Number of sequences."""
        return int(self.x.shape[0])

    @property
    def input_size(self) -> int:
        """Features per step, ``I``."""
        return int(self.x.shape[2])

    @property
    def frame_labels(self) -> bool:
        """Whether ``y`` labels every frame."""
        return self.y.ndim == 2

    @property
    def num_classes(self) -> int:
        """Number of classes (from ``labels``, else the largest index + 1)."""
        if self.labels is not None:
            return len(self.labels)
        return int(self.y.max()) + 1 if self.y.size else 0

    def subset(self, idx) -> Dataset:
        """The sequences at ``idx``, cropped to their longest length."""
        idx = np.asarray(idx)
        lengths = self.lengths[idx] if self.lengths is not None else None
        T = int(lengths.max()) if lengths is not None and len(idx) else self.x.shape[1]
        y = self.y[idx][:, :T] if self.frame_labels else self.y[idx]
        meta = dict(self.meta)
        if "files" in meta:  # one name per sequence: keep them aligned
            meta["files"] = [meta["files"][i] for i in idx.tolist()]
        return replace(self, x=self.x[idx, :T], y=y, lengths=lengths, meta=meta)

    def split(self, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
        """``(rest, held_out)`` with about ``fraction`` of each class held out.

        A class with two or more sequences gives at least one and keeps at least
        one (10% of 5 is then 1, not 0); a single-sequence class stays in ``rest``.
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"split fraction must be in (0, 1), got {fraction}")
        rng = np.random.default_rng(seed)
        key = self.y if not self.frame_labels else np.zeros(self.n, dtype=np.int32)
        held = []
        for c in np.unique(key):
            members = rng.permutation(np.flatnonzero(key == c))
            k = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
            if 0 < k < len(members):
                held.extend(members[:k].tolist())
        mask = np.zeros(self.n, dtype=bool)
        mask[held] = True
        if not mask.any() or mask.all():
            raise DataError(f"{self.name}: too few sequences to hold out {fraction:.0%} "
                            "(every class has a single sequence)")
        return self.subset(np.flatnonzero(~mask)), self.subset(np.flatnonzero(mask))

    def valid_frames(self) -> np.ndarray:
        """Every valid frame stacked, ``(sum(lengths), I)``."""
        if self.lengths is None:
            return self.x.reshape(-1, self.input_size)
        mask = np.arange(self.x.shape[1])[None, :] < self.lengths[:, None]
        return self.x[mask]


def from_sequences(seqs, labels, names=None, *, features=None, name="data") -> Dataset:
    """Pad a list of ``(T_i, I)`` arrays into a :class:`Dataset`.

    Args:
        seqs: sequences, each ``(T_i, I)``.
        labels: one label per sequence: class indices, or names (mapped to
            indices of ``names``, sorted unique names when ``names`` is None).
        names: class names in index order.
    """
    seqs = [np.asarray(s, dtype=np.float32) for s in seqs]
    if not seqs:
        raise DataError(f"{name}: no sequences")
    widths = {s.shape[1] if s.ndim == 2 else -1 for s in seqs}
    if len(widths) != 1 or -1 in widths:
        raise DataError(f"{name}: sequences must be (T, I) with one I, got widths {sorted(widths)}")
    lengths = np.array([len(s) for s in seqs], dtype=np.int32)
    if lengths.min() < 1:
        raise DataError(f"{name}: empty sequence at index {int(np.argmin(lengths))}")
    x = np.zeros((len(seqs), int(lengths.max()), widths.pop()), dtype=np.float32)
    for k, s in enumerate(seqs):
        x[k, : len(s)] = s
    labels = list(labels)
    if labels and isinstance(labels[0], (int, np.integer)):
        y = np.asarray(labels, dtype=np.int32)
    else:
        labels = [str(v) for v in labels]
        names = list(names) if names is not None else sorted(set(labels), key=_natural)
        index = {v: k for k, v in enumerate(names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{name}: label {unknown[0]!r} is not one of {names}")
        y = np.array([index[v] for v in labels], dtype=np.int32)
    return Dataset(x, y, lengths, names, features, name)


def _natural(s: str):
    """Sort numbers numerically ("2" < "10"), other names alphabetically after them."""
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


# ----------------------------------------------------------------- sources


def load_dataset(spec: str | os.PathLike, split: str = "train", features=None) -> Dataset:
    """Load a dataset from a path; see the module docstring for the formats.

    Args:
        spec: a ``.ts`` file, a folder of ``*_TRAIN.ts``/``*_TEST.ts``, an
            FSDD folder, or an ``.npz`` file.
        split: ``"train"``, ``"test"`` or ``"all"``; ignored by sources
            without a split (a single ``.ts`` or ``.npz``).
        features: front-end settings for audio sources (a
            :class:`~edgelstm.frontend.features.FeatureConfig` or its dict); ``None``
            uses :data:`FSDD_FEATURES`.

    Returns:
        A :class:`Dataset`.

    Raises:
        DataError: unreadable or unrecognised data.
    """
    if split not in SPLITS:
        raise DataError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(spec)
    if not path.exists():
        raise DataError(f"{spec} does not exist")
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path)
    if path.is_file() and path.suffix == ".ts":
        return _load_ts_files([path], path.stem)
    if path.is_dir():
        rec = path / "recordings" if (path / "recordings").is_dir() else path
        if any(rec.glob("*.wav")):
            return _load_fsdd(rec, split, features)
        ts = sorted(path.glob("*_TRAIN.ts")) + sorted(path.glob("*_TEST.ts"))
        if ts:
            return _load_uea(path, split)
        classes = sorted((d for d in path.iterdir() if d.is_dir() and any(d.glob("*.wav"))),
                         key=lambda d: _natural(d.name))
        if classes:
            return _load_wav_tree(path, classes, split, features)
    raise DataError(f"cannot tell what {spec} holds: expected a .ts file, a folder of "
                    "*_TRAIN.ts/*_TEST.ts, a folder of FSDD .wav recordings, a folder of "
                    "class folders of .wav files (data/yes/*.wav, data/no/*.wav), or an .npz")


def _load_npz(path: Path) -> Dataset:
    arrays = read_npz(path)
    labels = arrays.get("labels")
    labels = [str(v) for v in labels.tolist()] if labels is not None else None
    x = arrays["x"]
    if x.ndim == 2:  # one unbatched sequence
        x = x[None]
    return Dataset(x, arrays["y"], arrays.get("lengths"), labels, name=path.name)


def _uea_files(folder: Path, split: str) -> list[Path]:
    wanted = {"train": ["TRAIN"], "test": ["TEST"], "all": ["TRAIN", "TEST"]}[split]
    files = []
    for part in wanted:
        found = sorted(folder.glob(f"*_{part}.ts"))
        if not found:
            raise DataError(f"{folder} has no *_{part}.ts file")
        files.append(found[0])
    return files


def _load_uea(folder: Path, split: str) -> Dataset:
    files = _uea_files(folder, split)
    return _load_ts_files(files, f"{files[0].stem.rsplit('_', 1)[0]} ({split})")


def _load_ts_files(files: list[Path], name: str) -> Dataset:
    from edgelstm.training.datasets import load_ts

    seqs, labels, names = [], [], None
    for f in files:
        d = load_ts(f)
        if d.labels is None or not d.class_names:
            raise DataError(f"{f} has no class labels (@classLabel true ...)")
        names = names or list(d.class_names)
        if list(d.class_names) != names:
            raise DataError(f"{f} declares classes {list(d.class_names)}, expected {names}")
        seqs.extend(d.series)
        labels.extend(int(v) for v in d.labels)
    if any(np.isnan(s).any() for s in seqs):
        raise DataError(f"{name}: missing values ('?') are not supported")
    return from_sequences(seqs, labels, names, name=name)


# FSDD front end: 25 ms frames every 10 ms, 13 MFCCs from 40 mels (Kaldi-like).
FSDD_FEATURES = {"kind": "mfcc", "sample_rate": 8000, "frame_ms": 25.0, "hop_ms": 10.0,
                 "n_mels": 40, "n_mfcc": 13}


def _feature_config(features, default: dict):
    from edgelstm.frontend.features import FeatureConfig

    if features is None:
        cfg = FeatureConfig.from_dict(default)
    elif isinstance(features, dict):
        cfg = FeatureConfig.from_dict({**default, **features})
    else:
        cfg = features
    if cfg.kind not in ("mfcc", "fbank"):
        raise DataError(f"audio data needs an mfcc or fbank front end, got {cfg.kind!r}")
    return cfg


def _load_wav_tree(root: Path, classes: list[Path], split: str, features) -> Dataset:
    from edgelstm.frontend.readers import read_wav

    if split == "test":
        raise DataError(f"{root} is one labelled folder tree: it has no test split")
    files = [(f, d.name) for d in classes for f in sorted(d.glob("*.wav"))]
    _, rate = read_wav(files[0][0])
    cfg = _feature_config(features, {**FSDD_FEATURES, "sample_rate": int(rate)})
    seqs, labels, names, skipped = [], [], [], 0
    for f, label in files:
        samples, _ = read_wav(f, target_rate=cfg.sample_rate)
        feats = np.array(cfg.compute(samples))
        if len(feats) == 0:
            skipped += 1  # shorter than one frame
            continue
        seqs.append(feats)
        labels.append(label)
        names.append(str(f.relative_to(root)))
    ds = from_sequences(seqs, labels, [d.name for d in classes], features=cfg.to_dict(),
                        name=f"{root.name} ({split})")
    ds.meta.update(skipped=skipped, files=names)  # eval --json names misclassified files
    return ds


def _load_fsdd(rec: Path, split: str, features) -> Dataset:
    from edgelstm.frontend.readers import read_wav
    from edgelstm.training.datasets import list_fsdd

    cfg = _feature_config(features, FSDD_FEATURES)
    seqs, labels, names, skipped = [], [], [], 0
    for item in list_fsdd(rec, split):
        samples, _ = read_wav(item.path, target_rate=cfg.sample_rate)
        feats = np.array(cfg.compute(samples))
        if len(feats) == 0:
            skipped += 1  # shorter than one frame
            continue
        seqs.append(feats)
        labels.append(item.digit)
        names.append(Path(item.path).name)
    ds = from_sequences(seqs, labels, [str(d) for d in range(10)], features=cfg.to_dict(),
                        name=f"fsdd ({split})")
    ds.meta.update(skipped=skipped, files=names)  # eval --json names misclassified files
    return ds
