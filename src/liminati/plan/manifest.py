"""The manifest: what liminati last applied (file hashes, unit inputs): drift versus change."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

VERSION = 1


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Manifest:
    #: target path -> sha256 of the content liminati wrote
    files: dict[str, str] = field(default_factory=dict)
    #: "user/unit" -> {input path: sha256} at the last successful (re)start
    units: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes | None) -> Manifest:
        if not raw:
            return cls()
        data: dict[str, Any] = json.loads(raw)
        return cls(files=dict(data.get("files", {})), units=dict(data.get("units", {})))

    def dump(self) -> bytes:
        data = {"version": VERSION, "files": self.files, "units": self.units}
        return json.dumps(data, indent=2, sort_keys=True).encode() + b"\n"
