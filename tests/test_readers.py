"""Readers: WAV of every sample format (hand-written RIFF and stdlib wave), CSV, npy, streams."""

from __future__ import annotations

import io
import os
import struct
import threading
import wave

import numpy as np
import pytest

from edgelstm.errors import DataError
from edgelstm.frontend.readers import (
    PCMStream,
    iter_csv_stream,
    parse_wav,
    read_csv,
    read_input,
    read_npy,
    read_wav,
)
from edgelstm.frontend.resample import resample

try:
    import scipy.io.wavfile as scipy_wav
except ImportError:  # test-only oracle
    scipy_wav = None

GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"


def tones(n: int = 400, channels: int = 1, rate: int = 8000) -> np.ndarray:
    t = np.arange(n) / rate
    return np.stack([0.8 * np.sin(2 * np.pi * (300 + 200 * c) * t) for c in range(channels)], 1)


def encode(x: np.ndarray, kind: str) -> tuple[bytes, np.ndarray]:
    """Interleaved little-endian bytes and the float values a reader must return."""
    if kind == "u8":
        q = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8)
        return q.tobytes(), (q.astype(np.float64) - 128) / 128
    if kind in ("s16", "s32"):
        bits = int(kind[1:])
        q = np.round(x * 2 ** (bits - 1)).astype(f"<i{bits // 8}")
        return q.tobytes(), q / 2 ** (bits - 1)
    if kind == "s24":
        q = np.round(x * 2**23).astype(np.int32)
        b = q.astype("<i4").view(np.uint8).reshape(*q.shape, 4)[..., :3]
        return b.tobytes(), q / 2**23
    if kind in ("f32", "f64"):
        q = x.astype("<f4" if kind == "f32" else "<f8")
        return q.tobytes(), q.astype(np.float32).astype(np.float64)
    raise ValueError(kind)


WIDTH = {"u8": 1, "s16": 2, "s24": 3, "s32": 4, "f32": 4, "f64": 8}


def riff(kind: str, channels: int, rate: int, payload: bytes, *, extensible=False,
         extra=b"", data_size=None) -> bytes:
    """A WAV file written byte by byte (not with the module under test)."""
    width = WIDTH[kind]
    code = 3 if kind.startswith("f") else 1
    block = width * channels
    if extensible:
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, 8 * width,
                          22, 8 * width, (1 << channels) - 1) + struct.pack("<H", code) + GUID_TAIL
    else:
        fmt = struct.pack("<HHIIHH", code, channels, rate, rate * block, block, 8 * width)
    size = len(payload) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra
    body += b"data" + struct.pack("<I", size) + payload + (b"\0" if len(payload) % 2 else b"")
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize("kind", ["u8", "s16", "s24", "s32", "f32", "f64"])
@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("extensible", [False, True])
def test_wav_every_format(tmp_path, kind, channels, extensible):
    x = tones(401, channels)
    payload, expect = encode(x, kind)
    # An odd-sized LIST chunk before data checks the even-padding rule.
    extra = b"LIST" + struct.pack("<I", 3) + b"abc\0"
    path = tmp_path / f"{kind}.wav"
    path.write_bytes(riff(kind, channels, 11025, payload, extensible=extensible, extra=extra))
    got, rate = read_wav(path, mono=False)
    assert rate == 11025 and got.dtype == np.float32 and got.shape == (401, channels)
    np.testing.assert_allclose(got, expect, atol=1e-7)
    mono, _ = read_wav(path)
    np.testing.assert_allclose(mono, expect.mean(axis=1), atol=1e-6)
    if scipy_wav is not None and not extensible:
        sr, raw = scipy_wav.read(path)
        if raw.dtype == np.uint8:
            ref = (raw.astype(np.float64) - 128) / 128
        elif raw.dtype.kind == "i":
            ref = raw / 2.0 ** (8 * raw.dtype.itemsize - 1)  # scipy left-justifies 24-bit
        else:
            ref = raw.astype(np.float64)
        assert sr == 11025
        np.testing.assert_allclose(got, ref.reshape(401, channels), atol=1e-7)


@pytest.mark.parametrize("sampwidth", [1, 2, 3, 4])
def test_wav_written_by_stdlib_wave(tmp_path, sampwidth):
    kind = {1: "u8", 2: "s16", 3: "s24", 4: "s32"}[sampwidth]
    payload, expect = encode(tones(300, 2), kind)
    path = tmp_path / "w.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(sampwidth)
        w.setframerate(16000)
        w.writeframes(payload)
    got, rate = read_wav(path, mono=False)
    assert rate == 16000
    np.testing.assert_allclose(got, expect, atol=1e-7)


def test_wav_resampled_to_target_rate(tmp_path):
    payload, expect = encode(tones(1600, 1, 16000), "s16")
    path = tmp_path / "a.wav"
    path.write_bytes(riff("s16", 1, 16000, payload))
    got, rate = read_wav(path, target_rate=8000)
    assert rate == 8000 and got.shape == (800,) and got.dtype == np.float32
    np.testing.assert_allclose(got, resample(expect[:, 0], 16000, 8000), atol=1e-6)


def test_wav_streamed_and_truncated_sizes(tmp_path):
    payload, expect = encode(tones(100), "s16")
    # Live writers put 0xFFFFFFFF in the size field: read to the end silently.
    data = riff("s16", 1, 8000, payload, data_size=0xFFFFFFFF)
    got, _ = parse_wav(data)
    np.testing.assert_allclose(got[:, 0], expect[:, 0], atol=1e-7)
    with pytest.warns(UserWarning, match="truncated"):
        got, _ = parse_wav(riff("s16", 1, 8000, payload)[:-3])
    assert got.shape == (98, 1)  # the partial last frame is dropped


@pytest.mark.parametrize(
    "data,match",
    [
        (b"hello world, not audio", "not a WAV file"),
        (b"RIFX\0\0\0\0WAVE", "RIFX WAV files are not supported"),
        (b"RIFF\x04\0\0\0WAVE", "no fmt chunk"),
        (riff("s16", 1, 8000, b"")[:36], "no data chunk"),
        (riff("s16", 1, 8000, b"\0\0").replace(b"\x01\x00\x01\x00", b"\x07\x00\x01\x00", 1),
         "mu-law WAV is not supported"),
        (riff("s16", 1, 8000, b"\0\0").replace(b"\x01\x00\x01\x00", b"\x01\x00\x00\x00", 1),
         "0 channels"),
    ],
)
def test_bad_wav_raises_data_error(tmp_path, data, match):
    path = tmp_path / "bad.wav"
    path.write_bytes(data)
    with pytest.raises(DataError, match=match) as e:
        read_wav(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_wav(tmp_path / "nope.wav")


# ---------------------------------------------------------------- CSV / npy


def test_csv_header_columns_and_delimiters(tmp_path):
    p = tmp_path / "a.csv"
    p.write_text("# recorded 2026\nax,ay,az\n1,2,3\n\n4,5,6\n")
    np.testing.assert_array_equal(read_csv(p), [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(read_csv(p, columns=["az", "ax"]), [[3, 1], [6, 4]])
    np.testing.assert_array_equal(read_csv(p, columns=[1]), [[2], [5]])
    q = tmp_path / "b.txt"
    q.write_text("0.5 1e-3 -2\n1 2 3\n")  # no header, whitespace-separated
    np.testing.assert_allclose(read_csv(q), [[0.5, 1e-3, -2], [1, 2, 3]])
    r = tmp_path / "c.csv"
    r.write_text('"t";"x"\n1;2\n')
    assert read_csv(r).shape == (1, 2) and read_csv(r).dtype == np.float32


@pytest.mark.parametrize(
    "text,kwargs,match",
    [
        ("a,b\n1,2\n3\n", {}, "line 3 has 1 fields, expected 2"),
        ("1,2\n3,x\n", {}, "line 2: not a number: 'x'"),
        ("a,b\n1,2\n", {"columns": ["c"]}, "no column named 'c'"),
        ("1,2\n", {"columns": ["c"]}, "no header row"),
        ("1,2\n", {"columns": [5]}, "column 5 out of range"),
        ("a,b\n", {}, "no data rows"),
    ],
)
def test_bad_csv(tmp_path, text, kwargs, match):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(DataError, match=match) as e:
        read_csv(p, **kwargs)
    assert str(e.value).startswith(str(p))


def test_npy_and_read_input(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(6, dtype=np.float64).reshape(3, 2))
    x = read_npy(tmp_path / "x.npy")
    assert x.dtype == np.float32 and x.shape == (3, 2)
    np.save(tmp_path / "v.npy", np.arange(4))
    assert read_npy(tmp_path / "v.npy").shape == (4, 1)
    np.save(tmp_path / "c.npy", np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match=r"expected shape \(T, F\)"):
        read_npy(tmp_path / "c.npy")
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot read .npy"):
        read_npy(tmp_path / "o.npy")
    frames, rate = read_input(tmp_path / "x.npy", columns=[1])
    assert rate is None and frames.shape == (3, 1)
    (tmp_path / "s.csv").write_text("1,2\n")
    assert read_input(tmp_path / "s.csv")[0].shape == (1, 2)
    (tmp_path / "w.wav").write_bytes(riff("s16", 1, 8000, encode(tones(10), "s16")[0]))
    samples, rate = read_input(tmp_path / "w.wav")
    assert samples.shape == (10,) and rate == 8000
    with pytest.raises(DataError, match="unknown input type '.m4a'"):
        read_input(tmp_path / "song.m4a")


# ---------------------------------------------------------------- live streams


def test_pcm_stream_raw_chunks():
    payload, expect = encode(tones(1000, 2), "s16")
    s = PCMStream(io.BytesIO(payload), fmt="s16le", rate=8000, channels=2, chunk_samples=160)
    chunks = list(s)
    assert [len(c) for c in chunks] == [160] * 6 + [40]
    np.testing.assert_allclose(np.concatenate(chunks), expect.mean(axis=1), atol=1e-6)
    # Default (auto, no header) is s16le; odd byte counts per read are reassembled.
    s = PCMStream(io.BytesIO(payload[:2000]), rate=8000, block_bytes=333)
    np.testing.assert_allclose(np.concatenate(list(s)), expect.reshape(-1)[:1000], atol=1e-7)


def test_pcm_stream_wav_header_and_resampling():
    payload, expect = encode(tones(1200, 1, 16000), "f32")
    data = riff("f32", 1, 16000, payload, data_size=0xFFFFFFFF)
    s = PCMStream(io.BytesIO(data), target_rate=8000, block_bytes=100)
    assert (s.rate, s.out_rate) == (16000, 8000)
    got = np.concatenate(list(s))
    np.testing.assert_allclose(got, resample(expect[:, 0], 16000, 8000), atol=1e-5)
    with pytest.raises(DataError, match="not a WAV stream"):
        PCMStream(io.BytesIO(b"\0" * 20), fmt="wav")
    with pytest.raises(ValueError, match="valid: auto, wav, u8"):
        PCMStream(io.BytesIO(b""), fmt="mp3")


def _first_item_while_open(make_iter, first: bytes):
    """Write ``first`` to a pipe, keep it open, and return the first item read."""
    r, w = os.pipe()
    os.write(w, first)
    out = {}

    def consume():
        with os.fdopen(r, "rb") as f:
            out["item"] = next(iter(make_iter(f)))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=10)
    os.close(w)
    assert not t.is_alive(), "reader waited for EOF"
    return out["item"]


def test_streams_yield_before_eof():
    payload, expect = encode(tones(80), "s16")
    chunk = _first_item_while_open(lambda f: PCMStream(f, rate=8000), payload)
    np.testing.assert_allclose(chunk, expect[:, 0], atol=1e-7)
    row = _first_item_while_open(lambda f: iter_csv_stream(f), b"x,y\n1.5,2\n")
    np.testing.assert_array_equal(row, [[1.5, 2]])


def test_csv_stream_text_and_grouping():
    text = io.StringIO("a b c\n1 2 3\n4 5 6\n7 8 9\n")
    chunks = list(iter_csv_stream(text, columns=["c"], chunk_frames=2))
    assert [c.shape for c in chunks] == [(2, 1), (1, 1)]
    with pytest.raises(DataError, match="<stdin>: line 2: not a number"):
        list(iter_csv_stream(io.StringIO("1,2\n1,?\n")))
