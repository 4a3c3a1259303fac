"""The Click command line: ``main`` holds the group, one module per command."""

from edgelstm.cli.main import cli

__all__ = ["cli"]
