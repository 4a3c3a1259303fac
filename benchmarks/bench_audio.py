"""Audio I/O and resampling: edgelstm's own code against soundfile, soxr and scipy.

Why both exist (see the comments in edgelstm/frontend/readers.py and resample.py):

* WAV: the built-in parser against ``soundfile.read`` on real FSDD recordings.
* Resampling 8 kHz <-> 16 kHz / 44.1 kHz -> 16 kHz: edgelstm's Kaiser polyphase filter,
  ``soxr.resample`` (quality "HQ") and ``scipy.signal.resample_poly``, for speed (median
  ms over a 10 s signal) and quality (passband error of a 1 kHz tone, and rejection of
  a tone above the output Nyquist frequency, in dB).

Usage: ``python benchmarks/bench_audio.py [--data ../shared/data/fsdd/recordings]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from edgelstm.frontend.readers import read_wav
from edgelstm.frontend.resample import resample


def _median_ms(fn, repeat=15) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def _tone(freq, rate, seconds=10.0):
    t = np.arange(int(rate * seconds)) / rate
    return np.sin(2 * np.pi * freq * t).astype(np.float32)


def _rms_db(x):
    return 20 * np.log10(np.sqrt(np.mean(np.square(x[len(x) // 10: -len(x) // 10]))) + 1e-20)


def resamplers():
    out = {"edgelstm": lambda x, a, b: resample(x, a, b)}
    try:
        import soxr

        out["soxr HQ"] = lambda x, a, b: soxr.resample(x, a, b, quality="HQ")
    except ImportError:
        pass
    try:
        from scipy.signal import resample_poly

        def poly(x, a, b):
            f = Fraction(b, a)
            return resample_poly(x, f.numerator, f.denominator).astype(np.float32)

        out["scipy resample_poly"] = poly
    except ImportError:
        pass
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"
                                          / "fsdd" / "recordings"))
    args = ap.parse_args(argv)
    files = sorted(Path(args.data).glob("*.wav"))[:200]
    if files:
        import soundfile as sf

        own = _median_ms(lambda: [read_wav(f) for f in files], 5) / len(files)
        lib = _median_ms(lambda: [sf.read(f, dtype="float32") for f in files], 5) / len(files)
        print(f"WAV read, {len(files)} FSDD files: edgelstm {own * 1e3:.1f} us/file, "
              f"soundfile {lib * 1e3:.1f} us/file")
    print("\n| resampler | case | ms (10 s) | 1 kHz tone error dB | alias rejection dB |")
    print("|---|---|---:|---:|---:|")
    for name, fn in resamplers().items():
        for a, b in ((8000, 16000), (16000, 8000), (44100, 16000)):
            x = _tone(1000, a)
            ms = _median_ms(lambda fn=fn, x=x, a=a, b=b: fn(x, a, b))
            y = fn(x, a, b)
            ref = _tone(1000, b, len(y) / b)[: len(y)]
            n = min(len(y), len(ref))
            err = _rms_db(y[:n] - ref[:n]) - _rms_db(ref[:n])
            if b < a:  # a tone 10% above the new Nyquist must vanish
                alias = fn(_tone(0.55 * b, a), a, b)
                rej = f"{-_rms_db(alias):.0f}"
            else:
                rej = "n/a"
            print(f"| {name} | {a} -> {b} | {ms:.2f} | {err:.0f} | {rej} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
