"""Test support shared by every tier: a deterministic CLI environment (importable by name;
conftest modules are not, since each test folder may have its own)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime

from liminati import pki
from liminati.cli.main import Env
from liminati.plan import Generators

#: the fixed "now" of every test: certificates and manifests carry it, so outputs are stable
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

RunCli = Callable[..., tuple[int, str, str]]


class Clock:
    """A clock a test can move: `clock.now += timedelta(days=340)`."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def make_env(clock: Callable[[], datetime] = lambda: NOW) -> Env:
    """An Env with a fixed clock and counters in place of randomness.

    The counters live outside the factory so that the two passes of one `install` (before
    and under the lock) never hand out the same serial or token, as real randomness would not.
    """
    serials = itertools.count(1000)
    tokens = itertools.count(1)

    def generators() -> Generators:
        return Generators(
            new_key=pki.new_key,
            serial=serials.__next__,
            token=lambda: f"test-token-{next(tokens):04d}",
        )

    return Env(now=clock, generators=generators, strict_validators=False)
