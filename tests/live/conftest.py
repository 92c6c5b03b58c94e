"""Tier-5 fixtures: a staged install served by the host's real nginx inside a network namespace.

The install is staged with the CLI, then Debian's nginx runs from the staged nginx-user home
exactly as the container runs it (`nginx -p <home>/ -c <home>/nginx.conf -g 'daemon off;'`),
only with the staged home as prefix instead of /etc/nginx-liminati. It runs as root in the
"server" namespace, so its workers run as nginx's compiled-in unprivileged user, as the image's
do. Clients run in the "client" namespace; nothing leaves the namespaces this tier creates.

Every test under tests/live carries the `live` marker (added here too).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
# netns.py and livetools.py are plain modules beside this file
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from livetools import KEY_OWNERS, STAGED_AGO, TIMINGS, LiveNginx, record_timing  # noqa: E402
from netns import SERVER_IP, Namespaces  # noqa: E402

from clitools import Clock, make_env  # noqa: E402

_ACTIVE: list[LiveNginx] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(pytest.mark.live)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _ACTIVE and HERE in item.path.resolve().parents:
        report.sections.append(("nginx log (last 60 lines)", _ACTIVE[-1].log_tail(60)))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "tier 5 (live nginx) timings")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"  {name:<26} {seconds:7.1f}s")


def _need(*programs: str) -> None:
    # a missing tool fails the tier, never skips it: CI must install everything
    if os.geteuid() != 0:
        pytest.fail("the live tier creates network namespaces: run as root")
    for program in programs:
        if shutil.which(program) is None:
            pytest.fail(f"{program} not found (bash scripts/install-test-deps.sh)")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def namespaces() -> Iterator[Namespaces]:
    _need("ip", "nginx", "curl")
    # a SIGTERM (a CI timeout, `kill`) unwinds like ^C, so the fixtures below still stop nginx
    # and delete the namespaces
    previous = signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    try:
        with Namespaces() as ns:
            record_timing("namespaces up", time.monotonic() - t0)
            if not ns.nat:
                print(f"\nlive tier: no NAT ({ns.nat_error}); clients use ports 8443/8080")
            yield ns
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module")
def live(namespaces: Namespaces) -> Iterator[LiveNginx]:
    """One install, staged 345 days ago (its leaf has 20 days left), with API keys for
    KEY_OWNERS, served by nginx.

    The clock stays in the past; a test that renews moves it to now (`live.clock.now`).
    """
    t0 = time.monotonic()
    # not pytest's tmp_path: its 0700 parents would hide the home from nginx's workers more
    # than production's /var/lib (0755) does
    work = Path(tempfile.mkdtemp(prefix="liminati-live-"))
    work.chmod(0o755)
    clock = Clock(datetime.now(UTC).replace(microsecond=0) - STAGED_AGO)
    server = LiveNginx(
        ns=namespaces,
        root=work / "stage",
        env=make_env(clock),
        clock=clock,
        log=work / "nginx.log",
    )
    try:
        code, out = server.cli("install", "--root", str(server.root), "--listen-ip", SERVER_IP)
        assert code == 0, out
        for person in KEY_OWNERS:
            code, out = server.cli(
                "keys", "add", person, "--root", str(server.root), "--listen-ip", SERVER_IP
            )
            assert code == 0, out
        record_timing("stage install", time.monotonic() - t0)
        t1 = time.monotonic()
        server.start()
        record_timing("nginx start", time.monotonic() - t1)
        _ACTIVE.append(server)
        yield server
    finally:
        server.stop()
        if server in _ACTIVE:
            _ACTIVE.remove(server)
        shutil.rmtree(work, ignore_errors=True)
