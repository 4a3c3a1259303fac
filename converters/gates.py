"""The one table of gate orders and weight layouts for every framework.

edgelstm stores recurrent weights the MLX way (``recurrent.py``):

- LSTM ``Wx (4H, I)``, ``Wh (4H, H)``, one summed ``bias (4H,)``, gate order
  ``i, f, g, o``; peepholes ``(3H,)`` in order ``i, f, o``.
- GRU ``Wx (3H, I)``, ``Wh (3H, H)``, ``b (3H,)`` (input + recurrent bias
  summed for r and z, the input bias alone for n) and ``bhn (H,)``, order
  ``r, z, n``.
- RNN ``Wxh (H, I)``, ``Whh (H, H)``, summed ``bias (H,)``.

Every other framework is described by :data:`GATE_ORDERS` plus a layout, and
converted with :func:`reorder`. Gate letters are canonical: ONNX's LSTM ``c``
is our ``g``; ONNX's and Keras's GRU ``h`` is our ``n``.

All functions take and return numpy arrays. Weight functions accept an
optional leading ``dirs`` axis: gates are always axis ``-2`` of a weight
matrix and axis ``-1`` of a bias or peephole vector.
"""

from __future__ import annotations

import numpy as np

from edgelstm.errors import ConversionError

#: Gate order of each (framework, cell) pair, as canonical letters.
GATE_ORDERS: dict[tuple[str, str], str] = {
    ("mlx", "lstm"): "ifgo",
    ("torch", "lstm"): "ifgo",
    ("keras", "lstm"): "ifgo",  # Keras calls it i, f, c, o
    ("onnx", "lstm"): "iofg",  # ONNX i, o, f, c
    ("ort_dq", "lstm"): "iofg",  # DynamicQuantizeLSTM: ONNX order, W transposed
    ("mlx", "gru"): "rzn",
    ("torch", "gru"): "rzn",
    ("keras", "gru"): "zrn",  # Keras z, r, h
    ("onnx", "gru"): "zrn",  # ONNX z, r, h
    ("mlx", "peephole"): "ifo",
    ("onnx", "peephole"): "iof",
}


def reorder(a: np.ndarray, src: str, dst: str, axis: int = -1) -> np.ndarray:
    """Permute the gate blocks of ``a`` along ``axis`` from order ``src`` to ``dst``.

    Args:
        a: array whose ``axis`` has ``len(src) * H`` entries.
        src, dst: gate orders as strings of the same letters, e.g. ``"iofg"``.
        axis: the gate axis.

    Returns:
        A new array with the blocks in ``dst`` order.
    """
    if sorted(src) != sorted(dst):
        raise ValueError(f"gate orders {src!r} and {dst!r} name different gates")
    a = np.asarray(a)
    n = a.shape[axis]
    if n % len(src):
        raise ConversionError(f"gate axis of size {n} does not split into {len(src)} gates")
    blocks = dict(zip(src, np.split(a, len(src), axis=axis), strict=False))
    return np.concatenate([blocks[g] for g in dst], axis=axis)


def _gates(a, fw_src, fw_dst, cell, axis):
    return reorder(a, GATE_ORDERS[(fw_src, cell)], GATE_ORDERS[(fw_dst, cell)], axis)


def _split_bias(B, n):
    """ONNX ``B [..., 2nH]`` -> (Wb, Rb), each ``[..., nH]``."""
    B = np.asarray(B)
    if B.shape[-1] % (2 * n):
        raise ConversionError(f"bias of size {B.shape[-1]} is not Wb||Rb for {n} gates")
    return np.split(B, 2, axis=-1)


# --- LSTM -------------------------------------------------------------------


def lstm_from_onnx(W, R, B=None, P=None):
    """ONNX LSTM weights -> ours.

    Args:
        W: ``[dirs?, 4H, I]`` order ``i, o, f, c``.
        R: ``[dirs?, 4H, H]``.
        B: ``[dirs?, 8H]`` = ``Wb || Rb``, or ``None``.
        P: ``[dirs?, 3H]`` peepholes ``i, o, f``, or ``None``.

    Returns:
        ``(Wx, Wh, bias, peephole)``; ``bias``/``peephole`` are ``None`` when absent.
    """
    Wx = _gates(W, "onnx", "mlx", "lstm", -2)
    Wh = _gates(R, "onnx", "mlx", "lstm", -2)
    bias = None
    if B is not None:
        Wb, Rb = _split_bias(B, 4)
        bias = _gates(Wb + Rb, "onnx", "mlx", "lstm", -1)
    peep = None if P is None else _gates(P, "onnx", "mlx", "peephole", -1)
    return Wx, Wh, bias, peep


def lstm_to_onnx(Wx, Wh, bias=None, peephole=None):
    """Our LSTM weights -> ONNX ``(W, R, B, P)``; ``B`` puts the bias in ``Wb``, ``Rb = 0``."""
    W = _gates(Wx, "mlx", "onnx", "lstm", -2)
    R = _gates(Wh, "mlx", "onnx", "lstm", -2)
    B = None
    if bias is not None:
        b = _gates(bias, "mlx", "onnx", "lstm", -1)
        B = np.concatenate([b, np.zeros_like(b)], axis=-1)
    P = None if peephole is None else _gates(peephole, "mlx", "onnx", "peephole", -1)
    return W, R, B, P


def lstm_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """PyTorch ``weight_ih (4H, I)``, ``weight_hh``, ``bias_ih``, ``bias_hh`` -> ``(Wx, Wh, bias)``."""
    return np.asarray(weight_ih), np.asarray(weight_hh), merge_bias(bias_ih, bias_hh)


def lstm_to_torch(Wx, Wh, bias=None):
    """Ours -> PyTorch ``(weight_ih, weight_hh, bias_ih, bias_hh)``; ``bias_hh`` is zeros."""
    bias_ih, bias_hh = split_bias(bias)
    return np.asarray(Wx), np.asarray(Wh), bias_ih, bias_hh


def lstm_from_keras(kernel, recurrent_kernel, bias=None):
    """Keras ``kernel (I, 4H)``, ``recurrent_kernel (H, 4H)``, ``bias (4H,)`` (i,f,c,o) -> ours."""
    Wx = _gates(np.swapaxes(kernel, -1, -2), "keras", "mlx", "lstm", -2)
    Wh = _gates(np.swapaxes(recurrent_kernel, -1, -2), "keras", "mlx", "lstm", -2)
    b = None if bias is None else _gates(bias, "keras", "mlx", "lstm", -1)
    return Wx, Wh, b


def lstm_to_keras(Wx, Wh, bias=None):
    """Ours -> Keras ``(kernel (I, 4H), recurrent_kernel (H, 4H), bias (4H,))``."""
    k = np.swapaxes(_gates(Wx, "mlx", "keras", "lstm", -2), -1, -2)
    rk = np.swapaxes(_gates(Wh, "mlx", "keras", "lstm", -2), -1, -2)
    b = None if bias is None else _gates(bias, "mlx", "keras", "lstm", -1)
    return k, rk, b


def ort_dq_to_onnx(W):
    """DynamicQuantizeLSTM ``W [dirs, I, 4H]`` (or ``R [dirs, H, 4H]``) -> ONNX ``[dirs, 4H, I]``.

    Works on quantized integers, dequantized floats and per-channel
    ``scale``/``zero_point`` alike: the gate order (i,o,f,c) is already ONNX's.
    """
    return np.swapaxes(np.asarray(W), -1, -2)


def onnx_to_ort_dq(W):
    """ONNX ``W [dirs, 4H, I]`` -> DynamicQuantizeLSTM layout ``[dirs, I, 4H]``."""
    return np.swapaxes(np.asarray(W), -1, -2)


def lstm_from_ort_dq(W, R, B=None, P=None):
    """Dequantized DynamicQuantizeLSTM weights (``W [dirs?, I, 4H]``) -> ours, as :func:`lstm_from_onnx`."""
    return lstm_from_onnx(ort_dq_to_onnx(W), ort_dq_to_onnx(R), B, P)


def lstm_to_ort_dq(Wx, Wh, bias=None, peephole=None):
    """Ours -> float DynamicQuantizeLSTM ``(W [dirs?, I, 4H], R [dirs?, H, 4H], B, P)``."""
    W, R, B, P = lstm_to_onnx(Wx, Wh, bias, peephole)
    return onnx_to_ort_dq(W), onnx_to_ort_dq(R), B, P


# --- GRU --------------------------------------------------------------------


def _gru_bias_from_parts(Wb, Rb):
    """Input/recurrent biases in r,z,n order -> our ``(b, bhn)``."""
    H = Wb.shape[-1] // 3
    b = np.concatenate([Wb[..., : 2 * H] + Rb[..., : 2 * H], Wb[..., 2 * H :]], axis=-1)
    return b, np.array(Rb[..., 2 * H :])


def _gru_bias_to_parts(b, bhn):
    """Our ``(b, bhn)`` -> input and recurrent biases (r,z in the input bias, ``Rb = 0, 0, bhn``)."""
    b = np.asarray(b)
    H = b.shape[-1] // 3
    bhn = np.zeros(b.shape[:-1] + (H,), b.dtype) if bhn is None else np.asarray(bhn)
    Rb = np.concatenate([np.zeros(b.shape[:-1] + (2 * H,), b.dtype), bhn], axis=-1)
    return b, Rb


def gru_from_onnx(W, R, B=None):
    """ONNX GRU weights (z, r, h) -> ours ``(Wx, Wh, b, bhn)``.

    Valid for both ``linear_before_reset`` forms: ONNX puts ``Rb_h`` either
    inside ``Rh (r*h) + Rb_h`` (0) or ``r * (Rh h + Rb_h)`` (1), which are exactly
    where :func:`edgelstm.nn.recurrent.gru` adds ``bhn``. ``b``/``bhn`` are ``None``
    when ``B`` is.
    """
    Wx = _gates(W, "onnx", "mlx", "gru", -2)
    Wh = _gates(R, "onnx", "mlx", "gru", -2)
    if B is None:
        return Wx, Wh, None, None
    Wb, Rb = _split_bias(B, 3)
    b, bhn = _gru_bias_from_parts(
        _gates(Wb, "onnx", "mlx", "gru", -1), _gates(Rb, "onnx", "mlx", "gru", -1)
    )
    return Wx, Wh, b, bhn


def gru_to_onnx(Wx, Wh, b=None, bhn=None):
    """Ours -> ONNX GRU ``(W, R, B)``; ``B = Wb || Rb`` with ``Rb = (0, 0, bhn)`` (z,r,h)."""
    W = _gates(Wx, "mlx", "onnx", "gru", -2)
    R = _gates(Wh, "mlx", "onnx", "gru", -2)
    if b is None and bhn is None:
        return W, R, None
    if b is None:
        b = np.zeros(np.shape(bhn)[:-1] + (3 * np.shape(bhn)[-1],), np.asarray(bhn).dtype)
    Wb, Rb = _gru_bias_to_parts(b, bhn)
    B = np.concatenate(
        [_gates(Wb, "mlx", "onnx", "gru", -1), _gates(Rb, "mlx", "onnx", "gru", -1)], axis=-1
    )
    return W, R, B


def gru_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """PyTorch GRU (r, z, n; linear-before-reset form) -> ``(Wx, Wh, b, bhn)``."""
    Wx, Wh = np.asarray(weight_ih), np.asarray(weight_hh)
    if bias_ih is None and bias_hh is None:
        return Wx, Wh, None, None
    H = Wh.shape[-1]
    z = np.zeros(Wh.shape[:-2] + (3 * H,), Wh.dtype)
    bi = z if bias_ih is None else np.asarray(bias_ih)
    bh = z if bias_hh is None else np.asarray(bias_hh)
    b, bhn = _gru_bias_from_parts(bi, bh)
    return Wx, Wh, b, bhn


def gru_to_torch(Wx, Wh, b=None, bhn=None):
    """Ours -> PyTorch ``(weight_ih, weight_hh, bias_ih, bias_hh)``; exact only for linear_before_reset=1."""
    if b is None and bhn is None:
        return np.asarray(Wx), np.asarray(Wh), None, None
    H = np.shape(Wh)[-1]
    if b is None:
        b = np.zeros(np.shape(Wh)[:-2] + (3 * H,), np.asarray(Wh).dtype)
    bias_ih, bias_hh = _gru_bias_to_parts(b, bhn)
    return np.asarray(Wx), np.asarray(Wh), bias_ih, bias_hh


def gru_from_keras(kernel, recurrent_kernel, bias=None, reset_after=True):
    """Keras GRU (z, r, h) -> ``(Wx, Wh, b, bhn, linear_before_reset)``.

    Args:
        kernel: ``(I, 3H)``; recurrent_kernel: ``(H, 3H)``.
        bias: ``(2, 3H)`` (input row, recurrent row) when ``reset_after``,
            else ``(3H,)``; or ``None``.
        reset_after: Keras's flag; ``True`` is ONNX ``linear_before_reset=1``.
    """
    Wx = _gates(np.swapaxes(kernel, -1, -2), "keras", "mlx", "gru", -2)
    Wh = _gates(np.swapaxes(recurrent_kernel, -1, -2), "keras", "mlx", "gru", -2)
    b = bhn = None
    if bias is not None:
        bias = np.asarray(bias)
        if reset_after:
            if bias.ndim != 2 or bias.shape[0] != 2:
                raise ConversionError(
                    f"Keras GRU reset_after bias must be (2, 3H), got {bias.shape}"
                )
            bi, bh = (_gates(x, "keras", "mlx", "gru", -1) for x in bias)
            b, bhn = _gru_bias_from_parts(bi, bh)
        else:
            b = _gates(bias, "keras", "mlx", "gru", -1)
    return Wx, Wh, b, bhn, bool(reset_after)


def gru_to_keras(Wx, Wh, b=None, bhn=None, reset_after=True):
    """Ours -> Keras ``(kernel, recurrent_kernel, bias)``; bias ``(2, 3H)`` when ``reset_after``."""
    k = np.swapaxes(_gates(Wx, "mlx", "keras", "gru", -2), -1, -2)
    rk = np.swapaxes(_gates(Wh, "mlx", "keras", "gru", -2), -1, -2)
    H = np.shape(Wh)[-1]
    dtype = np.asarray(Wh).dtype
    if b is None:
        b = np.zeros((3 * H,), dtype)
    if not reset_after:
        if bhn is not None and np.any(bhn):
            raise ConversionError("Keras GRU with reset_after=False has no recurrent bias for n")
        return k, rk, _gates(b, "mlx", "keras", "gru", -1)
    bi, bh = _gru_bias_to_parts(b, bhn)
    bias = np.stack([_gates(bi, "mlx", "keras", "gru", -1), _gates(bh, "mlx", "keras", "gru", -1)])
    return k, rk, bias


# --- RNN and bias helpers -----------------------------------------------------


def rnn_from_onnx(W, R, B=None):
    """ONNX RNN ``W [dirs?, H, I]``, ``R``, ``B [dirs?, 2H]`` -> ``(Wxh, Whh, bias)``."""
    bias = None
    if B is not None:
        Wb, Rb = _split_bias(B, 1)
        bias = Wb + Rb
    return np.asarray(W), np.asarray(R), bias


def rnn_to_onnx(Wxh, Whh, bias=None):
    """Ours -> ONNX RNN ``(W, R, B)`` with ``Rb = 0``."""
    B = None if bias is None else np.concatenate([bias, np.zeros_like(bias)], axis=-1)
    return np.asarray(Wxh), np.asarray(Whh), B


def rnn_from_keras(kernel, recurrent_kernel, bias=None):
    """Keras SimpleRNN ``kernel (I, H)``, ``recurrent_kernel (H, H)``, ``bias (H,)`` -> ours."""
    return np.swapaxes(kernel, -1, -2), np.swapaxes(recurrent_kernel, -1, -2), bias


def merge_bias(bias_ih, bias_hh):
    """Sum separate input/recurrent biases (PyTorch style); ``None`` if both are absent."""
    if bias_ih is None and bias_hh is None:
        return None
    if bias_ih is None:
        return np.array(bias_hh)
    if bias_hh is None:
        return np.array(bias_ih)
    return np.asarray(bias_ih) + np.asarray(bias_hh)


def split_bias(bias):
    """Summed bias -> ``(bias_ih, bias_hh)`` with ``bias_hh`` zeros; ``(None, None)`` if absent."""
    if bias is None:
        return None, None
    bias = np.asarray(bias)
    return bias.copy(), np.zeros_like(bias)


def rnn_to_keras(Wxh, Whh, bias=None):
    """Ours -> Keras SimpleRNN ``(kernel (I, H), recurrent_kernel (H, H), bias (H,))``."""
    return np.swapaxes(Wxh, -1, -2), np.swapaxes(Whh, -1, -2), bias
