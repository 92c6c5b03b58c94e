"""All printing: data to stdout, progress and errors to stderr, colour only on a terminal."""

from __future__ import annotations

import json
from typing import Any

import click

from liminati.plan import Action, Change, Plan

_SIGN = {
    Change.CREATE: ("+", "green"),
    Change.UPDATE: ("~", "yellow"),
    Change.UNCHANGED: ("=", None),
    Change.DRIFT: ("!", "red"),
    Change.REMOVE: ("-", "red"),
}


def data(text: str) -> None:
    click.echo(text)


def data_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def info(text: str) -> None:
    click.echo(text, err=True)


def warn(text: str) -> None:
    click.echo(click.style("warning: ", fg="yellow", bold=True) + text, err=True)


def error(message: str, hint: str | None = None) -> None:
    lines = message.splitlines() or [""]
    click.echo(click.style("error: ", fg="red", bold=True) + lines[0], err=True)
    for line in lines[1:]:
        click.echo("  " + line, err=True)
    if hint:
        click.echo(click.style("hint: ", fg="cyan", bold=True) + hint, err=True)


def action_line(a: Action) -> str:
    sign, colour = _SIGN[a.change]
    verb = a.verb if a.kind == "unit" and a.verb else a.change.value
    if a.kind == "subids" and a.changes:
        verb = "create"
    head = f"{sign} {verb:<9} {a.kind:<13} {a.target}"
    return click.style(head, fg=colour) + f"  ({a.reason})"


def summary(plan: Plan) -> str:
    counts = {c: sum(1 for a in plan.actions if a.change is c) for c in Change}
    text = (
        f"{counts[Change.CREATE]} to create, {counts[Change.UPDATE]} to update, "
        f"{counts[Change.UNCHANGED]} unchanged"
    )
    if counts[Change.REMOVE]:
        text += f", {counts[Change.REMOVE]} to remove"
    if counts[Change.DRIFT]:
        text += f", {counts[Change.DRIFT]} edited by hand (kept; --force replaces)"
    return text


def print_plan(plan: Plan, *, diffs: bool = True) -> None:
    for a in plan.actions:
        data(action_line(a))
    if diffs:
        for a in plan.actions:
            if a.diff and (a.changes or a.change is Change.DRIFT):
                data("")
                for line in a.diff.splitlines():
                    colour = (
                        "green" if line.startswith("+") else "red" if line.startswith("-") else None
                    )
                    data(click.style(line, fg=colour))
    data("")
    data("Plan: " + summary(plan) + ".")


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "changes": len(plan.changes),
        "drift": len(plan.drift),
        "actions": [
            {
                "kind": a.kind,
                "target": a.target,
                "change": a.change.value,
                "verb": a.verb,
                "reason": a.reason,
                "diff": a.diff,
            }
            for a in plan.actions
        ],
    }


def print_cert_status(status: dict[str, Any]) -> None:
    data(f"domain: {status['domain']}")
    for label in ("ca", "leaf", "previous_ca"):
        cert = status.get(label)
        if not isinstance(cert, dict):
            continue
        data("")
        data(f"{label.replace('_', ' ')}:")
        data(f"  subject      {cert['subject']}")
        data(f"  issuer       {cert['issuer']}")
        data(f"  serial       {cert['serial']}")
        data(f"  sha256       {cert['sha256']}")
        data(
            f"  valid        {cert['not_before']} .. {cert['not_after']} "
            f"({cert['days_left']} days left)"
        )
        if cert["san"]:
            data(f"  names        {', '.join(cert['san'])}")
        if cert["ca"]:
            permitted = ", ".join(cert["permitted_dns"]) or "(unconstrained)"
            data(
                f"  CA           path length {cert['path_length']}, "
                f"permitted names {permitted}, no IP addresses"
            )
        if "matches_key" in cert:
            data(f"  key          {'matches' if cert['matches_key'] else 'DOES NOT MATCH'}")
            chain = "signed by the CA" if cert["chains_to_ca"] else "NOT signed by the CA"
            data(f"  chain        {chain}")
