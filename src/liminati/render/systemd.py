"""Host-side (root) systemd units: the daily certificate renewal service and its timer."""

from __future__ import annotations

from liminati.render.ini import Sections, quote_words, serialize_sections

HEADER = ("Managed by liminati: a hand edit shows up as drift in `liminati plan`.",)
TIMER_UNIT = "liminati-cert-renew.timer"


def render_renew_service(program: tuple[str, ...], writable: tuple[str, ...]) -> str:
    """`liminati cert renew`, hardened: it only writes the leaf and liminati's state."""
    sections: Sections = [
        (
            "Unit",
            [
                (
                    "Description",
                    "liminati: renew the HTTPS certificate when 30 days or fewer remain",
                ),
                ("Wants", "network-online.target"),
                ("After", "network-online.target"),
            ],
        ),
        (
            "Service",
            [
                ("Type", "oneshot"),
                ("ExecStart", quote_words((*program, "cert", "renew"))),
                # what the renewal writes: the leaf (nginx-user's ssl/), the manifest and the lock
                ("ReadWritePaths", " ".join(writable)),
                ("ProtectSystem", "strict"),
                ("PrivateTmp", "yes"),
                ("PrivateDevices", "yes"),
                ("NoNewPrivileges", "yes"),
                ("ProtectKernelTunables", "yes"),
                ("ProtectKernelModules", "yes"),
                ("ProtectKernelLogs", "yes"),
                ("ProtectControlGroups", "yes"),
                ("ProtectClock", "yes"),
                ("ProtectHostname", "yes"),
                ("RestrictRealtime", "yes"),
                ("RestrictSUIDSGID", "yes"),
                ("LockPersonality", "yes"),
                ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6 AF_NETLINK"),
                ("SystemCallArchitectures", "native"),
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
