"""`python -m copl_dist ...` = `copl ...`: the entry point for Ray jobs whose runtime environment
ships this source as its working_dir (no `copl` script is installed there)."""

from copl_dist.cli.app import entry

entry()
