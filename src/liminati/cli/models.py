"""`liminati model`: list, show and switch the models vLLM serves."""

from __future__ import annotations

import click

from liminati import output
from liminati.apply.models import (
    cached_models,
    preflight_switch,
    read_state,
    remove_cached,
    served_models,
    show_model,
    switch_model,
)
from liminati.cli.main import Context, _require_root, converge, host_options
from liminati.config import Config
from liminati.errors import ExitCode, UsageError
from liminati.plan.models import GIB, find_slot


@click.group(
    epilog="""
\b
Examples:
  sudo liminati model list
  sudo liminati model show qwen
  sudo liminati model switch Qwen/Qwen2.5-14B-Instruct
  sudo liminati model switch --name coder /root/.cache/huggingface/local/my-finetune
"""
)
def model() -> None:
    """The models vLLM serves: what runs and is cached, and health-gated switches.

    Each `[[models]]` entry of the config is one vLLM unit with its port, GPUs and the name
    clients ask for (its alias). `switch` changes the weights behind that name and keeps the
    name, so Open WebUI and API clients go on working.
    """


@model.command("list", epilog="""
\b
Examples:
  sudo liminati model list
  sudo liminati model list --json
""")  # fmt: skip
@host_options
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def model_list(ctx: Context, as_json: bool) -> int:
    """Served models (unit, alias, state) and the models in vllm-user's cache (size)."""
    _require_root(ctx.executor)
    state = read_state(ctx.executor, ctx.config)
    served = served_models(ctx.executor, ctx.config, state)
    cached = cached_models(ctx.executor, ctx.config)
    if as_json:
        output.data_json({"served": served, "cached": cached})
        return ExitCode.OK
    output.data(f"{'NAME':<14} {'ALIAS':<24} {'STATE':<12} {'PORT':<6} MODEL")
    for s in served:
        note = f"  (switched from {s['previous']})" if s["previous"] else ""
        output.data(
            f"{s['name']:<14} {s['alias']:<24} {s['state']:<12} {s['port']:<6} {s['model']}{note}"
        )
    output.data("")
    if not cached:
        output.data("cache: empty (vLLM downloads a model into it when it first starts it)")
    for c in cached:
        used = ", ".join(c["served_by"]) or "-"
        output.data(f"cached {c['model']:<48} {c['bytes'] / GIB:7.2f} GiB  served by {used}")
    return ExitCode.OK


@model.command("show", epilog="""
\b
Examples:
  sudo liminati model show qwen
  sudo liminati model show Qwen/Qwen2.5-7B-Instruct --json
""")  # fmt: skip
@host_options
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def model_show(ctx: Context, name: str, as_json: bool) -> int:
    """One served model (by name, alias or unit) or one cached model (by id)."""
    _require_root(ctx.executor)
    found = show_model(ctx.executor, ctx.config, read_state(ctx.executor, ctx.config), name)
    if as_json:
        output.data_json(found)
        return ExitCode.OK
    for key, value in found.items():
        if key == "config":
            for k, v in value.items():
                output.data(f"{'config.' + k:<28} {v}")
        elif key == "bytes":
            output.data(f"{'size':<28} {value / GIB:.2f} GiB")
        else:
            output.data(f"{key:<28} {value}")
    return ExitCode.OK


@model.command("switch", epilog="""
\b
Examples:
  sudo liminati model switch Qwen/Qwen2.5-14B-Instruct
  sudo liminati model switch --name coder Qwen/Qwen2.5-Coder-7B-Instruct --timeout 3600
  sudo liminati model switch --overlap /root/.cache/huggingface/local/my-finetune

\b
The name clients use (the alias) stays; only the weights behind it change. When the new
model does not become healthy, the last model that worked is put back and the command
exits 1 with the reason and the end of the log.
""")  # fmt: skip
@host_options
@click.argument("weights", metavar="MODEL")
@click.option("--name", "slot_name", metavar="NAME",
              help="which served model to switch (needed when several are served)")  # fmt: skip
@click.option("--overlap", "strategy", flag_value="overlap",
              help="start the new model beside the old one first (room for both)")  # fmt: skip
@click.option("--replace", "strategy", flag_value="replace",
              help="stop the old model first (the default on GPUs: one copy fits)")  # fmt: skip
@click.option("--timeout", type=click.IntRange(30, 86400), metavar="SECONDS",
              help="how long it may load [default: vllm.start_timeout_seconds]")  # fmt: skip
def model_switch(
    ctx: Context, weights: str, slot_name: str | None, strategy: str | None, timeout: int | None
) -> int:
    """Serve MODEL (a Hugging Face id or an absolute path) under an existing model's name."""
    x = ctx.executor
    _require_root(x)
    if x.staged:
        raise UsageError(
            "a switch starts and health-checks real units: not possible on a staged install",
            hint="change models[].model in the config and run `liminati install --root DIR`",
        )
    declared = ctx.declared or ctx.config
    slot = find_slot(ctx.config, slot_name)
    plan = preflight_switch(x, ctx.config, slot, weights, strategy or "auto")
    output.info(f"Switching {slot.name} (alias {slot.served_name}): {slot.model} -> {weights}")
    for note in plan.notes:
        output.info(f"  {note}")
    output.info(f"  strategy: {plan.strategy}")

    def run_install(config: Config) -> None:
        converge(Context(x, config, ctx.env, declared=declared), force=False, start=True)

    switch_model(
        x,
        declared,
        plan,
        now=ctx.env.now(),
        converge=run_install,
        timeout=timeout or ctx.config.vllm.start_timeout_seconds,
        progress=output.info,
    )
    output.info(f"Done: {slot.served_name} is served by {weights} ({slot.unit}).")
    return ExitCode.OK


@model.command("remove", epilog="""
\b
Examples:
  sudo liminati model remove Qwen/Qwen2.5-7B-Instruct --purge

\b
A served model is a [[models]] entry of the config: take it out and run `liminati install`
(its unit stops, its files go); then remove its weights from the cache with this command.
""")  # fmt: skip
@host_options
@click.argument("name", metavar="MODEL")
@click.option("--purge", is_flag=True, help="really delete the model's files from the cache")
def model_remove(ctx: Context, name: str, purge: bool) -> int:
    """Delete a cached model that no served model uses from vllm-user's cache."""
    _require_root(ctx.executor)
    freed = remove_cached(ctx.executor, ctx.config, name, purge=purge)
    output.info(f"Removed {name} from the cache ({freed / GIB:.2f} GiB freed).")
    return ExitCode.OK
