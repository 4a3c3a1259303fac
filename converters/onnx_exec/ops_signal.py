"""Signal ops: ``DFT``, ``STFT``, window functions and ``MelWeightMatrix``.

Forward transforms are matrix products with cos/sin tables, summed in float64
(MLX's FFT is complex64 only; this way float64 graphs stay exact and exactly
zero bins stay zero); float32 inverse transforms use MLX's FFT. Any length
works; one-sided output is the first ``n // 2 + 1`` bins.
Windows and mel matrices depend only on static sizes and are built in numpy.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from onnx import TensorProto

from edgelstm.converters.onnx_exec.ops import DTYPES, ints, norm_axis, opt, register, to_mx, to_np


def _tables(n_in: int, length: int, n_out: int, inverse: bool):
    """cos/sin tables ``(n_in, n_out)`` of a length-``length`` DFT (rows past n_in unused)."""
    n = np.arange(n_in)[:, None]
    k = np.arange(n_out)[None, :]
    ang = 2 * np.pi * ((n * k) % length) / length
    return np.cos(ang), np.sin(ang) * (1.0 if inverse else -1.0)


def _dft_last(re, im, length: int, onesided: bool, inverse: bool):
    """DFT over the last axis of ``re``/``im`` (im may be None): (real, imag)."""
    if inverse and re.dtype == mx.float32:  # MLX's FFT (complex64), as numpy's ifft
        z = re.astype(mx.complex64)
        if im is not None:
            z = z + im.astype(mx.complex64) * 1j
        f = (mx.fft.ifft if inverse else mx.fft.fft)(z, n=length, axis=-1)
        if onesided:
            f = f[..., : length // 2 + 1]
        return mx.real(f), mx.imag(f)
    # forward sums in float64: bins that are exactly zero come out zero
    dt = re.dtype
    re = re.astype(mx.float64)
    im = im.astype(mx.float64) if im is not None else None
    n = re.shape[-1]
    if n > length:  # dft_length shorter than the signal: crop
        re = re[..., :length]
        im = im[..., :length] if im is not None else None
        n = length
    n_out = length // 2 + 1 if onesided else length
    c, s = _tables(n, length, n_out, inverse)
    c, s = mx.array(c, dtype=re.dtype), mx.array(s, dtype=re.dtype)
    out_re = re @ c
    out_im = re @ s
    if im is not None:
        out_re = out_re - im @ s
        out_im = out_im + im @ c
    if inverse:
        out_re, out_im = out_re / length, out_im / length
    return out_re.astype(dt), out_im.astype(dt)


@register("DFT", ("axis", "inverse", "onesided"))
def _dft(ctx, ins):
    x = to_mx(ins[0])
    if x.dtype in (mx.float16, mx.bfloat16):
        x = x.astype(mx.float32)
    length_in = opt(ins, 1)
    if ctx.opset >= 20:
        axis = ints(ins[2])[0] if opt(ins, 2) is not None else -2
    else:
        axis = ctx.get("axis", 1)
    axis = norm_axis(axis, x.ndim)
    if axis == x.ndim - 1:
        raise ctx.unsupported("a DFT over the real/imaginary axis")
    inverse, onesided = bool(ctx.get("inverse", 0)), bool(ctx.get("onesided", 0))
    if inverse and onesided:
        raise ctx.unsupported("inverse=1 with onesided=1")
    length = ints(length_in)[0] if length_in is not None else x.shape[axis]
    re = mx.moveaxis(x[..., 0], axis, -1)
    im = mx.moveaxis(x[..., 1], axis, -1) if x.shape[-1] == 2 else None
    if onesided and im is not None:
        raise ctx.unsupported("onesided=1 on a complex signal")
    out_re, out_im = _dft_last(re, im, length, onesided, inverse)
    out = mx.stack([mx.moveaxis(out_re, -1, axis), mx.moveaxis(out_im, -1, axis)], axis=-1)
    return [out.astype(to_mx(ins[0]).dtype)]


@register("STFT", ("onesided",))
def _stft(ctx, ins):
    x = to_mx(ins[0])
    dt = x.dtype
    x = x.astype(mx.float32) if dt in (mx.float16, mx.bfloat16) else x
    step = ints(ins[1])[0]
    window = opt(ins, 2)
    flen = opt(ins, 3)
    if flen is not None:
        flen = ints(flen)[0]
    elif window is not None:
        flen = window.shape[0]
    else:
        raise ctx.unsupported("an STFT without window or frame_length")
    n = x.shape[1]
    frames = (n - flen) // step + 1
    idx = (np.arange(frames)[:, None] * step + np.arange(flen)[None, :]).astype(np.int32)
    fr = mx.take(x, mx.array(idx.reshape(-1)), axis=1)
    fr = fr.reshape(x.shape[0], frames, flen, x.shape[2])
    if window is not None:
        fr = fr * to_mx(window).astype(x.dtype).reshape(1, 1, flen, 1)
    onesided = bool(ctx.get("onesided", 1))
    im = fr[..., 1] if x.shape[2] == 2 else None
    if onesided and im is not None:
        raise ctx.unsupported("onesided=1 on a complex signal")
    re_, im_ = _dft_last(fr[..., 0], im, flen, onesided, False)
    return [mx.stack([re_, im_], axis=-1).astype(dt)]


def _window(body):
    def fn(ctx, ins):
        size = int(to_np(ins[0]).reshape(-1)[0])
        dt = DTYPES[ctx.get("output_datatype", TensorProto.FLOAT)][0]
        denom = size if ctx.get("periodic", 1) else size - 1
        n = np.arange(size, dtype=np.float64)
        return [body(n, denom).astype(dt)]

    return fn


register("HannWindow", ("output_datatype", "periodic"))(
    _window(lambda n, d: np.sin(np.pi * n / d) ** 2)
)
register("HammingWindow", ("output_datatype", "periodic"))(
    _window(lambda n, d: 25 / 46 - (1 - 25 / 46) * np.cos(2 * np.pi * n / d))
)
register("BlackmanWindow", ("output_datatype", "periodic"))(
    _window(lambda n, d: 0.42 - 0.5 * np.cos(2 * np.pi * n / d) + 0.08 * np.cos(4 * np.pi * n / d))
)


@register("MelWeightMatrix", ("output_datatype",))
def _mel_weight_matrix(ctx, ins):
    n_mel, dft_len, rate = (int(to_np(v).reshape(-1)[0]) for v in ins[:3])
    lo, hi = (float(to_np(v).reshape(-1)[0]) for v in ins[3:5])
    n_spec = dft_len // 2 + 1
    # triangular filters between mel-spaced points, the edges on integer DFT bins
    lo_mel, hi_mel = (2595 * np.log1p(f / 700) / np.log(10) for f in (lo, hi))
    pts = np.arange(n_mel + 2) * ((hi_mel - lo_mel) / (n_mel + 2)) + lo_mel
    hz = 700 * np.expm1(pts / 2595 * np.log(10))
    bins = (((dft_len + 1) * hz) // rate).astype(int)
    out = np.zeros((n_spec, n_mel))
    for i in range(n_mel):
        left, center, right = bins[i], bins[i + 1], bins[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            j = np.arange(left, center + 1)
            out[j, i] = (j - left) / (center - left)
        if right > center:
            j = np.arange(center, right)
            out[j, i] = (right - j) / (right - center)
    return [out.astype(DTYPES[ctx.get("output_datatype", TensorProto.FLOAT)][0])]
