"""Compressed and other audio files (FLAC, OGG/Vorbis/Opus, MP3, AIFF...) via soundfile.

WAV stays on edgelstm's own parser (:func:`edgelstm.frontend.readers.read_wav`): on the
FSDD recordings it reads a file in ~58 µs against soundfile's ~160 µs
(``benchmarks/bench_audio.py``), and it also parses WAV headers arriving on a pipe
(``arecord | edgelstm stream``), which soundfile cannot do incrementally. Everything
else goes to ``soundfile`` (libsndfile, bundled in its wheels), an optional extra:
``pip install 'edgelstm[audio]'``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgelstm.errors import DataError, UnsupportedError
from edgelstm.limits import check_elements, check_sample_rate

#: Suffixes read through soundfile (WAV is read by the built-in parser).
SOUNDFILE_SUFFIXES = (".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
#: Every audio suffix edgelstm reads.
AUDIO_SUFFIXES = (".wav", *SOUNDFILE_SUFFIXES)


def read_audio_file(path: str | os.PathLike, *, target_rate: int | None = None,
                    mono: bool = True) -> tuple[np.ndarray, int]:
    """Read a non-WAV audio file with soundfile.

    Returns:
        ``(samples, rate)``: ``(N,)`` float32 when ``mono`` else ``(N, C)``.

    Raises:
        UnsupportedError: soundfile is not installed.
        DataError: the file cannot be decoded or declares an absurd rate.
    """
    try:
        import soundfile as sf
    except ImportError:
        raise UnsupportedError(f"{Path(path).name}: reading {Path(path).suffix} files needs "
                               "soundfile; pip install 'edgelstm[audio]'") from None
    path = Path(path)
    try:
        info = sf.info(str(path))
        check_sample_rate(info.samplerate, f"{path}: sample rate")
        # A few KB of FLAC can declare hours of silence: bound the decode first.
        check_elements((int(info.frames), int(info.channels)), f"{path}: samples")
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as exc:
        raise DataError(f"{path}: cannot decode audio ({' '.join(str(exc).split())})") from None
    return to_mono_at_rate(x, int(rate), target_rate, mono)


def to_mono_at_rate(x: np.ndarray, rate: int, target_rate: int | None, mono: bool
                    ) -> tuple[np.ndarray, int]:
    """Decoded audio ``(N, C)`` -> ``(N,)`` (channel mean) when ``mono``, resampled to
    ``target_rate`` when set and different; float32, contiguous."""
    if mono:
        x = x.mean(axis=1, dtype=np.float32) if x.shape[1] > 1 else x[:, 0]
    if target_rate and int(target_rate) != rate:
        from edgelstm.frontend.resample import resample

        check_sample_rate(target_rate, "target sample rate")
        x = resample(x, rate, int(target_rate)).astype(np.float32)
        rate = int(target_rate)
    return np.ascontiguousarray(x, dtype=np.float32), rate
