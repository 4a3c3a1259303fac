"""Exceptions raised by edgelstm.

The CLI turns any ``EdgeLSTMError`` into a one-line ``Error: ...`` and exit status 1.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "EdgeLSTMError",
    "LimitError",
    "NonFiniteError",
    "OutputPathError",
    "TrainingError",
    "UnsupportedError",
]


class EdgeLSTMError(Exception):
    """Base class of every error edgelstm raises on purpose."""


class ConfigError(EdgeLSTMError):
    """A model or feature configuration is invalid or inconsistent."""


class CheckpointError(EdgeLSTMError):
    """A checkpoint is missing, malformed, or its tensors have the wrong shapes."""


class ConversionError(EdgeLSTMError):
    """A model cannot be converted between formats."""


class UnsupportedError(EdgeLSTMError):
    """A model or input uses a feature edgelstm does not implement."""


class DataError(EdgeLSTMError):
    """An input file or stream is unreadable or malformed."""


class LimitError(DataError):
    """A size, count or rate in an input or option is outside edgelstm's limits.

    Raised before anything is allocated; see :mod:`edgelstm.limits`.
    """


class NonFiniteError(DataError):
    """An input array holds NaN or Inf; the message names the first position."""


class OutputPathError(EdgeLSTMError):
    """An output path is, contains or lies inside one of the command's inputs."""


class TrainingError(EdgeLSTMError):
    """Training cannot go on (e.g. the loss is no longer finite)."""
