"""The fused C++ fast path (``edgelstm.fast._kernels``) and the one decision to use it.

MLX's CPU backend spends ~25-30 µs dispatching each primitive, so a
per-timestep loop of MLX ops is overhead-bound at small batch. The compiled
extension ``edgelstm.fast._kernels`` (C++ sources in ``kernels/``, built into
the package by ``pip install``) adds one MLX primitive per direction that runs
a whole sequence in one CPU task: the input projection as one matmul, then
per step ``h @ Wh.T`` and fused gate math. The LSTM step runs on ``Wh`` packed
once per weight buffer (cached) into panels of one vector of hidden units, the
gate math applied per block of units as its products come out; the loops are
built for AVX-512, AVX2+FMA and a baseline (SSE2 / NEON), picked at run time
(``EDGELSTM_ISA=avx2|baseline`` caps the choice). GRU and RNN run the kernel's
own small matmul up to 7 rows, the linked BLAS beyond. A unidirectional multi-layer stack
runs all its layers in one primitive (:mod:`edgelstm.fast.stacks`).

Decisions: :func:`fused_cell` for one direction and :func:`edgelstm.fast.stacks.plan_stack`
for a stack (remembered per model), both through :func:`why_not`; :func:`placement` applies the device rule.
When the extension is missing or disabled (``EDGELSTM_KERNELS=0``),
:func:`available` is ``False``, :func:`reason` says why, and every caller runs
its pure-MLX path. The primitives have a vjp (backpropagation through time in
C++, float weights), so training uses them too; int8 weights have no gradient.
"""

from __future__ import annotations

import os
from typing import Any

import mlx.core as mx

# Activation specs as edgelstm.nn.activations.spec builds them (fast sits below nn).
_SIGMOID, _TANH, _RELU = ("sigmoid", None, None), ("tanh", None, None), ("relu", None, None)
_LSTM_ACTS = (_SIGMOID, _TANH, _TANH)
_GRU_ACTS = (_SIGMOID, _TANH)
RNN_RELU_FLAG = {(_TANH,): False, (_RELU,): True}  # activations -> relu flag

_REBUILD_HINT = ("reinstall edgelstm from a wheel, or from source with a C++17 compiler "
                 "(pip install --force-reinstall --no-deps edgelstm)")

_ext: Any = None
_state: tuple[bool, str] | None = None  # (available, reason), set on first use


def _load() -> tuple[bool, str]:
    """Import the extension and run one tiny call to prove its ABI matches mlx."""
    global _ext
    if os.environ.get("EDGELSTM_KERNELS", "1").lower() in ("0", "off", "false", "no"):
        return False, "disabled by EDGELSTM_KERNELS=0"
    try:
        # Loads libscipy_openblas before the extension that links it: a wheel finds it
        # through its RPATH anyway, an editable build needs this.
        import scipy_openblas32  # noqa: F401
    except ImportError:
        pass  # macOS (Accelerate) has no such wheel
    try:
        from edgelstm.fast import _kernels as ext
    except ImportError as exc:  # not built (EDGELSTM_BUILD_KERNELS=0) or a broken link
        return False, f"edgelstm.fast._kernels is not importable ({exc}); {_REBUILD_HINT}"
    try:
        y, h = ext.rnn_seq(mx.ones((1, 1, 1)), mx.zeros((1, 1)))
        mx.eval(y, h)
        ok = abs(y.item() - 0.7615942) < 1e-4
    except TypeError as exc:
        # A nanobind ABI other than mlx's: every call rejects mx.array arguments.
        return False, (
            "edgelstm.fast._kernels does not accept mlx arrays (nanobind ABI mismatch with "
            f"mlx {mx.__version__}): {str(exc).splitlines()[0]}; {_REBUILD_HINT}"
        )
    except RuntimeError as exc:
        return False, f"edgelstm.fast._kernels self-test failed: {exc}"
    if not ok:
        return False, "edgelstm.fast._kernels self-test returned a wrong value"
    _ext = ext
    return True, f"loaded ({ext.isa()} gate loops; BLAS: {blas_info()})"


def blas_info() -> str:
    """The BLAS the kernels were linked with (library, version, threads)."""
    return _ext.blas_info() if _ext is not None else "none (kernels not loaded)"


def set_blas_threads(n: int) -> bool:
    """Set the kernels' BLAS and fused-step thread counts (``n >= 1``).

    Returns ``False`` where the BLAS has no such control (Accelerate); the fused
    step's count is set either way.
    """
    require()
    return bool(_ext.set_blas_threads(int(n)))


def recurrent_threads() -> tuple[int, str]:
    """Threads a fused LSTM step may use, and where the count comes from.

    Returns:
        ``(n, source)``; ``source`` is ``"set"`` (:func:`set_recurrent_threads` or
        :func:`set_blas_threads`), ``"EDGELSTM_NUM_THREADS"``, ``"blas"`` (the
        kernels' BLAS count: ``OPENBLAS_NUM_THREADS``, else the cores) or ``"cores"``.
        Steps with little work (batch 1, small H) use one thread whatever ``n``.
    """
    require()
    return int(_ext.recurrent_threads()), str(_ext.recurrent_threads_source())


def set_recurrent_threads(n: int) -> None:
    """Fix the fused LSTM step's thread count (``n >= 1``), or ``0`` for the default.

    Results are bit-identical for any count (each thread owns whole hidden units).
    """
    require()
    _ext.set_recurrent_threads(int(n))


def step_min_macs() -> int:
    """Multiply-adds per thread per step under which a fused LSTM step takes no more threads."""
    require()
    return int(_ext.step_min_macs())


def available() -> bool:
    """Return whether the fused kernels can be used in this process."""
    global _state
    if _state is None:
        _state = _load()
    return _state[0]


def reason() -> str:
    """Return a one-line explanation of :func:`available`'s answer."""
    available()
    return _state[1]


#: Calls of at most this batch run eagerly: when every input is already computed
#: (and nothing traces them: no grad, vmap or compile), the kernel runs before the
#: call returns and its outputs come back computed, skipping the hand-off to MLX's
#: CPU stream thread and back (~100 µs per evaluation on a small VM, more than a
#: streamed 10-frame chunk's whole compute). Larger batches stay lazy, so
#: ``mx.async_eval`` can still overlap them with Python work.
EAGER_MAX_BATCH = 16


def eager_batch(batch: int) -> bool:
    """Whether kernel calls of ``batch`` sequences run eagerly (:data:`EAGER_MAX_BATCH`)."""
    return batch <= EAGER_MAX_BATCH


def eager_call(x, batch_first: bool) -> bool:
    """Whether a kernel call on ``x`` runs eagerly (see :func:`eager_batch`)."""
    return eager_batch(x.shape[0 if batch_first else 1])


def int32_lengths(lengths):
    """``lengths`` as the kernels take them: an int32 ``mx.array`` ``(B,)``, or ``None``."""
    if lengths is None:
        return None
    if not isinstance(lengths, mx.array):
        return mx.array(lengths, dtype=mx.int32)
    return lengths if lengths.dtype == mx.int32 else lengths.astype(mx.int32)


# -- low-level wrappers: projected input in, kernel out ----------------------------


def lstm_seq(
    xp,
    Wh,
    h0=None,
    c0=None,
    lengths=None,
    *,
    reverse=False,
    batch_first=False,
    Wx=None,
    bias=None,
    Wh_scales=None,
    Wx_scales=None,
    train=False,
):
    """Run the fused LSTM on a projected input.

    Args:
        xp: ``W x + bias``, ``(T, B, 4H)`` (``(B, T, 4H)`` if ``batch_first``),
            gate order ``i, f, g, o``; any strides.
        Wh: recurrent weights ``(4H, H)``.
        h0, c0: initial states ``(B, H)`` or ``None`` (zeros).
        lengths: valid steps per sequence ``(B,)`` (ONNX ``sequence_lens``) or ``None``.
        reverse: run from each sequence's last valid step to the first.
        batch_first: layout of ``xp`` and ``y``.
        Wx, bias: input weights ``(4H, I)`` and bias ``(4H,)``; when given, ``xp``
            is the raw input ``(.., .., I)`` and the projection runs in the kernel.
        Wh_scales, Wx_scales: per-row float32 scales ``(4H,)``; when given, the
            matching weight is int8 and stands for ``W * scales[:, None]``.
        train: the caller is training: where autodiff traces the call, the forward
            saves what the gradient reads (gate activations, the ``c`` and ``h`` each
            step read, ``tanh`` of the new ``c``: ``T * B * 7H`` floats) and the
            gradient uses them instead of recomputing the forward pass. No effect
            outside autodiff. The recomputing backward (``train=False``) projects
            ``x`` with another matmul, so with ``Wx`` its gradients can differ from
            these in the last bits. ``EDGELSTM_GRAD_LEGACY=1`` restores the backward
            of edgelstm before this (recompute, sgemm weight gradients) bit for bit.

    Returns:
        ``y`` ``(T, B, H)`` (or ``(B, T, H)``; zero past each length) and ``(h_n, c_n)``.
    """
    require()
    y, h, c = _ext.lstm_seq(
        xp,
        Wh,
        h0,
        c0,
        int32_lengths(lengths),
        reverse=bool(reverse),
        batch_first=bool(batch_first),
        Wx=Wx,
        bias=bias,
        eager=eager_call(xp, batch_first),
        train=bool(train),
        **_scales(Wh_scales, Wx_scales),
    )
    return y, (h, c)


def gru_seq(
    xp,
    Wh,
    bhn=None,
    h0=None,
    lengths=None,
    *,
    reverse=False,
    linear_before_reset=True,
    batch_first=False,
    Wx=None,
    b=None,
    Wh_scales=None,
    Wx_scales=None,
):
    """Run the fused GRU on a projected input ``xp`` ``(T, B, 3H)``, gates ``r, z, n``.

    ``bhn`` ``(H,)`` is the n gate's recurrent bias, added inside the reset
    product when ``linear_before_reset`` (PyTorch/MLX form) and after the
    matmul otherwise (ONNX default). Other arguments (int8 weights with
    ``Wh_scales`` / ``Wx_scales`` included) as :func:`lstm_seq`.

    Returns:
        ``y`` and ``h_n`` ``(B, H)``.
    """
    require()
    y, h = _ext.gru_seq(
        xp,
        Wh,
        bhn,
        h0,
        int32_lengths(lengths),
        reverse=bool(reverse),
        linear_before_reset=bool(linear_before_reset),
        batch_first=bool(batch_first),
        Wx=Wx,
        bias=b,
        eager=eager_call(xp, batch_first),
        **_scales(Wh_scales, Wx_scales),
    )
    return y, h


def rnn_seq(
    xp,
    Wh,
    h0=None,
    lengths=None,
    *,
    reverse=False,
    relu=False,
    batch_first=False,
    Wx=None,
    bias=None,
    Wh_scales=None,
    Wx_scales=None,
):
    """Run the fused Elman RNN (``tanh``, or ``relu``) on ``xp`` ``(T, B, H)``.

    ``Wx`` ``(H, I)`` and ``bias`` ``(H,)`` move the input projection into the
    kernel. Other arguments as :func:`lstm_seq`.

    Returns:
        ``y`` and ``h_n`` ``(B, H)``.
    """
    require()
    y, h = _ext.rnn_seq(
        xp,
        Wh,
        h0,
        int32_lengths(lengths),
        reverse=bool(reverse),
        relu=bool(relu),
        batch_first=bool(batch_first),
        Wx=Wx,
        bias=bias,
        eager=eager_call(xp, batch_first),
        **_scales(Wh_scales, Wx_scales),
    )
    return y, h


def _scales(Wh_scales, Wx_scales):
    # Passed only when set, so an extension built before int8 support still
    # serves float calls.
    kw = {"Wh_scales": Wh_scales, "Wx_scales": Wx_scales}
    return {k: v for k, v in kw.items() if v is not None}


def require():
    """Raise (with the reason) unless the fused kernels are loaded."""
    if not available():
        from edgelstm.errors import UnsupportedError

        raise UnsupportedError(f"fused kernels unavailable: {reason()}")


# -- the fused-vs-pure decision ------------------------------------------------------

#: With a GPU as MLX's default device, calls of at most this batch still run the CPU
#: kernel (memory is unified, so there is no copy); larger batches run pure MLX on
#: the GPU, where the matmuls are wide enough to pay for its dispatch.
GPU_KERNEL_MAX_BATCH = 16


def default_device():
    """MLX's default device (one seam, so tests can stand in a GPU default)."""
    return mx.default_device()


def placement(batch: int) -> str:
    """Where a recurrent call of ``batch`` rows runs: ``"cpu-kernel"`` or ``"mlx"``.

    ``"mlx"`` means the pure-MLX path on the default device. The rule: the CPU
    kernel whenever it is available and the default device is the CPU; with a
    GPU default, only for ``batch <= GPU_KERNEL_MAX_BATCH`` (small batches and
    streaming are dispatch-bound, where one fused CPU primitive wins).
    """
    if not available():
        return "mlx"
    if default_device() == mx.cpu or batch <= GPU_KERNEL_MAX_BATCH:
        return "cpu-kernel"
    return "mlx"


def why_not(kind: str, args: dict, x, h0=None, c0=None) -> str | None:
    """Why the fused kernel cannot run one direction, or ``None`` if it can.

    Args:
        kind: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        args: the cell's weights and options as :meth:`edgelstm.nn.layers._Cell.kernel_args`
            gives them (``Wx``, ``Wx_scales``, ``Wh``, ``Wh_scales``, ``bias``, ``clip``,
            ``activations``; LSTM ``peephole``, ``input_forget``; GRU ``bhn``). With
            scales, the matching weight is int8 (``W = q * s[:, None]``).
        x: the input ``(B, T, I)``; h0, c0: initial states ``(B, H)`` or ``(L, B, H)``.
    """
    acts = tuple(args["activations"])
    if args.get("clip") is not None:
        return f"fused {kind.upper()} has no clip"
    if kind == "lstm":
        if args.get("peephole") is not None or args.get("input_forget"):
            return "fused LSTM has no peephole or input_forget"
        if acts != _LSTM_ACTS:
            return "fused LSTM supports the default activations (sigmoid, tanh, tanh) only"
        floats = (args["bias"], h0, c0)
    elif kind == "gru":
        if acts != _GRU_ACTS:
            return "fused GRU supports the default activations (sigmoid, tanh) only"
        floats = (args["bias"], args.get("bhn"), h0)
    else:
        if acts not in RNN_RELU_FLAG:
            return "fused RNN supports tanh or relu only"
        floats = (args["bias"], h0)
    if not available():
        return f"fused kernels unavailable: {reason()}"
    if x.ndim != 3 or args["Wh"].ndim != 2 or x.size == 0 or args["Wh"].size == 0:
        return "fused kernels need a non-empty (B, T, I) input"
    if placement(x.shape[0]) != "cpu-kernel":
        return f"batch {x.shape[0]} > {GPU_KERNEL_MAX_BATCH} runs pure MLX on the GPU"
    pairs = ((args["Wx"], args.get("Wx_scales")), (args["Wh"], args.get("Wh_scales")))
    checked = [x, *floats]
    for w, s in pairs:
        if s is None:
            checked.append(w)
        elif w.dtype != mx.int8 or s.dtype != mx.float32 or s.shape != (w.shape[0],):
            return "fused kernels take int8 weights with float32 per-row scales only"
    if any(a is not None and a.dtype != mx.float32 for a in checked):
        return "fused kernels support float32 only"
    return None


def fused_cell(kind: str, x, args: dict, h0=None, c0=None, lengths=None, reverse=False,
               fast: bool | None = None, train: bool = False):
    """The one fused-vs-pure decision for one (layer, direction).

    Every single-direction call (float cells through :mod:`edgelstm.nn.recurrent`,
    int8 cells, the ONNX runner) asks here; whole stacks ask
    :func:`edgelstm.fast.stacks.plan_stack`,
    which applies the same :func:`why_not`.

    ``train``: the caller is training (LSTM: the kernel saves its activations for
    the gradient, see :func:`lstm_seq`).

    Returns:
        The fused result (``y (B, T, H), (h, c)`` for LSTM, ``y, h`` otherwise), or
        ``None`` when the caller must run its pure-MLX path.

    Raises:
        UnsupportedError: ``fast=True`` and the kernel cannot run these arguments.
    """
    if fast is False:
        return None
    why = why_not(kind, args, x, h0, c0)
    if why is not None:
        if fast:
            from edgelstm.errors import UnsupportedError

            raise UnsupportedError(why)
        return None
    q = {"Wx_scales": args.get("Wx_scales"), "Wh_scales": args.get("Wh_scales")}
    if kind == "lstm":
        return lstm(x, args["Wx"], args["Wh"], args["bias"], h0, c0, lengths, reverse, **q,
                    train=train)
    if kind == "gru":
        return gru(x, args["Wx"], args["Wh"], args["bias"], args.get("bhn"), h0, lengths, reverse,
                   args.get("linear_before_reset", True), **q)
    return rnn(x, args["Wx"], args["Wh"], args["bias"], h0, lengths, reverse, args["activations"],
               **q)


def _args(Wx, Wh, bias, clip, activations, Wx_scales, Wh_scales, **extra):
    return {"Wx": Wx, "Wh": Wh, "bias": bias, "clip": clip, "activations": activations,
            "Wx_scales": Wx_scales, "Wh_scales": Wh_scales, **extra}


def why_not_lstm(x, Wx, Wh, bias, h0, c0, peephole, clip, input_forget, activations,
                 Wx_scales=None, Wh_scales=None):
    """:func:`why_not` for LSTM, with positional arguments."""
    a = _args(Wx, Wh, bias, clip, activations, Wx_scales, Wh_scales,
              peephole=peephole, input_forget=input_forget)
    return why_not("lstm", a, x, h0, c0)


def why_not_gru(x, Wx, Wh, b, bhn, h0, clip, activations, Wx_scales=None, Wh_scales=None):
    """:func:`why_not` for GRU, with positional arguments."""
    return why_not("gru", _args(Wx, Wh, b, clip, activations, Wx_scales, Wh_scales, bhn=bhn), x, h0)


def why_not_rnn(x, Wxh, Whh, bias, h0, clip, activations, Wx_scales=None, Wh_scales=None):
    """:func:`why_not` for RNN, with positional arguments."""
    return why_not("rnn", _args(Wxh, Whh, bias, clip, activations, Wx_scales, Wh_scales), x, h0)


def lstm(x, Wx, Wh, bias, h0, c0, lengths, reverse, Wx_scales=None, Wh_scales=None,
         train=False):
    """Fused equivalent of ``recurrent.lstm`` for the arguments it supports.

    With ``Wx_scales`` / ``Wh_scales`` the matching weight is int8 and the
    kernel reads it as is (no float copy per call).
    """
    # Projection inside the kernel: one MLX dispatch per direction, not two.
    return lstm_seq(
        x,
        Wh,
        h0,
        c0,
        lengths,
        reverse=reverse,
        batch_first=True,
        Wx=Wx,
        bias=bias,
        Wh_scales=Wh_scales,
        Wx_scales=Wx_scales,
        train=train,
    )


def gru(
    x, Wx, Wh, b, bhn, h0, lengths, reverse, linear_before_reset, Wx_scales=None, Wh_scales=None
):
    """Fused equivalent of ``recurrent.gru`` for the arguments it supports."""
    return gru_seq(
        x,
        Wh,
        bhn,
        h0,
        lengths,
        reverse=reverse,
        linear_before_reset=bool(linear_before_reset),
        batch_first=True,
        Wx=Wx,
        b=b,
        Wh_scales=Wh_scales,
        Wx_scales=Wx_scales,
    )


def rnn(x, Wxh, Whh, bias, h0, lengths, reverse, activations, Wx_scales=None, Wh_scales=None):
    """Fused equivalent of ``recurrent.rnn`` for the arguments it supports."""
    relu = RNN_RELU_FLAG[tuple(activations)]
    return rnn_seq(
        x,
        Whh,
        h0,
        lengths,
        reverse=reverse,
        relu=relu,
        batch_first=True,
        Wx=Wxh,
        bias=bias,
        Wh_scales=Wh_scales,
        Wx_scales=Wx_scales,
    )
