"""The `copl` command line: argument parsing and exit codes over the run layer."""

from copl_dist.cli.app import entry, main

__all__ = ["entry", "main"]
