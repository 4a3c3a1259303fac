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
