"""Every unit active and every health check healthy: what `liminati status` shows, as one check,
so that the end-to-end failures after it have their likely cause named first."""

from __future__ import annotations

from collections.abc import Sequence

from liminati.apply.services import service_status
from liminati.checks.model import Check, fail, ok
from liminati.config import Config
from liminati.executor import Executor

NAME = "services"


def judge_services(found: Sequence[dict[str, object]]) -> Check:
    bad = [s for s in found if not s["ok"]]
    if bad:
        detail = "; ".join(
            f"{s['service']}: {s['state']}, {s['health'] or 'no health'}" for s in bad
        )
        first = bad[0]["service"]
        return fail(NAME, detail, f"`liminati logs {first}` shows why; `liminati status`")
    healthy = sum(1 for s in found if s["health"] == "healthy")
    return ok(NAME, f"{len(found)} units active, {healthy} with a health check, all healthy")


def check_services(executor: Executor, config: Config) -> Check:
    return judge_services(service_status(executor, config))
