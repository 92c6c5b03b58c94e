"""Plan actions: one per resource, changed or not, each with the reason for it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Change(Enum):
    CREATE = "create"
    UPDATE = "update"
    UNCHANGED = "unchanged"
    #: edited by hand since liminati wrote it: kept unless --force
    DRIFT = "drift"
    #: liminati wrote it and the config no longer asks for it (a model taken out of [[models]])
    REMOVE = "remove"


@dataclass(frozen=True)
class Action:
    """kind: ca, leaf, secret, user, subids, linger, dir, file, sysctl, systemd,
    daemon-reload, unit."""

    kind: str
    target: str
    change: Change
    reason: str
    #: for kind=file: the unified diff (secrets masked), empty otherwise
    diff: str = ""
    #: for kind=unit: start, restart, reload; for subids: "START COUNT"
    verb: str = ""
    #: for kind=file/dir: fixing owner or mode only
    attrs_only: bool = False
    #: a backup of the current file is taken before it is replaced
    backup: bool = False
    user: str = ""

    @property
    def changes(self) -> bool:
        return self.change in (Change.CREATE, Change.UPDATE, Change.REMOVE)


@dataclass(frozen=True)
class Plan:
    actions: tuple[Action, ...]

    @property
    def changes(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.changes)

    @property
    def drift(self) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.change is Change.DRIFT)

    def of_kind(self, kind: str) -> tuple[Action, ...]:
        return tuple(a for a in self.actions if a.kind == kind)
