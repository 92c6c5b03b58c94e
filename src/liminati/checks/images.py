"""Every container runs the image the config pins: by digest (`name@sha256:...`) the digest
must match; by tag, the container must run what the tag points at now (a newer pull of the
same tag needs a restart to take effect)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from liminati.checks.model import Check, Status, worst
from liminati.config import Config
from liminati.executor import Executor

NAME = "images"


@dataclass(frozen=True)
class Running:
    """One container as doctor expects it: podman's inspect output (None: not found)."""

    container: str
    user: str
    field: str  # images.<field> in the config
    ref: str  # the configured reference
    #: `podman container inspect` of the container
    inspect: dict[str, Any] | None
    #: `podman image inspect` of the image the container runs (by its ID)
    image: dict[str, Any] | None
    #: `podman image inspect` of the configured reference (tags only)
    current: dict[str, Any] | None


def short(digest: str) -> str:
    """sha256:0123456789ab: enough to tell images apart in one line."""
    return digest[: len("sha256:") + 12] if digest else "no digest"


def digests(image: dict[str, Any] | None) -> set[str]:
    if not image:
        return set()
    found = {str(image.get("Digest") or "")}
    found |= {str(d).rsplit("@", 1)[-1] for d in image.get("RepoDigests") or ()}
    return found - {""}


def judge_one(r: Running) -> tuple[Status, str, str]:
    if r.inspect is None:
        return (
            Status.FAIL,
            f"{r.container}: no such container",
            "`liminati status`; `sudo liminati install` starts it",
        )
    running_id = str(r.inspect.get("Image") or "")
    digest = str((r.image or {}).get("Digest") or r.inspect.get("ImageDigest") or "")
    if "@sha256:" in r.ref:
        pinned = r.ref.rsplit("@", 1)[1]
        if pinned in digests(r.image) | {str(r.inspect.get("ImageDigest") or "")}:
            return Status.OK, f"{r.container} {short(pinned)} (pinned)", ""
        return (
            Status.FAIL,
            f"{r.container} runs {short(digest)}, images.{r.field} pins {short(pinned)}",
            "`sudo liminati install` pulls the pinned image and restarts the unit",
        )
    current_id = str((r.current or {}).get("Id") or "")
    if not current_id:
        return (
            Status.FAIL,
            f"images.{r.field} = {r.ref} is not in {r.user}'s image storage",
            "`sudo liminati install` pulls it",
        )
    if running_id != current_id:
        if str(r.inspect.get("ImageName") or "") == r.ref:
            return (
                Status.WARN,
                f"{r.container} runs an older image than {r.ref} points at now",
                f"`sudo liminati restart {r.container}` starts the newer one",
            )
        return (
            Status.FAIL,
            f"{r.container} runs {r.inspect.get('ImageName') or short(digest)}, "
            f"not images.{r.field} = {r.ref}",
            "`sudo liminati install` restarts it with the configured image",
        )
    return Status.OK, f"{r.container} {short(digest)}", ""


def judge_images(found: list[Running]) -> Check:
    verdicts = [judge_one(r) for r in found]
    status = worst(s for s, _, _ in verdicts)
    if status is Status.OK:
        tagged = [r for r in found if "@sha256:" not in r.ref]
        note = "; by tag, not digest" if tagged else ""
        return Check(NAME, status, "as configured: " + ", ".join(t for _, t, _ in verdicts) + note)
    bad = [(t, h) for s, t, h in verdicts if s is not Status.OK]
    return Check(
        NAME, status, "; ".join(t for t, _ in bad), "; ".join(dict.fromkeys(h for _, h in bad))
    )


def expected(config: Config) -> list[tuple[str, str, str, str]]:
    """(container, user, images field, reference) for every container liminati runs."""
    users, images = config.users, config.images
    out = [(m.unit, users.vllm.name, "vllm", images.vllm) for m in config.models]
    out += [
        ("open-webui", users.webui.name, "webui", images.webui),
        ("nginx-proxy", users.nginx.name, "nginx", images.nginx),
        ("dnsmasq", users.dnsmasq.name, "dnsmasq", images.dnsmasq),
        ("dnsmasq-admin", users.dnsmasq.name, "dnsadmin", images.dnsadmin),
    ]
    return out


def _inspect(executor: Executor, user: str, kind: str, what: str) -> dict[str, Any] | None:
    result = executor.user_command(user, ["podman", kind, "inspect", what])
    if not result.ok:
        return None
    try:
        data = json.loads(result.stdout)
    except ValueError:
        return None
    return data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None


def check_images(executor: Executor, config: Config) -> Check:
    found = []
    for container, user, field, ref in expected(config):
        inspect = _inspect(executor, user, "container", container)
        image = current = None
        if inspect is not None and inspect.get("Image"):
            image = _inspect(executor, user, "image", str(inspect["Image"]))
        if "@sha256:" not in ref:
            current = _inspect(executor, user, "image", ref)
        found.append(Running(container, user, field, ref, inspect, image, current))
    return judge_images(found)
