"""UEA .ts and FSDD loaders on small synthetic files and, when present, the real data."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

import edgelstm
from edgelstm.errors import DataError
from edgelstm.training.datasets import (
    TSDataset,
    list_fsdd,
    load_fsdd,
    load_ts,
    load_uea,
    pad_sequences,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason="../shared/data not present")

TS_UNEQUAL = """\
# a comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3:4,5,6:down
0.5,?:1e-3,-2:up

7:8:down
"""


def test_load_ts_unequal_lengths_and_missing(tmp_path):
    p = tmp_path / "toy.ts"
    p.write_text(TS_UNEQUAL)
    ds = load_ts(p)
    assert isinstance(ds, TSDataset) and ds.name == "Toy" and len(ds) == 3
    assert ds.class_names == ("up", "down")
    np.testing.assert_array_equal(ds.labels, [1, 0, 1])
    np.testing.assert_array_equal(ds.series[0], [[1, 4], [2, 5], [3, 6]])
    assert np.isnan(ds.series[1][1, 0]) and ds.series[1][1, 1] == -2
    np.testing.assert_array_equal(ds.lengths, [3, 2, 1])
    assert ds.num_channels == 2 and ds.series[0].dtype == np.float32
    x, lengths = ds.padded()
    assert x.shape == (3, 3, 2) and x[2, 1:].sum() == 0
    np.testing.assert_array_equal(lengths, [3, 2, 1])


def test_load_ts_unlabelled_and_regression(tmp_path):
    p = tmp_path / "u.ts"
    p.write_text("@classLabel false\n@data\n1,2:3,4\n")
    ds = load_ts(p)
    assert ds.labels is None and ds.series[0].shape == (2, 2)
    p.write_text("@targetLabel true\n@data\n1,2:0.25\n")
    np.testing.assert_array_equal(load_ts(p).labels, [0.25])


@pytest.mark.parametrize(
    "body,match",
    [
        ("@dimensions 2\n@classLabel true a\n@data\n1,2:a\n", "line 4: 1 channels, expected 2"),
        ("@classLabel true a\n@data\n1,2:3:a\n", "channels have different lengths"),
        ("@classLabel true a b\n@data\n1,2:c\n", r"labels \['c'\] are not in @classLabel"),
        ("@classLabel true a\n@data\n1,x:a\n", "line 3: non-numeric value"),
        ("@timeStamps true\n@data\n(0,1):a\n", "time-stamped"),
        ("@classLabel true a\n", "no @data section"),
        ("1,2:a\n", "line 1: expected a header line"),
    ],
)
def test_load_ts_errors(tmp_path, body, match):
    p = tmp_path / "bad.ts"
    p.write_text(body)
    with pytest.raises(DataError, match=match) as e:
        load_ts(p)
    assert str(e.value).startswith(str(p))


def test_pad_sequences():
    seqs = [np.ones((3, 2)), np.full((5, 2), 2.0), np.zeros((0, 2))]
    x, n = pad_sequences(seqs, value=-1)
    assert x.shape == (3, 5, 2) and x.dtype == np.float32 and n.dtype == np.int32
    np.testing.assert_array_equal(n, [3, 5, 0])
    assert (x[0, 3:] == -1).all() and (x[1] == 2).all() and (x[2] == -1).all()
    x, n = pad_sequences(seqs, max_len=4)
    assert x.shape == (3, 4, 2)
    np.testing.assert_array_equal(n, [3, 4, 0])
    x, _ = pad_sequences([np.arange(3), np.arange(2)])
    assert x.shape == (2, 3)
    with pytest.raises(ValueError, match="trailing shapes"):
        pad_sequences([np.ones((2, 2)), np.ones((2, 3))])


def _write_wav(path: Path, samples: np.ndarray, rate: int = 8000) -> None:
    pcm = np.round(samples * 32767).astype("<i2").tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, rate, 2 * rate, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def test_fsdd_synthetic_folder(tmp_path):
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for digit in (0, 7):
        for take in (0, 4, 5, 49):
            _write_wav(rec / f"{digit}_alice_{take}.wav", np.full(80 + take, 0.25))
    (rec / "README.txt").write_text("not a recording")
    items = list_fsdd(tmp_path / "fsdd")
    assert len(items) == 8 and items[0].speaker == "alice"
    assert {i.take for i in list_fsdd(rec, "test")} == {0, 4}
    train = load_fsdd(tmp_path / "fsdd", "train", target_rate=16000)
    assert [(r.digit, r.take) for r in train] == [(0, 5), (0, 49), (7, 5), (7, 49)]
    assert train[0].rate == 16000 and train[0].samples.shape == (170,)
    with pytest.raises(DataError, match="FSDD folder not found"):
        list_fsdd(tmp_path / "missing")
    with pytest.raises(DataError, match="no FSDD recordings"):
        list_fsdd(tmp_path)


# ---------------------------------------------------------------- real data


@needs_data
def test_basic_motions():
    root = DATA / "uea"
    train, test = load_uea("BasicMotions", "train", root), load_uea("BasicMotions", "test", root)
    assert (len(train), len(test)) == (40, 40)
    assert train.class_names == ("Standing", "Running", "Walking", "Badminton")
    assert {s.shape for s in train.series + test.series} == {(100, 6)}
    assert sorted(np.bincount(train.labels)) == [10, 10, 10, 10]
    assert np.isfinite(np.stack(train.series)).all()


@needs_data
def test_japanese_vowels():
    root = DATA / "uea"
    train, test = load_uea("JapaneseVowels", "train", root), load_uea("JapaneseVowels", "test", root)
    assert (len(train), len(test)) == (270, 370)
    assert train.num_channels == 12 and train.class_names == tuple(str(i) for i in range(1, 10))
    lengths = np.concatenate([train.lengths, test.lengths])
    assert (lengths.min(), lengths.max()) == (7, 29)
    np.testing.assert_array_equal(np.bincount(train.labels), [30] * 9)
    x, n = train.padded()
    assert x.shape == (270, train.lengths.max(), 12)
    np.testing.assert_array_equal(n, train.lengths)


@needs_data
def test_fsdd_real():
    items = list_fsdd(DATA / "fsdd")
    assert len(items) == 3000
    test = [i for i in items if i.split == "test"]
    assert len(test) == 300 and {i.take for i in test} == set(range(5))
    assert len({i.speaker for i in items}) == 6 and {i.digit for i in items} == set(range(10))
    recs = load_fsdd(DATA / "fsdd", "test")[:20]
    assert all(r.rate == 8000 and r.samples.dtype == np.float32 for r in recs)
    assert all(r.samples.ndim == 1 and 0 < np.abs(r.samples).max() <= 1 for r in recs)


def test_wav_datasets_name_their_files_for_eval(tmp_path):
    """FSDD and labelled folder trees keep one file name per sequence (aligned through
    subsets), so `eval --json` can say which recordings were misclassified."""
    from edgelstm.runtime.evaluation import misclassified
    from edgelstm.training.data import load_dataset

    rng = np.random.default_rng(0)
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    for digit in (3, 7):
        for take in (0, 1, 2):
            _write_wav(rec / f"{digit}_bob_{take}.wav", 0.3 * rng.standard_normal(2000))
    tree = tmp_path / "kws"
    for word in ("no", "yes"):
        (tree / word).mkdir(parents=True)
        for k in range(3):
            _write_wav(tree / word / f"{word}{k}.wav", 0.3 * rng.standard_normal(2000))
    fsdd = load_dataset(tmp_path / "fsdd", "test")
    assert fsdd.meta["files"] == [f"{d}_bob_{t}.wav" for d in (3, 7) for t in (0, 1, 2)]
    kws = load_dataset(tree, "train")
    assert kws.meta["files"] == [f"{w}/{w}{k}.wav" for w in ("no", "yes") for k in range(3)]
    sub = kws.subset([5, 0])
    assert sub.meta["files"] == ["yes/yes2.wav", "no/no0.wav"]
    model = edgelstm.SequenceModel(edgelstm.LSTM(fsdd.x.shape[-1], 4), head="sequence",
                                   labels=[str(d) for d in range(10)])
    wrong = misclassified(model, fsdd)  # an untrained model: most are wrong
    assert wrong and all(m["file"] == fsdd.meta["files"][m["index"]] for m in wrong)
