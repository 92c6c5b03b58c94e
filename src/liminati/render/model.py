"""What render produces: the desired users, directories, files and units, as plain data."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Policy(Enum):
    """How a file is converged."""

    #: written whenever its rendered content differs
    MANAGED = "managed"
    #: generated once (CA, secrets): kept as it is when present, never regenerated
    GENERATE_ONCE = "generate-once"


@dataclass(frozen=True)
class UnitRef:
    """A systemd user unit of one service user."""

    user: str
    unit: str  # e.g. "vllm-qwen.service"


@dataclass(frozen=True)
class FileSpec:
    path: str
    content: bytes
    owner: str
    group: str
    mode: int
    #: masked in diffs and never printed
    secret: bool = False
    policy: Policy = Policy.MANAGED
    #: units restarted when this file changes
    units: tuple[UnitRef, ...] = ()
    #: a host action run when this file changes ("sysctl")
    activate: str = ""


@dataclass(frozen=True)
class DirSpec:
    path: str
    owner: str
    group: str
    mode: int
    #: a service's data (chats, models), kept by `uninstall --keep-data`: when its owner must
    #: change (the account was made again with another uid), what the old owner owned inside
    #: follows, or the service could not read its own data any more
    data: bool = False


@dataclass(frozen=True)
class UserSpec:
    name: str
    home: str
    shell: str = "/usr/sbin/nologin"
    #: subordinate ids for rootless podman: 65536 is what useradd gives a normal user
    subid_count: int = 65536


@dataclass(frozen=True)
class UnitSpec:
    user: str
    #: the generated service, e.g. "vllm-qwen.service"
    unit: str
    #: the quadlet file it is generated from
    quadlet: str
    image: str
    #: ExecReload= exists: config changes need a reload, not a restart
    reloadable: bool = False


@dataclass(frozen=True)
class Material:
    """Generated inputs (keys, certificates, secrets) that render needs but cannot make."""

    ca_cert_pem: bytes
    ca_key_pem: bytes
    leaf_cert_pem: bytes
    leaf_key_pem: bytes
    #: lowercase hex SHA-256 of the CA certificate's DER encoding
    ca_sha256: str
    #: name -> value: vllm-api-key, webui-secret-key, webui-admin-password
    secrets: dict[str, str] = field(default_factory=dict)
    #: per-user API keys for the vLLM vhost: owner -> key
    api_keys: dict[str, str] = field(default_factory=dict)
    #: the CA retired by `cert rotate-ca`, served to clients until forgotten
    previous_ca_pem: bytes | None = None


@dataclass(frozen=True)
class WebuiConnections:
    """The OpenAI connections Open WebUI must have: one per vLLM unit, on loopback, with the
    internal key. Open WebUI takes them from its environment at its first start only (then
    its database wins), so a later change goes through its admin API (liminati.apply.webui)."""

    #: where liminati reaches Open WebUI on the host, e.g. http://127.0.0.1:3000
    base_url: str
    admin_email: str
    #: one base URL per model, in the order of [[models]]
    urls: tuple[str, ...]
    #: Open WebUI's unit, "user/unit"
    unit: str = ""
    admin_password: str = field(repr=False, default="")
    api_key: str = field(repr=False, default="")


@dataclass(frozen=True)
class Desired:
    users: tuple[UserSpec, ...]
    dirs: tuple[DirSpec, ...]
    files: tuple[FileSpec, ...]
    units: tuple[UnitSpec, ...]
    webui: WebuiConnections | None = None

    def file(self, path: str) -> FileSpec:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)
