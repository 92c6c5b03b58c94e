"""End-to-end health checks (`liminati doctor`): each a small function returning a Check."""

from liminati.checks.model import Check, Status, exit_code

__all__ = ["Check", "Status", "exit_code"]
