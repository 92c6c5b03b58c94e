"""Host-side (root) systemd units: the daily certificate renewal service and its timer."""

from __future__ import annotations

from liminati.render.ini import Sections, quote_words, serialize_sections

HEADER = ("Managed by liminati: a hand edit shows up as drift in `liminati plan`.",)
TIMER_UNIT = "liminati-cert-renew.timer"


#: what ProtectHome= hides; a config file there is bound into the sandbox read-only
HOMES = ("/root/", "/home/", "/run/user/")


def render_renew_service(
    program: tuple[str, ...], writable: tuple[str, ...], config_file: str | None = None
) -> str:
    """`liminati cert renew`, sandboxed to what it does (`systemd-analyze security`: 1.5, "OK").

    What the renewal needs, and so keeps: root's file ownership rights (it reads the root-only
    CA key and writes nginx-user's leaf: CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER), write access
    to the leaf's folder and liminati's state only, local sockets (the system bus, through
    which `systemctl --user -M nginx-user@ reload` reaches nginx's manager) and inet sockets
    for `nginx -t`, which binds nginx's listen ports: in the private network namespace they
    are free, so the check needs neither the host's ports nor a namespace of its own.

    `config_file`: the install's `--config`, which the renewal must read too (the domain, the
    users); in a home folder it is bound into the otherwise empty homes read-only.
    """
    command = (*program, "cert", "renew")
    if config_file:
        command += ("--config", config_file)
    in_home = bool(config_file) and str(config_file).startswith(HOMES)
    homes = [("ProtectHome", "tmpfs"), ("BindReadOnlyPaths", str(config_file))]
    sections: Sections = [
        (
            "Unit",
            [
                (
                    "Description",
                    "liminati: renew the HTTPS certificate when 30 days or fewer remain",
                ),
            ],
        ),
        (
            "Service",
            [
                ("Type", "oneshot"),
                ("ExecStart", quote_words(command)),
                # what the renewal writes: the leaf (nginx-user's ssl/), the manifest and the lock
                ("ReadWritePaths", " ".join(writable)),
                ("ProtectSystem", "strict"),
                *(homes if in_home else [("ProtectHome", "yes")]),
                ("PrivateTmp", "yes"),
                ("PrivateDevices", "yes"),
                # no network: the renewal talks to nobody but the local bus
                ("PrivateNetwork", "yes"),
                ("IPAddressDeny", "any"),
                ("CapabilityBoundingSet", "CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER"),
                ("NoNewPrivileges", "yes"),
                ("ProtectKernelTunables", "yes"),
                ("ProtectKernelModules", "yes"),
                ("ProtectKernelLogs", "yes"),
                ("ProtectControlGroups", "yes"),
                ("ProtectClock", "yes"),
                ("ProtectHostname", "yes"),
                ("ProtectProc", "invisible"),
                ("ProcSubset", "pid"),
                ("RestrictNamespaces", "yes"),
                ("RestrictRealtime", "yes"),
                ("RestrictSUIDSGID", "yes"),
                ("LockPersonality", "yes"),
                ("MemoryDenyWriteExecute", "yes"),
                ("RemoveIPC", "yes"),
                ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
                ("SystemCallArchitectures", "native"),
                ("SystemCallFilter", "@system-service"),
                # @privileged holds @chown, which writing nginx-user's leaf needs: allowed again
                ("SystemCallFilter", "~@privileged @resources"),
                ("SystemCallFilter", "@chown"),
                ("SystemCallErrorNumber", "EPERM"),
                ("UMask", "0077"),
            ],
        ),
    ]
    return serialize_sections(HEADER, sections)


def render_renew_timer() -> str:
    sections: Sections = [
        ("Unit", [("Description", "liminati: daily check of the HTTPS certificate")]),
        (
            "Timer",
            [
                ("OnCalendar", "daily"),
                # spread the runs of many hosts, and catch up after the host was off
                ("RandomizedDelaySec", "6h"),
                ("Persistent", "true"),
            ],
        ),
        ("Install", [("WantedBy", "timers.target")]),
    ]
    return serialize_sections(HEADER, sections)
