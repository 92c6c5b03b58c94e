"""Models as `liminati model` manages them: the switch state, the cache layout, the fit estimate.

Pure: the caller reads the files; nothing here touches the host.

The config's `[[models]]` entries are the slots (one vLLM unit each, its port, GPUs and alias).
`liminati model switch` changes which weights a slot serves without editing the config file: it
records the switch in /var/lib/liminati/models.json, and every later `install` renders the slot
with the switched model. Editing that slot's `model` in the config afterwards wins (the recorded
switch was made against the old value, so it is dropped): the config stays the place a person
changes things by hand.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from liminati.config import Config, Model

VERSION = 1
#: where vLLM's container sees vllm-user's Hugging Face cache (HF_HOME)
CONTAINER_HF_HOME = PurePosixPath("/root/.cache/huggingface")


@dataclass
class Switched:
    """One slot's switch: what it serves now, what the config said then, what it served before."""

    model: str
    config_model: str
    previous: str
    at: str


@dataclass
class ModelsState:
    slots: dict[str, Switched] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes | None) -> ModelsState:
        if not raw:
            return cls()
        data: dict[str, Any] = json.loads(raw)
        return cls({name: Switched(**entry) for name, entry in data.get("slots", {}).items()})

    def dump(self) -> bytes:
        slots = {name: vars(s) for name, s in sorted(self.slots.items())}
        return json.dumps({"version": VERSION, "slots": slots}, indent=2).encode() + b"\n"


def effective(config: Config, state: ModelsState) -> Config:
    """The config with every recorded switch applied (a switch the config has since moved away
    from by hand is ignored)."""
    models = []
    for m in config.models:
        s = state.slots.get(m.name)
        if s is not None and s.config_model == m.model and s.model != m.model:
            m = m.model_copy(update={"model": s.model})
        models.append(m)
    return config.model_copy(update={"models": tuple(models)})


def with_model(model: Model, weights: str) -> Model:
    """`model` serving `weights` instead, validated as if written in the config."""
    return Model.model_validate({**model.model_dump(), "model": weights})


def find_slot(config: Config, name: str | None) -> Model:
    """The slot called `name` (by name or alias); the only one when `name` is None."""
    from liminati.errors import UsageError

    if name is None:
        if len(config.models) == 1:
            return config.models[0]
        raise UsageError(
            "several models are served: say which one to switch",
            hint="add --name " + " or --name ".join(m.name for m in config.models),
        )
    for m in config.models:
        if name in (m.name, m.served_name, m.unit):
            return m
    raise UsageError(
        f"no served model named {name!r}",
        hint="one of: " + ", ".join(m.name for m in config.models) + " (liminati model list)",
    )


# --- the Hugging Face cache ----------------------------------------------------------------------


def is_repo_id(model: str) -> bool:
    return not model.startswith("/")


def repo_folder(repo_id: str) -> str:
    """huggingface_hub's folder name for a model repository: models--org--name."""
    return "models--" + repo_id.replace("/", "--")


def repo_from_folder(folder: str) -> str | None:
    if not folder.startswith("models--"):
        return None
    return folder.removeprefix("models--").replace("--", "/")


def host_path_of(model: str, hf_cache: PurePosixPath) -> PurePosixPath | None:
    """Where the weights of `model` are on the host when it names a folder in the mounted cache
    (an absolute path under the container's HF_HOME); None for paths inside the image."""
    path = PurePosixPath(model)
    if path.is_absolute() and path.is_relative_to(CONTAINER_HF_HOME):
        return hf_cache / path.relative_to(CONTAINER_HF_HOME)
    return None


# --- will it fit? ---------------------------------------------------------------------------------

GIB = 1024**3
#: bytes per element of the KV cache when the config says nothing else (fp16/bf16)
KV_BYTES = 2


@dataclass(frozen=True)
class Fit:
    weights: int
    kv_cache: int
    usable: int

    @property
    def needed(self) -> int:
        return self.weights + self.kv_cache

    @property
    def fits(self) -> bool:
        return self.needed <= self.usable

    def describe(self) -> str:
        return (
            f"weights {self.weights / GIB:.1f} GiB + KV cache for one {''}full-length sequence "
            f"{self.kv_cache / GIB:.1f} GiB = {self.needed / GIB:.1f} GiB; "
            f"usable GPU memory {self.usable / GIB:.1f} GiB"
        )


def kv_cache_bytes(model_config: dict[str, Any], max_model_len: int) -> int:
    """KV cache of one sequence of max_model_len tokens: 2 (K and V) x layers x KV heads x
    head size x tokens x bytes per element. vLLM refuses to start when not even one fits."""
    cfg = model_config.get("text_config", model_config)
    layers = int(cfg.get("num_hidden_layers", 0))
    heads = int(cfg.get("num_attention_heads", 1)) or 1
    kv_heads = int(cfg.get("num_key_value_heads", heads))
    head_dim = int(cfg.get("head_dim") or cfg.get("hidden_size", 0) // heads)
    return 2 * layers * kv_heads * head_dim * max_model_len * KV_BYTES


def gpu_count(model: Model, visible: int) -> int:
    if model.gpus == "all":
        return max(visible, 1)
    return len(model.gpus.split(","))


def estimate_fit(
    model: Model, weights_bytes: int, model_config: dict[str, Any], gpu_memory: list[int]
) -> Fit:
    """Weights plus one full-length sequence of KV cache against the GPU memory vLLM may take
    (gpu_memory_utilization of each GPU the model gets; tensor parallelism splits both)."""
    if model.gpus == "all":
        chosen = gpu_memory
    else:
        wanted = [int(i) for i in model.gpus.split(",")]
        chosen = [gpu_memory[i] for i in wanted if i < len(gpu_memory)]
    per_gpu = min(chosen) if chosen else 0
    usable = math.floor(per_gpu * model.gpu_memory_utilization) * max(model.tensor_parallel_size, 1)
    kv = kv_cache_bytes(model_config, model.max_model_len)
    return Fit(weights=weights_bytes, kv_cache=kv, usable=usable)
