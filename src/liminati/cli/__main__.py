"""`python -m liminati.cli`."""

from liminati.cli.main import run

run()
