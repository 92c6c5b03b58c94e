"""The sysctl drop-in is loaded again when the kernel's live values differ from it, even if the
file itself is unchanged (an install killed before loading it; an uninstall in between)."""

from __future__ import annotations

from liminati.plan import Change, Facts, Manifest, sha256
from liminati.plan.build import build_plan
from liminati.render import Desired, FileSpec

PATH = "/etc/sysctl.d/60-liminati-unprivileged-ports.conf"
CONTENT = (
    b"# Managed by liminati\n"
    b"net.ipv4.ip_unprivileged_port_start = 53\n"
    b"net.ipv4.ip_nonlocal_bind = 1\n"
)


def plan_with(live: dict[str, str | None]) -> tuple[Change, str]:
    desired = Desired(
        (), (), (FileSpec(PATH, CONTENT, "root", "root", 0o644, activate="sysctl"),), ()
    )
    facts = Facts(
        stats={PATH: (False, 0o644, "root", "root")},
        contents={PATH: CONTENT},
        users={},
        subuid=[],
        subgid=[],
        linger={},
        active={},
        manifest=Manifest(files={PATH: sha256(CONTENT)}),
        sysctl=live,
    )
    (action,) = build_plan(desired, facts).of_kind("sysctl")
    return action.change, action.reason


def test_unchanged_file_and_live_values_in_effect_is_no_change() -> None:
    live = {"net.ipv4.ip_unprivileged_port_start": "53", "net.ipv4.ip_nonlocal_bind": "1"}
    assert plan_with(live)[0] is Change.UNCHANGED


def test_unchanged_file_but_a_reset_live_value_is_loaded_again() -> None:
    live = {"net.ipv4.ip_unprivileged_port_start": "1024", "net.ipv4.ip_nonlocal_bind": "1"}
    change, reason = plan_with(live)
    assert change is Change.UPDATE
    assert reason == "not in effect: net.ipv4.ip_unprivileged_port_start is 1024, not 53"


def test_unknown_live_values_change_nothing() -> None:
    assert plan_with({})[0] is Change.UNCHANGED
