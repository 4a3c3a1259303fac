"""Input readers: WAV, CSV, ``.npy`` files and live PCM / CSV streams (stdin).

Everything returns float32 numpy arrays. Audio is scaled to [-1, 1): 8-bit PCM is
unsigned (``(u - 128) / 128``), 16/24/32-bit PCM signed (``v / 2**(bits - 1)``),
IEEE float passes through. Malformed input raises :class:`edgelstm.errors.DataError`
with a one-line message that starts with the file name.
"""

from __future__ import annotations

import csv
import io
import os
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError, LimitError
from edgelstm.frontend.audio_files import SOUNDFILE_SUFFIXES, read_audio_file, to_mono_at_rate
from edgelstm.frontend.resample import StreamingResampler
from edgelstm.limits import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, check_sample_rate

__all__ = [
    "PCM_FORMATS",
    "PCMStream",
    "iter_csv_stream",
    "parse_wav",
    "read_csv",
    "read_input",
    "read_npy",
    "read_wav",
]

WAVE_FORMAT_PCM = 1
WAVE_FORMAT_IEEE_FLOAT = 3
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_* GUIDs share this tail after the 2-byte format code.
_GUID_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
_STREAMED_SIZES = (0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000)  # placeholders live writers use

# Raw stream formats: name -> (format code, bytes per sample).
PCM_FORMATS = {
    "u8": (WAVE_FORMAT_PCM, 1),
    "s16le": (WAVE_FORMAT_PCM, 2),
    "s24le": (WAVE_FORMAT_PCM, 3),
    "s32le": (WAVE_FORMAT_PCM, 4),
    "f32le": (WAVE_FORMAT_IEEE_FLOAT, 4),
    "f64le": (WAVE_FORMAT_IEEE_FLOAT, 8),
}


# ---------------------------------------------------------------- WAV


def _decode(raw: bytes | memoryview, code: int, width: int, channels: int) -> np.ndarray:
    """Interleaved little-endian samples -> float32 ``(N, channels)``."""
    if code == WAVE_FORMAT_PCM and width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif code == WAVE_FORMAT_PCM and width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif code == WAVE_FORMAT_PCM and width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = ((v ^ 0x800000) - 0x800000).astype(np.float32) / 8388608.0  # sign-extend 24 bits
    elif code == WAVE_FORMAT_PCM and width == 4:
        x = (np.frombuffer(raw, "<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    elif code == WAVE_FORMAT_IEEE_FLOAT and width in (4, 8):
        x = np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float32)
    else:
        raise ValueError(f"unsupported sample format (code {code}, {8 * width}-bit)")
    return x.reshape(-1, channels)


def _parse_fmt(body: bytes, name: str) -> tuple[int, int, int, int]:
    """``fmt `` chunk -> (format code, channels, rate, bytes per sample)."""
    if len(body) < 16:
        raise DataError(f"{name}: fmt chunk too short ({len(body)} bytes)")
    code, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", body[:16])
    if code == WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 40 or body[26:40] != _GUID_TAIL:
            raise DataError(f"{name}: malformed WAVE_FORMAT_EXTENSIBLE fmt chunk")
        code = struct.unpack("<H", body[24:26])[0]
    if channels == 0 or rate == 0:
        raise DataError(f"{name}: invalid fmt chunk ({channels} channels, {rate} Hz)")
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        # resampling cost grows with the rate ratio (1 Hz -> 8 kHz is 8000x the input)
        raise LimitError(f"{name}: sample rate {rate} Hz is outside "
                         f"[{MIN_SAMPLE_RATE}, {MAX_SAMPLE_RATE}] Hz")
    width = block_align // channels
    if block_align % channels or width != -(-bits // 8):
        raise DataError(f"{name}: inconsistent fmt chunk ({bits}-bit, block align {block_align})")
    if code not in (WAVE_FORMAT_PCM, WAVE_FORMAT_IEEE_FLOAT):
        what = {6: "A-law", 7: "mu-law", 2: "ADPCM"}.get(code, f"format code {code:#x}")
        raise DataError(f"{name}: {what} WAV is not supported (PCM or IEEE float only)")
    if (code, width) not in PCM_FORMATS.values():
        raise DataError(f"{name}: {bits}-bit {'float' if code == 3 else 'PCM'} is not supported")
    return code, channels, rate, width


def parse_wav(data: bytes, name: str = "<wav>") -> tuple[np.ndarray, int]:
    """Decode WAV file bytes.

    Args:
        data: The whole file.
        name: Used in error messages.

    Returns:
        ``(samples (N, C) float32, rate)``.

    Raises:
        DataError: If the bytes are not a supported WAV file.
    """
    if len(data) < 12 or data[8:12] != b"WAVE" or data[:4] not in (b"RIFF", b"RIFX", b"RF64"):
        raise DataError(f"{name}: not a WAV file (no RIFF/WAVE header)")
    if data[:4] != b"RIFF":
        raise DataError(f"{name}: {data[:4].decode()} WAV files are not supported")
    fmt = None
    pos = 12
    view = memoryview(data)
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        start = pos + 8
        if cid == b"fmt ":
            fmt = _parse_fmt(data[start : start + size], name)
        elif cid == b"data":
            if fmt is None:
                raise DataError(f"{name}: data chunk comes before the fmt chunk")
            code, channels, rate, width = fmt
            avail = len(data) - start
            if size > avail:
                if size not in _STREAMED_SIZES:
                    warnings.warn(f"{name}: truncated data chunk", stacklevel=2)
                size = avail
            size -= size % (width * channels)  # drop a partial last frame
            return _decode(view[start : start + size], code, width, channels), rate
        pos = start + size + (size & 1)  # chunks are padded to even length
    raise DataError(f"{name}: no {'data' if fmt else 'fmt'} chunk")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_wav(
    path: str | os.PathLike, *, target_rate: int | None = None, mono: bool = True
) -> tuple[np.ndarray, int]:
    """Read a WAV file (PCM 8/16/24/32-bit, float 32/64, plain or EXTENSIBLE).

    Args:
        path: File path.
        target_rate: Resample to this rate (Hz) when set and different.
        mono: Average the channels. Default: ``True``.

    Returns:
        ``(samples, rate)``: ``(N,)`` float32 when ``mono`` else ``(N, C)``, and the
        rate of the returned samples.

    Raises:
        DataError: If the file is unreadable or not a supported WAV.
    """
    path = Path(path)
    x, rate = parse_wav(_read_bytes(path), str(path))
    return to_mono_at_rate(x, rate, target_rate, mono)


# ---------------------------------------------------------------- CSV / npy


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return line.split()
    try:
        return [f.strip() for f in next(csv.reader([line], delimiter=delimiter))]
    except (csv.Error, StopIteration) as exc:  # NUL bytes, unbalanced quotes in random input
        raise DataError(f"not a CSV line ({exc or 'empty'})") from None


def _sniff(line: str) -> str | None:
    for d in ("\t", ",", ";"):
        if d in line:
            return d
    return None  # whitespace-separated


def _select(
    columns: Sequence[int | str] | None, header: list[str] | None, width: int, name: str
) -> list[int] | None:
    if columns is None:
        return None
    idx = []
    for c in columns:
        if isinstance(c, str) and not c.lstrip("-").isdigit():
            if header is None or c not in header:
                where = f"header {header}" if header else "no header row"
                raise DataError(f"{name}: no column named {c!r} ({where})")
            idx.append(header.index(c))
        else:
            i = int(c)
            if not -width <= i < width:
                raise DataError(f"{name}: column {i} out of range ({width} columns)")
            idx.append(i % width)
    return idx


class _CSVParser:
    """Row-by-row parser shared by :func:`read_csv` and :func:`iter_csv_stream`."""

    def __init__(self, name: str, columns, delimiter: str | None):
        self.name, self.columns, self.delimiter = name, columns, delimiter
        self.header: list[str] | None = None
        self.width: int | None = None
        self.index: list[int] | None = None
        self.lineno = 0

    def row(self, line: str) -> list[float] | None:
        """Parse one line; ``None`` for blank, comment and header lines."""
        self.lineno += 1
        line = line.strip()
        if not line or line.startswith("#"):
            return None
        if self.width is None:
            if self.delimiter is None:
                self.delimiter = _sniff(line)
            fields = self._fields(line)
            self.width = len(fields)
            if not all(_is_number(f) for f in fields):
                self.header = fields
                self.index = _select(self.columns, self.header, self.width, self.name)
                return None
            self.index = _select(self.columns, None, self.width, self.name)
        fields = self._fields(line)
        if len(fields) != self.width:
            raise DataError(
                f"{self.name}: line {self.lineno} has {len(fields)} fields, expected {self.width}"
            )
        try:
            values = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_number(f))
            raise DataError(f"{self.name}: line {self.lineno}: not a number: {bad!r}") from None
        return values if self.index is None else [values[i] for i in self.index]

    def _fields(self, line: str) -> list[str]:
        try:
            return _split(line, self.delimiter)
        except DataError as exc:
            raise DataError(f"{self.name}: line {self.lineno}: {exc}") from None

    def n_out(self) -> int:
        return len(self.index) if self.index is not None else (self.width or 0)


def read_csv(
    path: str | os.PathLike,
    *,
    columns: Sequence[int | str] | None = None,
    delimiter: str | None = None,
) -> np.ndarray:
    """Read a CSV of one frame per row.

    A first row with any non-numeric field is a header. Blank lines and lines
    starting with ``#`` are skipped. The delimiter is sniffed (tab, comma,
    semicolon, else whitespace) unless given.

    Args:
        path: File path.
        columns: Columns to keep, by 0-based index or header name. Default: all.
        delimiter: Field separator; ``None`` sniffs it.

    Returns:
        Frames, shape ``(T, F)`` float32.

    Raises:
        DataError: On ragged rows, non-numeric values, unknown columns or no data.
    """
    path = Path(path)
    try:
        text = _read_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None
    p = _CSVParser(str(path), columns, delimiter)
    rows = [r for r in map(p.row, text.splitlines()) if r is not None]
    if not rows:
        raise DataError(f"{path}: no data rows")
    return np.asarray(rows, dtype=np.float32)


def read_npy(path: str | os.PathLike) -> np.ndarray:
    """Read a ``.npy`` array as frames ``(T, F)`` float32 (a ``(T,)`` array becomes ``(T, 1)``).

    Raises:
        DataError: If the file is unreadable, not numeric, or has more than 2 dimensions.
    """
    from edgelstm.frontend.arrays import load_npy

    path = Path(path)
    try:
        x = load_npy(path)  # the header is checked against the file size first
    except OSError as e:
        raise DataError(f"{path}: cannot read .npy ({e.strerror or e})") from None
    except LimitError:
        raise
    except DataError as e:  # keep this reader's "<file>: cannot read .npy (why)" form
        why = str(e).removeprefix(f"cannot read {path}: ")
        raise DataError(f"{path}: cannot read .npy ({why})") from None
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "biuf":
        raise DataError(f"{path}: expected a numeric array, got dtype {getattr(x, 'dtype', '?')}")
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2:
        raise DataError(f"{path}: expected shape (T, F), got {x.shape}")
    return x.astype(np.float32)


def read_input(
    path: str | os.PathLike,
    *,
    target_rate: int | None = None,
    columns: Sequence[int | str] | None = None,
) -> tuple[np.ndarray, int | None]:
    """Read any supported input file, chosen by suffix.

    Returns:
        ``(samples (N,), rate)`` for audio (``.wav``, and through soundfile
        :data:`~edgelstm.frontend.audio_files.SOUNDFILE_SUFFIXES`); ``(frames (T, F), None)`` for
        ``.csv``/``.tsv``/``.txt`` and ``.npy``.

    Raises:
        DataError: For an unknown suffix or a malformed file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".wav":
        return read_wav(path, target_rate=target_rate)
    if suffix in SOUNDFILE_SUFFIXES:
        return read_audio_file(path, target_rate=target_rate)
    if suffix in (".csv", ".tsv", ".txt"):
        return read_csv(path, columns=columns), None
    if suffix == ".npy":
        x = read_npy(path)
        return (x if columns is None else x[:, list(columns)]), None
    raise DataError(f"{path}: unknown input type {suffix!r} (expected .wav, "
                    f"{', '.join(SOUNDFILE_SUFFIXES)}, .csv, .npy)")


# ---------------------------------------------------------------- live streams


def _read_some(stream, n: int) -> bytes:
    """Return what is available (at least 1 byte, b'' at EOF) without waiting for ``n``."""
    if hasattr(stream, "read1"):
        return stream.read1(n)
    if hasattr(stream, "fileno"):
        try:
            return os.read(stream.fileno(), n)
        except (OSError, io.UnsupportedOperation):
            pass
    return stream.read(n)


def _read_exact(stream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = _read_some(stream, n - len(out))
        if not b:
            break
        out += b
    return bytes(out)


class PCMStream:
    """Live audio from a binary stream (e.g. ``sys.stdin.buffer``), yielded as it arrives.

    With ``fmt="auto"`` a leading RIFF/WAVE header (as ``arecord`` or ``sox -t wav -``
    write) is parsed and gives the format and rate; otherwise the bytes are raw
    ``s16le``. The header, if any, is read on construction.

    Args:
        stream: Binary file object.
        fmt: ``"auto"``, ``"wav"`` or a raw format in :data:`PCM_FORMATS`.
        rate: Sample rate of raw input; defaults to ``target_rate``. Ignored for WAV.
        channels: Interleaved channels of raw input; downmixed to mono.
        chunk_samples: Yield exactly this many samples per chunk (the last may be
            shorter); ``None`` yields whatever each read brings.
        target_rate: Resample (streaming, exact) to this rate when it differs.
        block_bytes: Largest single read. Default: ``4096``.
        name: Used in error messages. Default: ``"<stdin>"``.

    Iterating yields float32 ``(n,)`` chunks at :attr:`out_rate`.
    """

    def __init__(
        self,
        stream,
        *,
        fmt: str = "auto",
        rate: int | None = None,
        channels: int = 1,
        chunk_samples: int | None = None,
        target_rate: int | None = None,
        block_bytes: int = 4096,
        name: str = "<stdin>",
    ):
        if fmt not in ("auto", "wav") and fmt not in PCM_FORMATS:
            raise ValueError(f"unknown PCM format {fmt!r}; valid: auto, wav, {', '.join(PCM_FORMATS)}")
        self.stream, self.name = stream, name
        self.chunk_samples, self.block_bytes = chunk_samples, block_bytes
        self._pending = b""
        head = b""
        if fmt in ("auto", "wav"):
            head = _read_exact(stream, 12)
            if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
                self.code, self.channels, self.rate, self.width = self._read_header()
            elif fmt == "wav":
                raise DataError(f"{name}: not a WAV stream (no RIFF/WAVE header)")
            else:
                self._pending, fmt = head, "s16le"
        if fmt in PCM_FORMATS:
            self.code, self.width = PCM_FORMATS[fmt]
            self.channels, self.rate = int(channels), rate
        self.out_rate = int(target_rate) if target_rate else self.rate
        if self.out_rate is None:
            raise DataError(f"{name}: raw PCM input needs a sample rate (--rate)")
        if self.rate is None:
            self.rate = self.out_rate
        check_sample_rate(self.rate, f"{name}: sample rate")
        check_sample_rate(self.out_rate, f"{name}: target sample rate")
        self._rs = (
            StreamingResampler(self.out_rate, self.rate) if self.out_rate != self.rate else None
        )

    def _read_header(self) -> tuple[int, int, int, int]:
        fmt = None
        while True:
            hdr = _read_exact(self.stream, 8)
            if len(hdr) < 8:
                raise DataError(f"{self.name}: WAV stream ended before its data chunk")
            cid, size = hdr[:4], struct.unpack("<I", hdr[4:])[0]
            if cid == b"data":
                if fmt is None:
                    raise DataError(f"{self.name}: data chunk comes before the fmt chunk")
                return fmt
            body = _read_exact(self.stream, size + (size & 1))
            if cid == b"fmt ":
                fmt = _parse_fmt(body[:size], self.name)

    def _mono(self, raw: bytes) -> np.ndarray:
        x = _decode(raw, self.code, self.width, self.channels)
        x = x.mean(axis=1, dtype=np.float32) if self.channels > 1 else x[:, 0]
        return x if self._rs is None else self._rs.accept(x).astype(np.float32)

    def _blocks(self) -> Iterator[np.ndarray]:
        frame = self.width * self.channels
        pending = self._pending
        while True:
            b = _read_some(self.stream, self.block_bytes)
            if not b:
                break
            pending += b
            n = len(pending) - len(pending) % frame
            if n:
                yield self._mono(pending[:n])
                pending = pending[n:]
        if pending:
            warnings.warn(f"{self.name}: dropped {len(pending)} trailing bytes", stacklevel=3)
        if self._rs is not None:
            yield self._rs.flush().astype(np.float32).reshape(-1)

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.chunk_samples is None:
            for x in self._blocks():
                if x.size:
                    yield x
            return
        buf = np.zeros(0, dtype=np.float32)
        for x in self._blocks():
            buf = np.concatenate([buf, x])
            n = len(buf) // self.chunk_samples * self.chunk_samples
            for i in range(0, n, self.chunk_samples):
                yield buf[i : i + self.chunk_samples]
            buf = buf[n:]
        if buf.size:
            yield buf


def iter_csv_stream(
    stream,
    *,
    columns: Sequence[int | str] | None = None,
    delimiter: str | None = None,
    chunk_frames: int | None = None,
    name: str = "<stdin>",
) -> Iterator[np.ndarray]:
    """Yield frames from CSV lines as they arrive (text or binary stream).

    Args:
        stream: File object; read line by line, never waiting for EOF.
        columns: Columns to keep, by index or header name.
        delimiter: Field separator; ``None`` sniffs it from the first line.
        chunk_frames: Group this many rows per chunk; ``None`` yields each row.
        name: Used in error messages.

    Yields:
        Frames, shape ``(t, F)`` float32.
    """
    p = _CSVParser(name, columns, delimiter)
    rows: list[list[float]] = []
    group = chunk_frames or 1
    while True:
        line = stream.readline()
        if not line:
            break
        if isinstance(line, bytes):
            line = line.decode("utf-8", errors="replace")
        r = p.row(line)
        if r is None:
            continue
        rows.append(r)
        if len(rows) >= group:
            yield np.asarray(rows, dtype=np.float32)
            rows = []
    if rows:
        yield np.asarray(rows, dtype=np.float32)
