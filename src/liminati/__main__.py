"""`python -m liminati`."""

from liminati.cli.main import run

run()
