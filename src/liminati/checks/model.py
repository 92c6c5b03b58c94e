"""What one check says (name, status, detail, hint) and how a list of them is judged."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from liminati.errors import ExitCode


class Status(StrEnum):
    OK = "ok"
    #: works, but needs attention soon (a leaf near expiry, little disk): exit 0 all the same
    WARN = "warn"
    FAIL = "fail"
    #: does not apply to this host (no GPU model, no tailscale command): never a failure
    SKIP = "skip"


#: worst first: the order a summary and the exit status look at
SEVERITY = (Status.FAIL, Status.WARN, Status.OK, Status.SKIP)


@dataclass(frozen=True)
class Check:
    """One line of `doctor`: `name` is stable (scripts read --json), `detail` says what was
    seen, `hint` the next step when the status is not ok."""

    name: str
    status: Status
    detail: str
    hint: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "hint": self.hint,
        }


def ok(name: str, detail: str) -> Check:
    return Check(name, Status.OK, detail)


def warn(name: str, detail: str, hint: str) -> Check:
    return Check(name, Status.WARN, detail, hint)


def fail(name: str, detail: str, hint: str) -> Check:
    return Check(name, Status.FAIL, detail, hint)


def skip(name: str, detail: str, hint: str = "") -> Check:
    return Check(name, Status.SKIP, detail, hint)


def worst(statuses: Iterable[Status]) -> Status:
    """The most severe status of several parts of one check (skip only when all skip)."""
    seen = set(statuses)
    return next((s for s in SEVERITY if s in seen), Status.SKIP)


def exit_code(checks: Iterable[Check]) -> int:
    """4 when any check failed; warnings and skips do not fail `doctor`."""
    failed = any(c.status is Status.FAIL for c in checks)
    return ExitCode.CHECKS_FAILED if failed else ExitCode.OK


def counts(checks: Iterable[Check]) -> dict[Status, int]:
    found = {s: 0 for s in Status}
    for c in checks:
        found[c.status] += 1
    return found
