"""Open WebUI's OpenAI connections: what it has, what [[models]] needs, how to get there. Pure.

Open WebUI reads `OPENAI_API_BASE_URLS` and `OPENAI_API_KEYS` from its environment at its first
start and stores them in its database; from then on the database wins (PersistentConfig). So
a model added to [[models]] later, a changed port or a new internal key reach Open WebUI only
through its admin API (`/openai/config/update`), which liminati.apply.webui calls with what
`merge_connections` returns.

liminati owns the connections on the host's loopback (`http://127.0.0.1:PORT/v1`): Open WebUI's
container reaches only the loopback ports pasta forwards to it, which are the models' ports, so
no other loopback connection could work. Every other connection (one an admin added, to
another provider) is kept as it is, after liminati's. An admin's settings of one of liminati's
connections (a prefix, tags, a model filter, disabled) stay with its URL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from liminati.plan.model import Action, Change
from liminati.render import WebuiConnections

#: the connections liminati writes (and so owns)
OURS = re.compile(r"^http://127\.0\.0\.1:\d{1,5}/v1/?$")

TARGET = "open-webui connections"


@dataclass(frozen=True)
class WebuiSeen:
    """Open WebUI as observed (liminati.observe)."""

    #: its database exists: it has started before and keeps the connections it stored
    has_database: bool
    #: what GET /openai/config answered (None: could not ask, `problem` says why)
    config: dict[str, Any] | None = field(default=None, repr=False)
    problem: str = ""


def _connections(config: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(url, key, per-connection settings) in Open WebUI's order. Its settings are keyed by
    the connection's index as a string; older versions keyed them by URL."""
    urls = [str(u) for u in config.get("OPENAI_API_BASE_URLS") or []]
    keys = [str(k) for k in config.get("OPENAI_API_KEYS") or []]
    settings = config.get("OPENAI_API_CONFIGS") or {}
    out = []
    for i, url in enumerate(urls):
        key = keys[i] if i < len(keys) else ""
        conf = settings.get(str(i), settings.get(url, {}))
        out.append((url, key, dict(conf) if isinstance(conf, dict) else {}))
    return out


def merge_connections(current: dict[str, Any], want: WebuiConnections) -> dict[str, Any] | None:
    """The body for POST /openai/config/update that gives Open WebUI liminati's connections
    (in the order of [[models]], with the internal key) and keeps every other one; None when
    it has them already."""
    have = _connections(current)
    settings_of = {url.rstrip("/"): conf for url, _, conf in have if OURS.match(url)}
    merged = [(url, want.api_key, settings_of.get(url, {})) for url in want.urls]
    merged += [c for c in have if not OURS.match(c[0])]
    if merged == have:
        return None
    return {
        "ENABLE_OPENAI_API": current.get("ENABLE_OPENAI_API", True),
        "OPENAI_API_BASE_URLS": [url for url, _, _ in merged],
        "OPENAI_API_KEYS": [key for _, key, _ in merged],
        "OPENAI_API_CONFIGS": {str(i): conf for i, (_, _, conf) in enumerate(merged)},
    }


def describe_difference(current: dict[str, Any], want: WebuiConnections) -> str:
    """What differs, in words, without any key."""
    have = _connections(current)
    ours = [url for url, _, _ in have if OURS.match(url)]
    parts = []
    added = [u for u in want.urls if u not in ours]
    gone = [u for u in ours if u not in want.urls]
    if added:
        parts.append("add " + ", ".join(added))
    if gone:
        parts.append("remove " + ", ".join(gone))
    stale = [url for url, key, _ in have if url in want.urls and key != want.api_key]
    if stale:
        parts.append("new key for " + ", ".join(stale))
    if not parts:
        parts.append("put the models' connections first, in the order of [[models]]")
    others = len(have) - len(ours)
    if others:
        parts.append(f"keep {others} other connection{'s' if others > 1 else ''}")
    return "; ".join(parts)


def webui_action(want: WebuiConnections, seen: WebuiSeen, restarting: bool) -> Action:
    """The plan's step for Open WebUI's connections. `restarting`: this plan (re)starts Open
    WebUI, so a connection list that could not be read now is checked once it is back."""
    if not seen.has_database:
        why = "first start: Open WebUI takes them from its environment"
        return Action("webui", TARGET, Change.UNCHANGED, why)
    if seen.config is not None:
        if merge_connections(seen.config, want) is None:
            why = f"Open WebUI has the {len(want.urls)} of [[models]]"
            return Action("webui", TARGET, Change.UNCHANGED, why)
        why = describe_difference(seen.config, want) + " (through its admin API)"
        return Action("webui", TARGET, Change.UPDATE, why)
    if restarting:
        why = f"checked once Open WebUI is back ({seen.problem})"
        return Action("webui", TARGET, Change.UPDATE, why)
    return Action("webui", TARGET, Change.UNCHANGED, f"cannot tell: {seen.problem}")
