"""What 8-bit activations would cost an int8 LSTM, next to what its int8 steps cost.

The int8 recurrent steps keep h exact (float32 widened weights, or 32-bit
fixed-point limbs on VNNI) instead of quantizing h to 8 bits per step, as a
plain VNNI / sdot kernel (and ONNX Runtime's DynamicQuantizeLSTM) would. This
measures the difference on one ``quantize_mlx`` model: max |y - y64| over
``T=100`` steps, where y64 is a float64 recurrence on the same dequantized int8
weights, for the kernel paths (default int8 step, widening step, the int8
weights expanded to the fp32 packing) and for a float64 recurrence that
quantizes h per step and row to u8 with a zero point (asymmetric, as ORT's
dynamic quantization does).

Usage: ``.venv/bin/python benchmarks/q8_numerics.py [--hidden 128,512]``.
"""

from __future__ import annotations

import argparse
import os
import sys

import edgelstm  # noqa: F401  (loads OpenBLAS before mlx.core)

# isort: split
import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

from edgelstm.fast import dispatch as kernels
from edgelstm.nn.layers import LSTM
from edgelstm.quantize import quantize_mlx

PATHS = {
    "int8 kernel (default)": {},
    "int8 step, no VNNI": {"EDGELSTM_Q8_STEP": "1", "EDGELSTM_Q8_VNNI": "0"},
    "int8 fp32 packing": {"EDGELSTM_Q8_STEP": "0"},
}


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def lstm64(x, Wx, Wh, b, u8_h=False):
    """float64 LSTM (gates i, f, g, o) over x (T, I); y (T, H). ``u8_h``: h to u8 per step."""
    H = Wh.shape[1]
    h, c, ys = np.zeros(H), np.zeros(H), []
    for t in range(x.shape[0]):
        hv = h
        if u8_h:
            lo, hi = min(h.min(), 0.0), max(h.max(), 0.0)
            scale = (hi - lo) / 255 or 1.0
            zero = np.round(-lo / scale)
            hv = (np.clip(np.round(h / scale) + zero, 0, 255) - zero) * scale
        i, f, g, o = np.split(Wx @ x[t] + Wh @ hv + b, 4)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        ys.append(h)
    return np.array(ys)


def measure(H: int, T: int = 100, I: int = 40) -> dict[str, float]:
    """max |y - y64| per path for a seeded ``quantize_mlx`` LSTM(I, H), batch 1."""
    mx.random.seed(0)
    model = LSTM(I, H)
    model.eval()
    quantize_mlx(model)
    mx.eval(model.parameters())
    p = {k: np.array(v).astype(np.float64) for k, v in tree_flatten(model.parameters())}
    pre = "layers.0.forward."
    Wx = p[pre + "Wx"] * p[pre + "Wx_scales"][:, None]
    Wh = p[pre + "Wh"] * p[pre + "Wh_scales"][:, None]
    x = np.random.default_rng(0).normal(0, 1, (T, I))
    ref = lstm64(x, Wx, Wh, p[pre + "bias"])
    out = {}
    for name, env in PATHS.items():
        saved = {k: os.environ.pop(k, None) for k in ("EDGELSTM_Q8_STEP", "EDGELSTM_Q8_VNNI")}
        os.environ.update(env)
        try:
            y, _ = model(mx.array(x[None].astype(np.float32)))
            out[name] = float(np.abs(np.array(y)[0] - ref).max())
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
    out["float64, u8 h per step"] = float(np.abs(lstm64(x, Wx, Wh, p[pre + "bias"], True)
                                                 - ref).max())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", default="128,512", help="hidden sizes (comma list)")
    args = ap.parse_args(argv)
    if not kernels.available():
        print(f"fused kernels unavailable: {kernels.reason()}", file=sys.stderr)
        return 1
    print(f"kernels: {kernels.reason()}")
    for H in map(int, args.hidden.split(",")):
        res = measure(H)
        print(f"H={H} T=100 B=1, max|y - y64|: "
              + ", ".join(f"{n} {v:.1e}" for n, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
