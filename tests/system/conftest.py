"""Tier-4 fixtures: one Debian 13 system (systemd, rootless podman, quadlet) booted per session.

Every test under tests/system carries the `system` marker (added here as well, so a module that
forgets `pytestmark = pytest.mark.system` is still deselected by `-m "not system"`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# nspawn.py is a plain module beside this file; make it importable whatever pytest's import mode.
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from nspawn import BootedSystem, build_rootfs  # noqa: E402
from stack import Stack, start_stack  # noqa: E402

_TIMINGS: dict[str, float] = {}


#: the order the test_stack_* modules share the running stack in: read-only checks first, then
#: doctor (it judges the stack as a person would after install), the modules that change and
#: restore it, and the destructive lifecycle (reboot, uninstall) last
STACK_ORDER = {
    "test_stack_running": 0,
    "test_stack_doctor": 1,
    "test_stack_isolation": 2,
    "test_stack_zlifecycle": 9,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [i for i, item in enumerate(items) if HERE in item.path.resolve().parents]
    for i in mine:
        items[i].add_marker(pytest.mark.system)
    # stable sort of this directory's items only, in their own slots (other tiers keep theirs)
    ordered = sorted((items[i] for i in mine), key=lambda it: STACK_ORDER.get(it.path.stem, 5))
    for i, item in zip(mine, ordered, strict=True):
        items[i] = item


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _TIMINGS:
        terminalreporter.write_sep("-", "tier 4 (nspawn) timings")
        for name, seconds in _TIMINGS.items():
            terminalreporter.write_line(f"  {name:<32} {seconds:7.1f}s")


@pytest.fixture(scope="session")
def tier4_timings() -> dict[str, float]:
    """Durations (seconds) a test adds here are printed in the "tier 4 (nspawn) timings" summary."""
    return _TIMINGS


@pytest.fixture(scope="session")
def rootfs() -> Path:
    """The cached Debian 13 root filesystem (scripts/build-rootfs.sh; about 20 s when cold)."""
    t0 = time.monotonic()
    root = build_rootfs(REPO)
    _TIMINGS["rootfs (build or cache)"] = time.monotonic() - t0
    return root


@pytest.fixture(scope="session")
def booted_system(rootfs: Path) -> Iterator[BootedSystem]:
    """A booted copy of the root filesystem, shared by the session; powered off and deleted after.

    Tests share it: give users, units and files names of their own.
    """
    with BootedSystem(rootfs) as system:
        _TIMINGS["copy rootfs"] = system.timings["copy"]
        _TIMINGS["boot"] = system.timings["boot"]
        yield system
    _TIMINGS["power off"] = system.timings.get("stop", 0.0)


@pytest.fixture(scope="session")
def liminati_system(booted_system: BootedSystem) -> BootedSystem:
    """booted_system with this working tree installed in /opt/liminati (+ /usr/local/bin)."""
    booted_system.install_liminati(REPO)
    _TIMINGS["wheels (host)"] = booted_system.timings["wheels"]
    _TIMINGS["install (inside)"] = booted_system.timings["install"]
    return booted_system


@pytest.fixture(scope="session")
def stack(rootfs: Path, tier4_timings: dict[str, float]) -> Iterator[Stack]:
    """The whole stack running in a system of its own (tests/system/stack.py), for the session:
    the test_stack_* modules share it, in file order (destructive ones last)."""
    with start_stack(rootfs, tier4_timings) as running:
        yield running


@pytest.fixture
def ready(stack: Stack) -> Stack:
    """The stack, once every container is running and healthy (else the test fails: why)."""
    if stack.not_ready:
        pytest.fail(stack.not_ready)
    return stack
