"""FLAC/OGG/MP3 inputs through soundfile, beside the built-in WAV parser."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgelstm.cli import cli
from edgelstm.errors import DataError, UnsupportedError
from edgelstm.frontend.readers import read_input, read_wav

sf = pytest.importorskip("soundfile")

ROOT = Path(__file__).resolve().parents[1]
WAV = ROOT / "examples" / "fsdd" / "samples" / "8_jackson_2.wav"
MODEL = ROOT / "examples" / "fsdd" / "model"


def _encode(tmp_path, fmt, subtype=None):
    x, rate = read_wav(WAV)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, x, rate, format=fmt, subtype=subtype)
    return path, x, rate


def test_flac_is_lossless_against_the_wav_parser(tmp_path):
    path, x, rate = _encode(tmp_path, "FLAC", "PCM_16")
    y, r = read_input(path)
    assert r == rate and y.dtype == np.float32
    np.testing.assert_array_equal(y, x)  # 16-bit source, lossless codec


@pytest.mark.parametrize("fmt,subtype", [("OGG", "VORBIS"), ("MP3", "MPEG_LAYER_III")])
def test_lossy_formats_decode_close_to_the_source(tmp_path, fmt, subtype):
    if fmt not in sf.available_formats():
        pytest.skip(reason=f"this libsndfile has no {fmt}")
    path, x, rate = _encode(tmp_path, fmt, subtype)
    y, r = read_input(path, target_rate=16000)
    assert r == 16000 and abs(len(y) - 2 * len(x)) < 0.05 * 2 * len(x)  # codec padding


def test_stream_and_predict_take_flac(tmp_path):
    path, _, _ = _encode(tmp_path, "FLAC", "PCM_16")
    r = CliRunner().invoke(cli, ["stream", str(MODEL), str(path), "--json"])
    assert r.exit_code == 0, r.output
    wav = CliRunner().invoke(cli, ["stream", str(MODEL), str(WAV), "--json"])
    def results(text):  # everything but the timings
        return [{k: v for k, v in json.loads(line).items() if "latency" not in k}
                for line in text.splitlines()]

    assert results(r.stdout) == results(wav.stdout)  # same samples, chunks and outputs
    out = tmp_path / "p.jsonl"
    r = CliRunner().invoke(cli, ["predict", str(MODEL), str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text().splitlines()[0])["label"] == "8"


def test_corrupt_audio_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.flac"
    bad.write_bytes(b"fLaC" + bytes(100))
    with pytest.raises(DataError, match="cannot decode audio"):
        read_input(bad)


def test_missing_soundfile_says_how_to_install(tmp_path, monkeypatch):
    path, _, _ = _encode(tmp_path, "FLAC", "PCM_16")
    monkeypatch.setitem(sys.modules, "soundfile", None)
    with pytest.raises(UnsupportedError, match=r"pip install 'edgelstm\[audio\]'"):
        read_input(path)
