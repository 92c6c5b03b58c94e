"""`liminati doctor`: runs the checks (liminati.checks), shows a table and the hints, exits 4
when one failed. main.py holds the click wrapper; this module does not import it."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from liminati import output
from liminati.checks.doctor import (
    KEY_GRACE_SECONDS,
    Probe,
    build_probes,
    doctor_key,
    installed_listen_ip,
    run_probes,
)
from liminati.checks.model import Check, Status, counts, exit_code
from liminati.config import Config
from liminati.errors import LiminatiError, UsageError
from liminati.executor import Executor

if TYPE_CHECKING:
    from liminati.cli.main import Env

#: an ISO 8601 time doctor takes as "now" for certificate expiry, so that a test can look at
#: the real served leaf as it will be months later. Deliberately not an option: not for people.
NOW_VARIABLE = "LIMINATI_NOW"
_COLOUR = {Status.OK: "green", Status.WARN: "yellow", Status.FAIL: "red", Status.SKIP: None}

EPILOG = """
\b
Examples:
  sudo liminati doctor
  sudo liminati doctor --json         one object per check: name, status, detail, hint
  sudo liminati doctor || echo "something needs attention"
"""


def doctor_now(default: Callable[[], dt.datetime]) -> dt.datetime:
    raw = os.environ.get(NOW_VARIABLE, "")
    if not raw:
        return default()
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise UsageError(
            f"{NOW_VARIABLE}={raw!r} is not an ISO 8601 time",
            hint=f"unset {NOW_VARIABLE}, or give e.g. 2027-01-31T12:00:00+00:00",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def run_doctor(executor: Executor, config: Config, env: Env, *, as_json: bool) -> int:
    if executor.staged:
        raise UsageError(
            "doctor checks a running host; a staged install (--root) runs nothing",
            hint="run `sudo liminati doctor` on the host itself",
        )
    now = doctor_now(env.now)
    listen_ip = installed_listen_ip(executor, config)
    key: str | LiminatiError
    try:
        key, made = doctor_key(
            executor,
            config,
            token=env.generators().token,
            now=env.now(),
            strict=env.strict_validators,
        )
    except LiminatiError as exc:  # e.g. nginx -t refuses the live config: report, go on
        key, made = exc, False
    if made:
        output.info(
            "Made doctor's own API key (`liminati keys list` shows it as "
            "liminati-doctor); nginx reloaded."
        )
    probes = build_probes(
        executor,
        config,
        listen_ip=listen_ip,
        key=key,
        now=now,
        key_grace=KEY_GRACE_SECONDS if made else 0.0,
    )

    def progress(i: int, probe: Probe) -> None:
        output.info(f"[{i + 1}/{len(probes)}] {probe.title}...")

    results = run_probes(probes, progress)
    if as_json:
        output.data_json([c.as_json() for c in results])
    else:
        print_checks(results)
    return exit_code(results)


def print_checks(results: list[Check]) -> None:
    width = max(len(c.name) for c in results)
    output.data(f"{'STATUS':<6}  {'CHECK':<{width}}  DETAIL")
    for c in results:
        status = click.style(f"{c.status.value:<6}", fg=_COLOUR[c.status], bold=True)
        output.data(f"{status}  {c.name:<{width}}  {c.detail}")
    attention = [c for c in results if c.status in (Status.FAIL, Status.WARN) and c.hint]
    if attention:
        output.data("")
        for c in attention:
            output.data(f"{c.name}: {c.hint}")
    n = counts(results)
    output.info(
        f"{n[Status.OK]} ok, {n[Status.WARN]} warning(s), {n[Status.FAIL]} failed, "
        f"{n[Status.SKIP]} skipped"
    )
