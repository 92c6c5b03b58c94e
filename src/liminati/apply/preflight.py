"""Checks before any change: each problem is one line with its fix; nothing is touched."""

from __future__ import annotations

import re

from liminati.config import Config
from liminati.executor import Executor

#: quadlet arrived in podman 4.4
PODMAN_FLOOR = (4, 4)
ROOT_PROBLEM = (
    "not running as root: run `sudo liminati install` "
    "(or `liminati install --root DIR` to stage into a folder)"
)


def podman_version(text: str) -> tuple[int, int, int] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def preflight(executor: Executor, config: Config, listen_ip: str, own_uids: set[int]) -> list[str]:
    """Problems that stop an install on this host (empty list: go ahead)."""
    if executor.staged:
        return []
    problems = []
    if not executor.is_root():
        problems.append(ROOT_PROBLEM)
    if not executor.systemd_running():
        problems.append(
            "systemd is not running as PID 1: liminati runs services as systemd "
            "user units; use a host booted with systemd"
        )
    podman = executor.which("podman")
    if podman is None:
        problems.append(
            "podman is not installed: `apt install podman` (Debian 13, Ubuntu 24.04) "
            "or `dnf install podman`; version 4.4 or newer is needed"
        )
    else:
        result = executor.run_tool([podman, "--version"])
        version = podman_version(result.stdout)
        if version is None:
            said = (result.stdout or result.stderr).strip().splitlines()
            problems.append(f"`podman --version` failed: {said[-1] if said else result.returncode}")
        elif version[:2] < PODMAN_FLOOR:
            shown = ".".join(map(str, version))
            problems.append(
                f"podman {shown} is too old: quadlet needs podman 4.4 or newer "
                "(Debian 12 ships 4.3.1 with no quadlet): upgrade to Debian 13 or Ubuntu 24.04, "
                "or install podman >= 4.4 from your distribution's backports"
            )
    for tool in ("useradd", "usermod", "loginctl", "systemctl"):
        if executor.which(tool) is None:
            problems.append(f"{tool} not found: install the package that provides it")
    problems += cdi_problems(executor, config)
    problems += port_conflicts(executor, config, listen_ip, own_uids)
    return problems


#: where the NVIDIA container toolkit writes the CDI specification podman reads
CDI_SPECS = ("/etc/cdi/nvidia.yaml", "/etc/cdi/nvidia.json", "/var/run/cdi/nvidia.yaml",
             "/var/run/cdi/nvidia.json")  # fmt: skip


def cdi_problems(executor: Executor, config: Config) -> list[str]:
    """A model on a GPU needs the NVIDIA CDI specification, or its container cannot start."""
    gpu_models = [m.unit for m in config.models if m.gpus != "none"]
    if not gpu_models or any(executor.stat(p) is not None for p in CDI_SPECS):
        return []
    return [
        f"no NVIDIA CDI specification ({CDI_SPECS[0]}), which {', '.join(gpu_models)} needs for "
        "its GPU: install the NVIDIA container toolkit and run `nvidia-ctk cdi generate "
        f'--output={CDI_SPECS[0]}` (or set gpus = "none" for a CPU build of vLLM)'
    ]


def port_conflicts(
    executor: Executor, config: Config, listen_ip: str, own_uids: set[int]
) -> list[str]:
    tailnet = {
        ("tcp", config.ports.https): "ports.https",
        ("tcp", config.ports.http): "ports.http",
        ("tcp", config.ports.dist): "ports.dist",
        ("udp", config.ports.dns): "ports.dns",
        ("tcp", config.ports.dns): "ports.dns",
        ("tcp", config.ports.dns_admin): "ports.dns_admin",
    }
    loopback = {("tcp", config.ports.webui): "ports.webui"}
    for i, m in enumerate(config.models):
        loopback[("tcp", m.port)] = f"models[{i}].port"
    wildcard = {"0.0.0.0", "::"}
    problems = []
    seen = set()
    for sock in executor.listening():
        if sock.uid in own_uids:
            continue  # our own services, from an earlier install
        key = (sock.proto, sock.port)
        field = None
        if key in tailnet and sock.address in wildcard | {listen_ip}:
            field = tailnet[key]
        elif key in loopback and sock.address in wildcard | {"127.0.0.1", "::1"}:
            field = loopback[key]
        if field is None or (key, field) in seen:
            continue
        seen.add((key, field))
        who = f"{sock.process} (pid {sock.pid})" if sock.pid else sock.process
        problems.append(
            f"{sock.proto} port {sock.port} ({field}) on {sock.address} is taken by {who}: "
            f"stop it, or set another {field} in the config"
        )
    return problems
