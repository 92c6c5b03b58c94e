"""The typed quadlet model and the one serializer that owns systemd INI quoting."""

from __future__ import annotations

from dataclasses import dataclass, field

# Only keys that podman 4.4 (the floor liminati supports) knows go into [Container]: an unknown key
# makes quadlet drop the whole unit. Newer options (pull policy, shm size, tmpfs, health timing)
# travel as podman arguments through PodmanArgs=, which every quadlet version passes through.


@dataclass(frozen=True)
class ContainerSpec:
    """A `.container` quadlet. Each field documents the key it becomes."""

    #: [Unit] Description=
    description: str
    #: [Container] ContainerName=
    name: str
    #: [Container] Image=
    image: str
    #: [Container] Exec= (arguments after the image), one word each
    exec_args: tuple[str, ...] = ()
    #: [Container] PublishPort=, one line each
    publish: tuple[str, ...] = ()
    #: [Container] Network=
    network: str = ""
    #: [Container] Volume=, one line each
    volumes: tuple[str, ...] = ()
    #: [Container] EnvironmentFile=
    environment_files: tuple[str, ...] = ()
    #: [Container] Environment=, (name, value) pairs; never secrets (they go in files)
    environment: tuple[tuple[str, str], ...] = ()
    #: [Container] AddDevice=
    devices: tuple[str, ...] = ()
    #: [Container] DropCapability= / AddCapability=
    drop_caps: tuple[str, ...] = ("ALL",)
    add_caps: tuple[str, ...] = ()
    #: [Container] NoNewPrivileges=
    no_new_privileges: bool = True
    #: [Container] ReadOnly=
    read_only: bool = False
    #: [Container] HealthCmd=
    health_cmd: str = ""
    #: [Container] Label=
    labels: tuple[tuple[str, str], ...] = ()
    #: [Container] PodmanArgs=, one word each
    podman_args: tuple[str, ...] = ()
    #: [Service] TimeoutStartSec=
    timeout_start_sec: int = 900
    #: [Service] TimeoutStopSec=
    timeout_stop_sec: int = 60
    #: [Service] Restart=
    restart: str = "always"
    #: [Service] ExecReload=, one word each (empty: no reload, only restart)
    exec_reload: tuple[str, ...] = ()
    #: [Unit] After= / Wants=
    after: tuple[str, ...] = ("network-online.target",)
    wants: tuple[str, ...] = ("network-online.target",)
    #: [Unit] Requires= / PartOf= (a container that lives in another one's network namespace)
    requires: tuple[str, ...] = ()
    part_of: tuple[str, ...] = ()
    #: [Unit] Upholds= (systemd 249+): started again whenever this unit is active
    upholds: tuple[str, ...] = ()
    header: tuple[str, ...] = field(default_factory=tuple)

    def sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        unit: list[tuple[str, str]] = [("Description", self.description)]
        unit += [("Wants", " ".join(self.wants))] if self.wants else []
        unit += [("After", " ".join(self.after))] if self.after else []
        unit += [("Requires", " ".join(self.requires))] if self.requires else []
        unit += [("PartOf", " ".join(self.part_of))] if self.part_of else []
        unit += [("Upholds", " ".join(self.upholds))] if self.upholds else []
        c: list[tuple[str, str]] = [("ContainerName", self.name), ("Image", self.image)]
        c += [("Network", self.network)] if self.network else []
        c += [("PublishPort", p) for p in self.publish]
        c += [("Volume", v) for v in self.volumes]
        c += [("EnvironmentFile", f) for f in self.environment_files]
        c += [("Environment", quote_word(f"{k}={v}")) for k, v in self.environment]
        c += [("AddDevice", d) for d in self.devices]
        c += [("DropCapability", cap) for cap in self.drop_caps]
        c += [("AddCapability", cap) for cap in self.add_caps]
        c += [("NoNewPrivileges", "true")] if self.no_new_privileges else []
        c += [("ReadOnly", "true")] if self.read_only else []
        c += [("HealthCmd", self.health_cmd)] if self.health_cmd else []
        c += [("Label", quote_word(f"{k}={v}")) for k, v in self.labels]
        c += [("PodmanArgs", quote_words(self.podman_args))] if self.podman_args else []
        c += [("Exec", quote_words(self.exec_args))] if self.exec_args else []
        service = [
            ("Restart", self.restart),
            ("TimeoutStartSec", str(self.timeout_start_sec)),
            ("TimeoutStopSec", str(self.timeout_stop_sec)),
        ]
        service += [("ExecReload", quote_words(self.exec_reload))] if self.exec_reload else []
        install = [("WantedBy", "default.target")]
        return [("Unit", unit), ("Container", c), ("Service", service), ("Install", install)]


_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=._,:/+-@%")


def quote_word(word: str) -> str:
    """Quote one word for systemd's word splitting (used by Exec=, PodmanArgs=, Environment=)."""
    if word and all(ch in _SAFE for ch in word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def quote_words(words: tuple[str, ...]) -> str:
    return " ".join(quote_word(w) for w in words)


Sections = list[tuple[str, list[tuple[str, str]]]]


def serialize(spec: ContainerSpec) -> str:
    return serialize_sections(spec.header, spec.sections())


def serialize_sections(header: tuple[str, ...], sections: Sections) -> str:
    """The one place INI text is produced: `[Section]` then `Key=value` lines."""
    for _section, pairs in sections:
        for key, value in pairs:
            if "\n" in value or "\n" in key:
                raise ValueError(f"{key}: a newline cannot be written into a unit file")
    out = [f"# {line}" for line in header]
    for section, pairs in sections:
        if out:
            out.append("")
        out.append(f"[{section}]")
        out += [f"{key}={value}" for key, value in pairs]
    return "\n".join(out) + "\n"
