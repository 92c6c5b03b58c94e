"""Open WebUI's OpenAI connections: what liminati sends to its admin API and what the plan says.

Open WebUI stores the connections at its first start and ignores its environment afterwards,
so liminati merges: its own loopback connections first (in the order of [[models]], with the
internal key, each keeping the settings an admin gave it), every other connection after them,
untouched. The real Open WebUI taking this body is tests/live/test_webui_sync.py."""

from __future__ import annotations

from typing import Any

from liminati.plan import Change, Facts, Manifest
from liminati.plan.build import build_plan
from liminati.plan.webui import WebuiSeen, describe_difference, merge_connections, webui_action
from liminati.render import Desired, UnitSpec, WebuiConnections

KEY = "internal-key-0123456789"
OLD_KEY = "old-internal-key-987654"
A, B = "http://127.0.0.1:8000/v1", "http://127.0.0.1:8001/v1"
OTHER = "https://api.example.internal/v1"
UNIT = "webui-user/open-webui.service"


def want(*urls: str, key: str = KEY) -> WebuiConnections:
    return WebuiConnections(
        "http://127.0.0.1:3000", "admin@x.internal", urls, UNIT, "pw", api_key=key
    )


def config(urls: list[str], keys: list[str], configs: dict[str, Any] | None = None) -> dict:
    return {
        "ENABLE_OPENAI_API": True,
        "OPENAI_API_BASE_URLS": urls,
        "OPENAI_API_KEYS": keys,
        "OPENAI_API_CONFIGS": configs or {},
    }


def test_the_same_connections_need_nothing() -> None:
    current = config([A, B], [KEY, KEY], {"0": {"enable": True}})
    assert merge_connections(current, want(A, B)) is None


def test_a_model_added_later_is_added_after_the_first_keeping_its_settings() -> None:
    current = config([A], [KEY], {"0": {"prefix_id": "team", "tags": [{"name": "gpu"}]}})
    body = merge_connections(current, want(A, B))
    assert body == {
        "ENABLE_OPENAI_API": True,
        "OPENAI_API_BASE_URLS": [A, B],
        "OPENAI_API_KEYS": [KEY, KEY],
        "OPENAI_API_CONFIGS": {"0": {"prefix_id": "team", "tags": [{"name": "gpu"}]}, "1": {}},
    }
    assert describe_difference(current, want(A, B)) == f"add {B}"


def test_other_connections_are_kept_after_ours_with_their_key_and_settings() -> None:
    # an admin's own connection first, ours after it, one of ours retired since
    current = config(
        [OTHER, A, B],
        ["their-secret", KEY, KEY],
        {"0": {"enable": False, "prefix_id": "ext"}, "1": {"model_ids": ["qwen"]}},
    )
    body = merge_connections(current, want(A))
    assert body == {
        "ENABLE_OPENAI_API": True,
        "OPENAI_API_BASE_URLS": [A, OTHER],
        "OPENAI_API_KEYS": [KEY, "their-secret"],
        "OPENAI_API_CONFIGS": {
            "0": {"model_ids": ["qwen"]},
            "1": {"enable": False, "prefix_id": "ext"},
        },
    }
    assert describe_difference(current, want(A)) == f"remove {B}; keep 1 other connection"


def test_a_new_internal_key_is_sent_and_never_named() -> None:
    current = config([A], [OLD_KEY])
    body = merge_connections(current, want(A))
    assert body is not None and body["OPENAI_API_KEYS"] == [KEY]
    words = describe_difference(current, want(A))
    assert words == f"new key for {A}"
    assert KEY not in words and OLD_KEY not in words


def test_settings_keyed_by_url_as_older_versions_did_follow_the_connection() -> None:
    current = config([A], [KEY], {A: {"prefix_id": "legacy"}})
    body = merge_connections(current, want(B, A))
    assert body is not None
    assert body["OPENAI_API_BASE_URLS"] == [B, A]
    assert body["OPENAI_API_CONFIGS"] == {"0": {}, "1": {"prefix_id": "legacy"}}


def test_fewer_keys_than_urls_and_a_trailing_slash_are_repaired() -> None:
    current = config([A + "/", B], [KEY])
    body = merge_connections(current, want(A, B))
    assert body is not None
    assert body["OPENAI_API_BASE_URLS"] == [A, B] and body["OPENAI_API_KEYS"] == [KEY, KEY]


def test_a_disabled_openai_api_stays_as_the_admin_set_it() -> None:
    current = config([A], [OLD_KEY]) | {"ENABLE_OPENAI_API": False}
    body = merge_connections(current, want(A))
    assert body is not None and body["ENABLE_OPENAI_API"] is False


# -- the plan's step ------------------------------------------------------------------------


def test_the_action_for_each_state_of_open_webui() -> None:
    fresh = webui_action(want(A, B), WebuiSeen(has_database=False), restarting=True)
    assert (fresh.change, fresh.reason) == (
        Change.UNCHANGED,
        "first start: Open WebUI takes them from its environment",
    )
    same = webui_action(want(A), WebuiSeen(True, config([A], [KEY])), restarting=True)
    assert (same.change, same.reason) == (Change.UNCHANGED, "Open WebUI has the 1 of [[models]]")
    differ = webui_action(want(A, B), WebuiSeen(True, config([A], [KEY])), restarting=False)
    assert (differ.change, differ.reason) == (
        Change.UPDATE,
        f"add {B} (through its admin API)",
    )
    down = WebuiSeen(True, problem="Open WebUI is not running")
    later = webui_action(want(A), down, restarting=True)
    assert (later.change, later.reason) == (
        Change.UPDATE,
        "checked once Open WebUI is back (Open WebUI is not running)",
    )
    unknown = webui_action(want(A), down, restarting=False)
    assert (unknown.change, unknown.reason) == (
        Change.UNCHANGED,
        "cannot tell: Open WebUI is not running",
    )


def _plan(seen: WebuiSeen | None, active: bool | None) -> list[tuple[Change, str]]:
    unit = UnitSpec("webui-user", "open-webui.service", "/q/open-webui.container", "img")
    desired = Desired((), (), (), (unit,), want(A, B))
    facts = Facts(
        stats={},
        contents={},
        users={},
        subuid=[],
        subgid=[],
        linger={},
        active={UNIT: active},
        manifest=Manifest(units={UNIT: {}}),
        webui=seen,
    )
    return [(a.change, a.reason) for a in build_plan(desired, facts).of_kind("webui")]


def test_the_planner_checks_after_a_restart_and_skips_a_staged_host() -> None:
    down = WebuiSeen(True, problem="Open WebUI is not running")
    # not running: the plan starts it, and checks the connections once it answers
    assert _plan(down, active=False) == [
        (Change.UPDATE, "checked once Open WebUI is back (Open WebUI is not running)")
    ]
    # running and unchanged, but not answering: nothing the plan can do
    assert _plan(WebuiSeen(True, problem="refused"), active=True) == [
        (Change.UNCHANGED, "cannot tell: refused")
    ]
    # staged (nothing observed): no step at all
    assert _plan(None, active=None) == []
