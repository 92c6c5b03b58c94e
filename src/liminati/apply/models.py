"""`liminati model`: what is served and cached, and the health-gated switch with rollback.

A switch never leaves a slot without a model that answers:

* overlap (the default when the model runs on the CPU, or with --overlap): the new model starts
  as the slot's standby unit on its standby port while the old one keeps serving; once vLLM's
  /health answers and it serves the slot's alias with the new weights, the switch is recorded
  and the main unit restarts with them. nginx sends the slot's requests to the standby while the
  main unit is down (the upstream lists it as `backup`). Then the standby stops. If the standby
  never becomes healthy, it is removed and nothing else changed.
* replace (GPU models: two copies rarely fit one GPU): the main unit stops, liminati waits
  until its GPU memory is released, starts the new model and gates on /health; if that fails it
  puts the last model that worked back the same way and says why, with the tail of the log.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from liminati.apply.services import Service, journal_argv
from liminati.config import Config, Model
from liminati.errors import HostError, LiminatiError, UsageError
from liminati.executor import Executor
from liminati.layout import Layout
from liminati.plan.models import (
    CONTAINER_HF_HOME,
    GIB,
    ModelsState,
    Switched,
    effective,
    estimate_fit,
    host_path_of,
    is_repo_id,
    repo_folder,
    repo_from_folder,
    with_model,
)
from liminati.render.ini import serialize
from liminati.render.quadlet import build_vllm

Progress = Callable[[str], None]
#: converge the host to this (effective) config, as `liminati install` does
Converge = Callable[[Config], None]

#: a model that is not cached is downloaded by vLLM at start: leave at least this much free
MIN_FREE_FOR_DOWNLOAD = 20 * GIB


def models_state_path(config: Config) -> PurePosixPath:
    return Layout(config).state_dir / "models.json"


def read_state(executor: Executor, config: Config) -> ModelsState:
    return ModelsState.parse(executor.read(models_state_path(config)))


def write_state(executor: Executor, config: Config, state: ModelsState) -> None:
    executor.write_file(models_state_path(config), state.dump(), 0o600, "root", "root")


# --- what is cached and served --------------------------------------------------------------------


def _size(path: Path) -> int:
    """Bytes on disk under path (hard links and symlinks counted once: the HF cache links
    snapshots to blobs)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    if not path.exists():
        return 0
    for p in [path, *path.rglob("*")]:
        try:
            st = p.lstat()
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen or p.is_symlink():
            continue
        seen.add((st.st_dev, st.st_ino))
        total += st.st_blocks * 512 if p.is_file() else 0
    return total


def _weights_dir(executor: Executor, config: Config, model: str) -> Path | None:
    """The host folder holding `model`'s config.json, or None when it is not in the cache."""
    hf_cache = Layout(config).hf_cache
    if is_repo_id(model):
        snapshots = executor.host_path(hf_cache / "hub" / repo_folder(model) / "snapshots")
        found = sorted(snapshots.glob("*/config.json")) if snapshots.is_dir() else []
        return found[-1].parent if found else None
    inside = host_path_of(model, hf_cache)
    if inside is not None and executor.host_path(inside / "config.json").is_file():
        return executor.host_path(inside)
    return None


def cached_models(executor: Executor, config: Config) -> list[dict[str, Any]]:
    """Every model in vllm-user's Hugging Face cache, its size and the slots serving it."""
    hub = executor.host_path(Layout(config).hf_cache / "hub")
    out = []
    if hub.is_dir():
        for folder in sorted(hub.iterdir()):
            repo = repo_from_folder(folder.name)
            if repo is None:
                continue
            used = [m.name for m in config.models if m.model == repo]
            out.append({"model": repo, "bytes": _size(folder), "served_by": used})
    return out


def _unit_state(executor: Executor, config: Config, unit: str) -> str:
    if executor.staged or executor.user(config.users.vllm.name) is None:
        return "not running"
    shown = executor.systemctl_user(
        config.users.vllm.name, "show", "-p", "ActiveState", f"{unit}.service", check=False
    )
    return shown.stdout.strip().removeprefix("ActiveState=") or "unknown"


def served_models(executor: Executor, config: Config, state: ModelsState) -> list[dict[str, Any]]:
    out = []
    for m in config.models:
        switched = state.slots.get(m.name)
        out.append(
            {
                "name": m.name,
                "alias": m.served_name,
                "model": m.model,
                "unit": f"{m.unit}.service",
                "port": m.port,
                "gpus": m.gpus,
                "state": _unit_state(executor, config, m.unit),
                "previous": switched.previous if switched and switched.model == m.model else "",
                "cached": _weights_dir(executor, config, m.model) is not None,
            }
        )
    return out


def show_model(executor: Executor, config: Config, state: ModelsState, name: str) -> dict[str, Any]:
    """One served slot (by name, alias or unit) or one cached model (by id), in detail."""
    for entry in served_models(executor, config, state):
        if name in (entry["name"], entry["alias"], entry["unit"].removesuffix(".service")):
            weights = _weights_dir(executor, config, entry["model"])
            entry["weights_dir"] = str(weights) if weights else ""
            entry["config"] = _model_config(weights)
            return entry
    for entry in cached_models(executor, config):
        if entry["model"] == name:
            weights = _weights_dir(executor, config, name)
            entry["config"] = _model_config(weights)
            return entry
    raise UsageError(f"no served or cached model named {name!r}", hint="liminati model list")


def _model_config(weights: Path | None) -> dict[str, Any]:
    if weights is None:
        return {}
    try:
        data: dict[str, Any] = json.loads((weights / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    keys = ("architectures", "model_type", "num_hidden_layers", "hidden_size",
            "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
            "torch_dtype")  # fmt: skip
    return {k: data[k] for k in keys if k in data}


# --- switch ---------------------------------------------------------------------------------------


@dataclass
class SwitchPlan:
    slot: Model
    new: Model
    strategy: str
    notes: list[str]


def preflight_switch(
    executor: Executor, config: Config, slot: Model, weights: str, strategy: str
) -> SwitchPlan:
    """Everything that can be known before anything stops: the new model's name, its place in
    the cache, the disk, and whether weights plus KV cache fit the GPU memory."""
    try:
        new = with_model(slot, weights)
    except ValueError as exc:
        raise UsageError(
            f"model {weights!r}: {exc.errors()[0]['msg'] if hasattr(exc, 'errors') else exc}",
            hint="a Hugging Face id like Qwen/Qwen2.5-7B-Instruct or an absolute path",
        ) from None
    if new.model == slot.model:
        raise UsageError(
            f"{slot.name} already serves {weights}", hint="liminati model list shows what runs"
        )
    notes: list[str] = []
    weights_dir = _weights_dir(executor, config, new.model)
    hf_cache = executor.host_path(Layout(config).hf_cache)
    if weights_dir is not None:
        notes.append(f"{new.model} is in the cache ({_size(weights_dir) / GIB:.1f} GiB)")
    elif is_repo_id(new.model):
        free = _free(hf_cache)
        if free < MIN_FREE_FOR_DOWNLOAD:
            raise HostError(
                f"{new.model} is not in the cache and only {free / GIB:.1f} GiB are free "
                f"in {Layout(config).hf_cache}",
                hint="free some space (liminati model list shows cached models) or pull it on "
                "another disk",
            )
        notes.append(f"{new.model} is not cached: vLLM downloads it at start")
    elif host_path_of(new.model, Layout(config).hf_cache) is not None:
        raise UsageError(
            f"{new.model}: no config.json there in vllm-user's cache",
            hint=f"put the model's files under {Layout(config).hf_cache} first",
        )
    else:
        notes.append(f"{new.model} is a path inside the vLLM image: not checked before start")
    if new.gpus != "none":
        fit = _fit(executor, new, weights_dir)
        if fit is not None and not fit.fits:
            raise UsageError(
                f"{new.model} does not fit: {fit.describe()}",
                hint="lower models[].max_model_len, give it more GPUs (gpus, "
                "tensor_parallel_size) or pick a smaller or quantized model",
            )
        if fit is not None:
            notes.append("fits: " + fit.describe())
    if strategy == "auto":
        strategy = "overlap" if new.gpus == "none" else "replace"
    return SwitchPlan(slot, new, strategy, notes)


def _free(path: Path) -> int:
    import os

    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    st = os.statvfs(probe)
    return st.f_bavail * st.f_frsize


def _gpu_memory(executor: Executor, used: bool = False) -> list[int] | None:
    """Total (or used) memory of each GPU in bytes, by index; None without nvidia-smi."""
    if executor.which("nvidia-smi") is None:
        return None
    field = "memory.used" if used else "memory.total"
    got = executor.run_tool(
        ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits"], timeout=30
    )
    if not got.ok:
        return None
    return [int(float(line)) * 1024**2 for line in got.stdout.split() if line.strip()]


def _fit(executor: Executor, model: Model, weights_dir: Path | None) -> Any:
    memory = _gpu_memory(executor)
    if memory is None or weights_dir is None:
        return None
    files = [*weights_dir.glob("*.safetensors"), *weights_dir.glob("*.bin")]
    weights = sum(f.stat().st_size for f in files)
    try:
        model_config = json.loads((weights_dir / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return estimate_fit(model, weights, model_config, memory)


def _internal_key(executor: Executor, config: Config) -> str:
    raw = executor.read(Layout(config).secrets_dir / "vllm-api-key")
    return raw.decode().strip() if raw else ""


def probe(port: int, key: str, timeout: float = 5) -> tuple[bool, list[dict[str, Any]]]:
    """(vLLM's /health answers 200, what its /v1/models lists) on 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=timeout) as r:
            healthy = r.status == 200
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            listed: list[dict[str, Any]] = json.loads(r.read())["data"]
        return healthy, listed
    except (OSError, ValueError, KeyError):
        return False, []


def wait_serving(
    executor: Executor,
    config: Config,
    unit: str,
    port: int,
    model: Model,
    timeout: float,
    progress: Progress,
) -> str:
    """Wait until the unit serves model (alias and weights) on port: "" or why it never did."""
    user, key = config.users.vllm.name, _internal_key(executor, config)
    start = time.monotonic()
    last_note = start
    while True:
        shown = executor.systemctl_user(
            user, "show", "-p", "ActiveState,SubState,NRestarts", f"{unit}.service", check=False
        )
        props = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
        if props.get("ActiveState") in ("failed", "inactive"):
            return f"{unit} stopped ({props.get('SubState', '?')})"
        if props.get("NRestarts", "0") not in ("", "0"):
            return f"{unit} crashed and was restarted {props['NRestarts']} time(s)"
        healthy, listed = probe(port, key)
        if healthy:
            mine = [m for m in listed if m.get("id") == model.served_name]
            if mine and mine[0].get("root") in (model.model, None):
                return ""
            if mine:
                return f"{unit} serves {mine[0].get('root')}, not {model.model}"
        now = time.monotonic()
        if now - start > timeout:
            return f"{unit} was not healthy after {timeout:.0f} s"
        if now - last_note >= 30:
            progress(f"  still loading {model.model} ({now - start:.0f} s)...")
            last_note = now
        time.sleep(2)


def log_tail(executor: Executor, config: Config, unit: str, lines: int = 15) -> str:
    user = executor.user(config.users.vllm.name)
    if user is None:
        return ""
    service = Service(unit, config.users.vllm.name, f"{unit}.service")
    got = executor.run_tool(journal_argv(executor, service, False, lines), timeout=30)
    return got.stdout.strip()


def _standby(executor: Executor, config: Config, new: Model, *, start: bool) -> None:
    """Write and start, or stop and remove, the slot's standby unit."""
    user = config.users.vllm
    spec = build_vllm(config, Layout(config), new, standby=True)
    path = Layout.quadlet_dir(user) / f"{spec.name}.container"
    if start:
        executor.write_file(path, serialize(spec).encode(), 0o644, user.name, user.name)
        executor.systemctl_user(user.name, "daemon-reload")
        executor.systemctl_user(user.name, "start", f"{spec.name}.service", check=False)
    else:
        executor.systemctl_user(user.name, "stop", f"{spec.name}.service", check=False)
        executor.remove(path)
        executor.systemctl_user(user.name, "daemon-reload")
        executor.systemctl_user(user.name, "reset-failed", f"{spec.name}.service", check=False)


def wait_gpu_released(executor: Executor, model: Model, progress: Progress) -> None:
    """After a stop: wait until the GPUs the model used hold under 10% of their memory."""
    total = _gpu_memory(executor)
    if total is None:
        return
    indexes = range(len(total)) if model.gpus == "all" else [int(g) for g in model.gpus.split(",")]
    deadline = time.monotonic() + 180
    while True:
        used = _gpu_memory(executor, used=True) or []
        busy = [i for i in indexes if i < len(used) and used[i] > total[i] // 10]
        if not busy:
            return
        if time.monotonic() > deadline:
            raise HostError(
                f"GPU memory of GPU {', '.join(map(str, busy))} was not released 180 s after "
                f"{model.unit} stopped",
                hint="nvidia-smi shows which process holds it; stop it, then switch again",
            )
        progress("  waiting for the GPU memory to be released...")
        time.sleep(3)


def switch_model(
    executor: Executor,
    declared: Config,
    plan: SwitchPlan,
    *,
    now: dt.datetime,
    converge: Converge,
    timeout: float,
    progress: Progress,
) -> None:
    """Carry out a preflighted switch (see the module docstring); raise HostError after a
    rollback, saying why."""
    state = read_state(executor, declared)
    config = effective(declared, state)
    slot, new = plan.slot, plan.new
    declared_model = next(m.model for m in declared.models if m.name == slot.name)
    before = state.slots.get(slot.name)

    def record(model: Model, previous: str) -> None:
        if model.model == declared_model:
            state.slots.pop(slot.name, None)
        else:
            state.slots[slot.name] = Switched(
                model.model, declared_model, previous, now.isoformat()
            )
        write_state(executor, declared, state)

    def restore() -> None:
        if before is None:
            state.slots.pop(slot.name, None)
        else:
            state.slots[slot.name] = before
        write_state(executor, declared, state)

    if plan.strategy == "overlap":
        progress(f"starting {new.model} as {slot.standby_unit} on 127.0.0.1:{slot.standby}...")
        _standby(executor, config, new, start=True)
        why = wait_serving(executor, config, slot.standby_unit, slot.standby, new, timeout,
                           progress)  # fmt: skip
        if why:
            tail = log_tail(executor, config, slot.standby_unit)
            _standby(executor, config, new, start=False)
            raise HostError(
                f"{new.model} did not start: {why}. Nothing changed: {slot.name} still serves "
                f"{slot.model}",
                hint=f"the end of {slot.standby_unit}'s log:\n{tail}" if tail else "",
            )
        progress(f"{new.model} is healthy; {slot.unit} restarts with it (the standby serves)")
        record(new, slot.model)
        tail = ""
        try:
            converge(effective(declared, state))
            why = wait_serving(executor, config, slot.unit, slot.port, new, timeout, progress)
        except LiminatiError as exc:
            why = exc.message
        if why:
            tail = log_tail(executor, config, slot.unit)
            progress(f"{slot.unit} failed with {new.model} ({why}); rolling back...")
            restore()
            converge(effective(declared, state))
            wait_serving(executor, config, slot.unit, slot.port, slot, timeout, progress)
        _standby(executor, config, new, start=False)
        if why:
            raise HostError(
                f"{slot.unit} did not come back with {new.model}: {why}; rolled back to "
                f"{slot.model}",
                hint=f"the end of {slot.unit}'s log:\n{tail}" if tail else "",
            )
        return

    # replace: one copy at a time
    progress(f"stopping {slot.unit} ({slot.model})...")
    executor.systemctl_user(config.users.vllm.name, "stop", f"{slot.unit}.service")
    wait_gpu_released(executor, slot, progress)
    record(new, slot.model)
    progress(f"starting {slot.unit} with {new.model}...")
    converge(effective(declared, state))
    why = wait_serving(executor, config, slot.unit, slot.port, new, timeout, progress)
    if not why:
        return
    tail = log_tail(executor, config, slot.unit)
    progress(f"{new.model} failed ({why}); rolling back to {slot.model}...")
    executor.systemctl_user(config.users.vllm.name, "stop", f"{slot.unit}.service")
    wait_gpu_released(executor, new, progress)
    restore()
    converge(effective(declared, state))
    back = wait_serving(executor, config, slot.unit, slot.port, slot, timeout, progress)
    status = f"{slot.model} serves again" if not back else f"and {slot.model} failed too: {back}"
    raise HostError(
        f"{new.model} did not start: {why}; rolled back: {status}",
        hint=f"the end of {slot.unit}'s log:\n{tail}" if tail else "",
    )


# --- remove ---------------------------------------------------------------------------------------


def remove_cached(executor: Executor, config: Config, name: str, *, purge: bool) -> int:
    """Delete a cached model that no slot serves; returns the bytes freed."""
    for m in config.models:
        if name in (m.name, m.served_name, m.unit):
            raise UsageError(
                f"{name} is a served model ({m.unit}, {m.model})",
                hint="take its [[models]] entry out of the config and run `liminati install` "
                "(its unit stops and its files go); then `liminati model remove "
                f"{m.model} --purge` frees its cache",
            )
    found = [c for c in cached_models(executor, config) if c["model"] == name]
    if not found:
        raise UsageError(f"{name} is not in vllm-user's cache", hint="liminati model list")
    if found[0]["served_by"]:
        slots = ", ".join(found[0]["served_by"])
        raise UsageError(
            f"{name} is served by {slots}", hint="switch that model to other weights first"
        )
    if not purge:
        raise UsageError(
            f"removing {name} deletes its {found[0]['bytes'] / GIB:.2f} GiB from the cache",
            hint="add --purge to delete it",
        )
    executor.remove_tree(Layout(config).hf_cache / "hub" / repo_folder(name))
    freed: int = found[0]["bytes"]
    return freed


# --- pull and the Hugging Face token -------------------------------------------------------------

#: run inside the vLLM image, which has huggingface_hub: downloads into HF_HOME, resumes what an
#: interrupted pull left (huggingface_hub keeps partial files), prints the snapshot folder
PULL_SCRIPT = (
    "import sys; from huggingface_hub import snapshot_download; "
    "print('snapshot:', snapshot_download(sys.argv[1], revision=sys.argv[2] or None))"
)
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{8,256}$")


def token_path(config: Config) -> PurePosixPath:
    """vllm-user's Hugging Face token: an env file only that user (and root) can read."""
    return Layout.private_dir(config.users.vllm) / "hf-token.env"


def set_token(executor: Executor, config: Config, token: str) -> None:
    token = token.strip()
    if not _TOKEN.match(token):
        raise UsageError(
            "that does not look like a Hugging Face token",
            hint="copy it from https://huggingface.co/settings/tokens (hf_...) and paste it "
            "on standard input",
        )
    user = config.users.vllm.name
    if executor.user(user) is None and not executor.staged:
        raise UsageError(f"{user} does not exist yet", hint="run `liminati install` first")
    executor.write_file(token_path(config), f"HF_TOKEN={token}\n".encode(), 0o600, user, user)


def clear_token(executor: Executor, config: Config) -> bool:
    present = executor.stat(token_path(config)) is not None
    executor.remove(token_path(config))
    return present


def has_token(executor: Executor, config: Config) -> bool:
    return executor.stat(token_path(config)) is not None


def pull_argv(config: Config, repo: str, revision: str, endpoint: str, token: bool) -> list[str]:
    """podman run, as vllm-user, of the vLLM image's own huggingface_hub. No secret in it: the
    token travels in an env file."""
    layout = Layout(config)
    network = "pasta"
    where = urllib.parse.urlsplit(endpoint) if endpoint else None
    if where is not None and where.hostname in ("127.0.0.1", "localhost", "::1"):
        # a mirror on the host's loopback: pasta forwards that port into the container
        network += f":-T,{where.port or (443 if where.scheme == 'https' else 80)}"
    argv = [
        "podman", "run", "--rm", f"--pull={config.images.pull}", "--entrypoint", "python3",
        f"--network={network}",
        "-v", f"{layout.hf_cache}:{CONTAINER_HF_HOME}:z",
        "-e", f"HF_HOME={CONTAINER_HF_HOME}",
        "-e", "HF_HUB_OFFLINE=0", "-e", "TRANSFORMERS_OFFLINE=0",
        "-e", "HF_HUB_DISABLE_TELEMETRY=1",
    ]  # fmt: skip
    if endpoint:
        argv += ["-e", f"HF_ENDPOINT={endpoint}"]
    if token:
        argv += ["--env-file", str(token_path(config))]
    return [*argv, config.images.vllm, "-c", PULL_SCRIPT, repo, revision]


def pull_model(executor: Executor, config: Config, repo: str, revision: str, endpoint: str) -> None:
    if not is_repo_id(repo):
        raise UsageError(
            f"{repo} is a path: pull takes a Hugging Face id like Qwen/Qwen2.5-7B-Instruct",
            hint="copy a local model under vllm-user's cache instead",
        )
    try:
        with_model(config.models[0], repo)
    except ValueError:
        raise UsageError(
            f"{repo!r} is not a Hugging Face id", hint="like Qwen/Qwen2.5-7B-Instruct"
        ) from None
    user = config.users.vllm.name
    if executor.user(user) is None:
        raise UsageError(f"{user} does not exist yet", hint="run `liminati install` first")
    argv = pull_argv(config, repo, revision, endpoint, has_token(executor, config))
    try:
        executor.user_stream(user, argv)
    except HostError:
        raise HostError(
            f"pulling {repo} as {user} failed (the output above says why)",
            hint="a gated model needs `liminati model token set` (and its terms accepted on "
            "the Hub); run the same command again to resume an interrupted download",
        ) from None
