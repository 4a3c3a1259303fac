"""Sane limits on every size edgelstm reads from a file or an option, in one place.

Each limit is checked *before* anything of that size is allocated, so a
hostile or mistyped file (``num_layers: 1e9``, a ``.npy`` header claiming
224 GiB, a WAV declaring 1 Hz) fails fast with a :class:`LimitError`
instead of exhausting memory. README.md "Reliability" lists them.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from edgelstm.errors import LimitError

MAX_LAYERS = 64
MAX_HIDDEN = 16384
MAX_INPUT_FEATURES = 65536
MAX_CLASSES = 65536
MAX_PARAMETERS = 1 << 28           # 268M weights: 1 GiB as float32
MAX_ELEMENTS = 1 << 28             # one input array: 1 GiB as float32
MAX_BATCH = 65536
MAX_SEQ_LEN = 10_000_000
MAX_CHUNK_FRAMES = 100_000
MIN_SAMPLE_RATE = 1_000            # Hz
MAX_SAMPLE_RATE = 384_000          # Hz
# a compressed .npz member may expand at most this much (zip bombs)
MAX_NPZ_RATIO = 1024
# convolutions of a conv stem or an fcn branch (edgelstm.nn.stem / edgelstm.nn.fcn)
MAX_CONV_CHANNELS = 1024
MAX_CONV_KERNEL = 64
MAX_FCN_BLOCKS = 8

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


def check_int(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``; refuses bools, fractions, NaN and strings."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise LimitError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    if not math.isfinite(value) or not lo <= value <= hi:
        raise LimitError(f"{name} = {value!r} is outside [{lo}, {hi}]")
    if not isinstance(value, Integral) and value != int(value):
        raise LimitError(f"{name} must be an integer, got {value!r}")
    return int(value)


def check_sample_rate(rate, name: str = "sample rate") -> int:
    """A sample rate in Hz within ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``.

    Why: the resampler's work grows with the rate ratio, so 1 Hz audio
    resampled to 16 kHz costs 16000x its size; 4 GHz yields zero frames.
    """
    return check_int(name, rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)


def check_elements(shape, what: str, limit: int = MAX_ELEMENTS) -> int:
    """The element count of ``shape`` (Python ints, no overflow); refuse above ``limit``."""
    n = 1
    for d in shape:
        n *= int(d)
    if n > limit:
        raise LimitError(f"{what} of shape {tuple(int(d) for d in shape)} has {n:,} elements; "
                         f"the limit is {limit:,}")
    return n


def recurrent_parameters(cell: str, input_size: int, hidden: int, layers: int,
                         bidirectional: bool) -> int:
    """Weights of a recurrent stack (upper bound: biases counted twice)."""
    g, dirs = GATES[cell], 2 if bidirectional else 1
    total, size = 0, input_size
    for _ in range(layers):
        total += dirs * g * hidden * (size + hidden + 2)
        size = dirs * hidden
    return total


def check_recurrent(rc, where: str = "rnn") -> dict:
    """Validate a recurrent config (``rnn`` section) before a module is built.

    Returns:
        The checked sizes ``{"cell", "input_size", "hidden_size", "num_layers",
        "bidirectional", "parameters"}``.

    Raises:
        LimitError / ConfigError: wrong types or sizes outside the limits.
    """
    from edgelstm.errors import ConfigError

    if not isinstance(rc, dict):
        raise ConfigError(f"{where} must be an object, got {type(rc).__name__}")
    cell = rc.get("model_type")
    if cell not in GATES:
        raise ConfigError(f"{where}.model_type must be lstm, gru or rnn, got {cell!r}")
    i = check_int(f"{where}.input_size", rc.get("input_size"), 1, MAX_INPUT_FEATURES)
    h = check_int(f"{where}.hidden_size", rc.get("hidden_size"), 1, MAX_HIDDEN)
    n = check_int(f"{where}.num_layers", rc.get("num_layers", 1), 1, MAX_LAYERS)
    bidir = rc.get("bidirectional", False)
    if not isinstance(bidir, bool):
        raise ConfigError(f"{where}.bidirectional must be true or false, got {bidir!r}")
    _check_options(rc, where)
    params = recurrent_parameters(cell, i, h, n, bidir)
    if params > MAX_PARAMETERS:
        raise LimitError(f"{where}: {cell} {n}x{h} on {i} features has {params:,} weights; "
                         f"the limit is {MAX_PARAMETERS:,}")
    return {"cell": cell, "input_size": i, "hidden_size": h, "num_layers": n,
            "bidirectional": bidir, "parameters": params}


_BOOLS = ("bias", "batch_first", "peephole", "input_forget", "linear_before_reset")


def _check_options(rc: dict, where: str) -> None:
    """Types of the recurrent options, so a hostile config fails here, not deep in MLX."""
    from edgelstm.errors import ConfigError

    for key in _BOOLS:
        if rc.get(key) is not None and not isinstance(rc[key], bool):
            raise ConfigError(f"{where}.{key} must be true or false, got {rc[key]!r}")
    for key, lo, hi in (("dropout", 0.0, 1.0), ("clip", 0.0, math.inf)):
        v = rc.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, Real)
                              or not lo <= v < hi or math.isnan(v)):
            raise ConfigError(f"{where}.{key} must be a number in [{lo}, {hi}), got {v!r}")
    acts = rc.get("activations")
    if acts is not None and (not isinstance(acts, list) or not all(map(_is_activation, acts))):
        raise ConfigError(f"{where}.activations must be null or a list of names or "
                          f"[name, alpha, beta] triples, got {acts!r}")
    nl = rc.get("nonlinearity")
    if nl is not None and nl not in ("tanh", "relu"):
        raise ConfigError(f"{where}.nonlinearity must be tanh or relu, got {nl!r}")


def _is_activation(a) -> bool:
    """A name, or ``[name, alpha, beta]`` with numbers or nulls (how checkpoints store them)."""
    if isinstance(a, str):
        return True
    return (isinstance(a, list) and 1 <= len(a) <= 3 and isinstance(a[0], str)
            and all(v is None or (isinstance(v, Real) and not isinstance(v, bool)
                                  and math.isfinite(v)) for v in a[1:]))


def _check_names(config: dict) -> None:
    from edgelstm.errors import ConfigError

    for key in ("labels", "input_names", "output_names"):
        v = config.get(key)
        if v is not None and (not isinstance(v, list) or not all(
                isinstance(s, (str, int)) and not isinstance(s, bool) for s in v)):
            raise ConfigError(f"{key} must be a list of names, got {v!r}")
    for key in ("input_names", "output_names"):
        if config.get(key) is not None and not config[key]:
            raise ConfigError(f"{key} must not be empty")


def _fcn_parameters(config: dict) -> int:
    """Weights of a sequence config's ``fcn`` branch (sizes checked before anything is built)."""
    from edgelstm.errors import ConfigError

    fcn = config.get("fcn")
    if fcn is None:
        return 0
    if not isinstance(fcn, dict):
        raise ConfigError(f"fcn must be an object, got {type(fcn).__name__}")
    channels, kernels = fcn.get("channels"), fcn.get("kernels")
    if not isinstance(channels, list) or not isinstance(kernels, list) or not 1 <= len(
            channels) <= MAX_FCN_BLOCKS or len(channels) != len(kernels):
        raise ConfigError("fcn needs lists 'channels' and 'kernels' of the same length, "
                          f"1-{MAX_FCN_BLOCKS} blocks")
    width = config.get("stem", {}).get("input_size") if isinstance(config.get("stem"), dict) \
        else (config.get("rnn") or {}).get("input_size")
    width = check_int("fcn input width", width, 1, MAX_INPUT_FEATURES)
    params = 0
    for i, (c, k) in enumerate(zip(channels, kernels, strict=True)):
        c = check_int(f"fcn.channels[{i}]", c, 1, MAX_CONV_CHANNELS)
        k = check_int(f"fcn.kernels[{i}]", k, 1, MAX_CONV_KERNEL)
        params += c * (k * width + 1) + 4 * c  # conv + batch norm (weight, bias, statistics)
        width = c
    return params


def check_model_config(config: dict, weights_bytes: int | None = None) -> None:
    """Validate a checkpoint's ``config.json`` sizes against the limits and the weights file.

    Args:
        config: the parsed ``config.json``.
        weights_bytes: size of ``model.safetensors``; a config claiming more
            weights than the file can hold (4-bit: 2 per byte) is refused.
    """
    from edgelstm.errors import ConfigError

    kind = config.get("model_type")
    if kind == "sequence":
        _check_names(config)
        sizes = check_recurrent(config.get("rnn"), "rnn")
        params = sizes["parameters"]
        if config.get("head") is not None:
            labels = config.get("labels")
            k = config.get("num_outputs")
            k = len(labels) if k is None and labels else k
            k = check_int("num_outputs", k, 1, MAX_CLASSES)
            dirs = 2 if sizes["bidirectional"] else 1
            params += k * (dirs * sizes["hidden_size"] + 1)
        stem = config.get("stem")
        if stem is not None:
            if not isinstance(stem, dict):
                raise ConfigError(f"stem must be an object, got {type(stem).__name__}")
            width = check_int("stem.input_size", stem.get("input_size"), 1, MAX_INPUT_FEATURES)
            channels = check_int("stem.channels", stem.get("channels"), 1, MAX_CONV_CHANNELS)
            kernel = check_int("stem.kernel", stem.get("kernel"), 1, MAX_CONV_KERNEL)
            params += channels * (kernel * width + 1)
        params += _fcn_parameters(config)
        for key in ("features", "quantization"):
            if config.get(key) is not None and not isinstance(config[key], dict):
                raise ConfigError(f"{key} must be an object, got {type(config[key]).__name__}")
    elif kind in GATES:
        params = check_recurrent(config, "config")["parameters"]
    else:
        return  # build() names the unknown model_type
    if weights_bytes is not None and params > 2 * weights_bytes + 1024:
        raise LimitError(f"the config describes {params:,} weights but the weights file "
                         f"holds only {weights_bytes:,} bytes")
