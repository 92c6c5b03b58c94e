"""The API key store (/var/lib/liminati/api-keys.json, root only): parsing and validation."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from liminati.errors import UsageError

#: owners appear in nginx's map and in the access log: keep them plain
_OWNER = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
#: the prefix tells a leaked string apart as a liminati key (secret scanners can match it)
PREFIX = "lmk_"


@dataclass(frozen=True)
class ApiKey:
    owner: str
    key: str
    created: str

    @property
    def last4(self) -> str:
        return self.key[-4:]


def check_owner(owner: str) -> str:
    if not _OWNER.match(owner):
        raise UsageError(
            f"key name {owner!r} is not allowed",
            hint="use 1-64 lowercase letters, digits, '.', '_', '@' or '-', like alice or ci-bot",
        )
    return owner


def parse(raw: bytes | None) -> dict[str, ApiKey]:
    if not raw:
        return {}
    data = json.loads(raw)
    return {
        owner: ApiKey(owner, entry["key"], entry["created"])
        for owner, entry in data.get("keys", {}).items()
    }


def dump(keys: dict[str, ApiKey]) -> bytes:
    data = {"keys": {k.owner: {"key": k.key, "created": k.created} for k in keys.values()}}
    return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
