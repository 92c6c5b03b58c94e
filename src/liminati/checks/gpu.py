"""The NVIDIA CDI specification podman reads for `nvidia.com/gpu=...`: present, and made for
the driver that runs now (a driver upgrade without `nvidia-ctk cdi generate` leaves a spec that
mounts libraries which no longer exist, and vLLM's container fails to start)."""

from __future__ import annotations

import re
from collections.abc import Sequence

from liminati.apply.preflight import CDI_SPECS
from liminati.checks.model import Check, fail, ok, skip, warn
from liminati.config import Config
from liminati.executor import Executor, RunResult

NAME = "gpu"
#: the driver's user-space libraries carry its version in their file names, and the spec
#: lists them as mounts (hostPath/containerPath) whatever its format (YAML or JSON)
_DRIVER_LIB = re.compile(r"lib(?:cuda|nvidia-ml|nvidia-ptxjitcompiler)\.so\.(\d+\.\d+(?:\.\d+)?)")
GENERATE = f"`sudo nvidia-ctk cdi generate --output={CDI_SPECS[0]}`"


def spec_driver_versions(text: str) -> set[str]:
    return set(_DRIVER_LIB.findall(text))


def judge_gpu(
    gpu_units: Sequence[str],
    smi: RunResult | None,
    specs: dict[str, str],
) -> Check:
    """`smi`: `nvidia-smi --query-gpu=driver_version` (None: not installed); `specs`: path ->
    text of every CDI specification found."""
    if not gpu_units:
        return skip(NAME, 'no model uses a GPU (gpus = "none")')
    units = ", ".join(gpu_units)
    if smi is None:
        return fail(
            NAME,
            f"{units} asks for a GPU, but nvidia-smi is not installed",
            'install the NVIDIA driver, or set gpus = "none" for a CPU build of vLLM',
        )
    if not smi.ok:
        said = (smi.stderr or smi.stdout).strip().splitlines()
        return fail(
            NAME,
            f"nvidia-smi failed: {said[-1] if said else smi.returncode}",
            "the NVIDIA driver is not loaded: `nvidia-smi`, `dmesg | grep -i nvrm`",
        )
    running = sorted({line.strip() for line in smi.stdout.splitlines() if line.strip()})
    if not running:
        return fail(NAME, "nvidia-smi lists no GPU", "`nvidia-smi -L`")
    driver = ", ".join(running)
    if not specs:
        return fail(
            NAME,
            f"driver {driver}, but no CDI specification ({CDI_SPECS[0]})",
            f"install the NVIDIA container toolkit, then {GENERATE}",
        )
    path, text = next(iter(specs.items()))
    in_spec = spec_driver_versions(text)
    if not in_spec:
        return warn(
            NAME,
            f"driver {driver}; {path} names no driver library version",
            f"regenerate it: {GENERATE}",
        )
    if not set(running) <= in_spec:
        return fail(
            NAME,
            f"{path} was made for driver {', '.join(sorted(in_spec))}, the running driver is "
            f"{driver}",
            f"regenerate it after every driver upgrade: {GENERATE}, then "
            f"`sudo liminati restart {gpu_units[0]}`",
        )
    return ok(NAME, f"{path} matches driver {driver}")


def check_gpu(executor: Executor, config: Config) -> Check:
    gpu_units = [m.unit for m in config.models if m.gpus != "none"]
    smi: RunResult | None = None
    specs: dict[str, str] = {}
    if gpu_units:
        path = executor.which("nvidia-smi")
        if path is not None:
            smi = executor.run_tool(
                [path, "--query-gpu=driver_version", "--format=csv,noheader"], timeout=30
            )
        for spec in CDI_SPECS:
            raw = executor.read(spec)
            if raw is not None:
                specs[spec] = raw.decode(errors="replace")
    return judge_gpu(gpu_units, smi, specs)
