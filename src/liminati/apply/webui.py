"""Give Open WebUI the models' connections through its admin API (see liminati.plan.webui)."""

from __future__ import annotations

from collections.abc import Callable

from liminati.errors import HostError
from liminati.executor.webui import SignInRefused, WebuiAdmin
from liminati.plan.webui import describe_difference, merge_connections
from liminati.render import WebuiConnections

#: Open WebUI restarted by this run: its start (no migration: it has run before) takes
#: 30-60 s on a small CPU host
HEALTH_TIMEOUT = 600.0


def sync_connections(
    want: WebuiConnections,
    progress: Callable[[str], None],
    *,
    api: WebuiAdmin | None = None,
    health_timeout: float = HEALTH_TIMEOUT,
) -> str | None:
    """Wait for Open WebUI, sign in as its admin, and put liminati's connections in place
    (keeping every other one). Returns a warning when Open WebUI refused the sign-in (the
    admin's password was changed there): liminati cannot fix that, the rest of the install
    stands. Raises HostError when Open WebUI does not come up or refuses the update."""
    api = api or WebuiAdmin(want.base_url)
    if not api.healthy():
        progress("waiting for Open WebUI to answer, to check its connections to the models...")
        api.wait_healthy(health_timeout, lambda s: progress(f"  still starting after {s:.0f} s"))
    try:
        token = api.signin(want.admin_email, want.admin_password)
    except SignInRefused as exc:
        urls = ", ".join(want.urls)
        return f"{exc.message}: its connections to the models ({urls}) were not checked; {exc.hint}"
    current = api.openai_config(token)
    body = merge_connections(current, want)
    if body is None:
        progress(f"Open WebUI has the connections of all {len(want.urls)} models")
        return None
    what = describe_difference(current, want)
    api.update_openai_config(token, body)
    if merge_connections(api.openai_config(token), want) is not None:
        raise HostError(
            "Open WebUI accepted the new connections but does not show them",
            hint="check Admin settings > Connections in Open WebUI",
        )
    progress(f"Open WebUI connections: {what}")
    return None
