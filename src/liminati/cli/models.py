"""`liminati model`: list, show, pull, switch and remove the models vLLM serves."""

from __future__ import annotations

import os
import sys

import click

from liminati import output
from liminati.apply.models import (
    cached_models,
    clear_token,
    has_token,
    preflight_switch,
    pull_model,
    read_state,
    remove_cached,
    served_models,
    set_token,
    show_model,
    switch_model,
)
from liminati.cli.main import Context, _require_root, converge, host_options
from liminati.config import Config
from liminati.errors import ExitCode, UsageError
from liminati.layout import Layout
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

    def run_install(config: Config) -> None:
        switched = Context(x, config, ctx.env, declared=declared, config_file=ctx.config_file)
        converge(switched, force=False, start=True)

    # the whole switch under the install lock: no `install` (or other switch) in between
    with x.lock(Layout(ctx.config).lock):
        plan = preflight_switch(x, ctx.config, slot, weights, strategy or "auto")
        output.info(f"Switching {slot.name} (alias {slot.served_name}): {slot.model} -> {weights}")
        for note in plan.notes:
            output.info(f"  {note}")
        output.info(f"  strategy: {plan.strategy}")
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


@model.command("pull", epilog="""
\b
Examples:
  sudo liminati model pull Qwen/Qwen2.5-7B-Instruct
  sudo liminati model pull meta-llama/Llama-3.1-8B-Instruct --revision main
  sudo HF_ENDPOINT=https://hf-mirror.example.internal liminati model pull org/model

\b
Runs the vLLM image's own huggingface_hub as vllm-user, into vllm-user's cache, with its
progress bars. Run it again to resume an interrupted download. Gated models need a token:
`liminati model token set` (never an argument or an environment line of a unit).
""")  # fmt: skip
@host_options
@click.argument("repo", metavar="MODEL")
@click.option("--revision", default="", metavar="REV", help="branch, tag or commit [default: main]")
def model_pull(ctx: Context, repo: str, revision: str) -> int:
    """Download MODEL (a Hugging Face id) into vllm-user's cache."""
    _require_root(ctx.executor)
    if ctx.executor.staged:
        raise UsageError("a staged install cannot download", hint="run it on the host")
    endpoint = os.environ.get("HF_ENDPOINT", "")
    where = f" from {endpoint}" if endpoint else ""
    output.info(f"Pulling {repo}{where} into {ctx.config.users.vllm.name}'s cache...")
    pull_model(ctx.executor, ctx.config, repo, revision, endpoint)
    output.info(f"Done: {repo} is cached (`liminati model list`).")
    return ExitCode.OK


@model.group("token", epilog="""
\b
Examples:
  sudo liminati model token set < hf-token.txt
  sudo liminati model token status
  sudo liminati model token clear
""")  # fmt: skip
def token() -> None:
    """The Hugging Face token for gated models (a 0600 file of vllm-user; never printed)."""


@token.command("set", epilog="""
\b
Examples:
  sudo liminati model token set < hf-token.txt
  sudo liminati model token set          (asks, input hidden)
""")  # fmt: skip
@host_options
def token_set(ctx: Context) -> int:
    """Read the token from standard input (hidden when typed) and keep it for `model pull`."""
    _require_root(ctx.executor)
    stdin = sys.stdin
    if stdin.isatty():
        value = str(click.prompt("Hugging Face token", hide_input=True))
    else:
        value = stdin.read()
    set_token(ctx.executor, ctx.config, value)
    output.info(f"Token saved for {ctx.config.users.vllm.name} (readable by it and root only).")
    return ExitCode.OK


@token.command("status", epilog="""
\b
Examples:
  sudo liminati model token status
""")  # fmt: skip
@host_options
def token_status(ctx: Context) -> int:
    """Whether a token is set (exit 4 when not)."""
    _require_root(ctx.executor)
    if has_token(ctx.executor, ctx.config):
        output.data("a Hugging Face token is set")
        return ExitCode.OK
    output.data("no Hugging Face token is set")
    return ExitCode.CHECKS_FAILED


@token.command("clear", epilog="""
\b
Examples:
  sudo liminati model token clear
""")  # fmt: skip
@host_options
def token_clear(ctx: Context) -> int:
    """Forget the token."""
    _require_root(ctx.executor)
    gone = clear_token(ctx.executor, ctx.config)
    output.info("Token removed." if gone else "No token was set.")
    return ExitCode.OK
