"""Models: the switch state and how it applies, the fit estimate, the cache layout, and a model
taken out of the config (its unit and files retired by `install`)."""

from __future__ import annotations

import io
import json
from pathlib import Path, PurePosixPath

import pytest

from clitools import RunCli
from liminati.config import parse_config
from liminati.errors import UsageError
from liminati.plan.models import (
    GIB,
    ModelsState,
    Switched,
    effective,
    estimate_fit,
    find_slot,
    host_path_of,
    kv_cache_bytes,
    repo_folder,
    repo_from_folder,
    with_model,
)

IP = "100.64.0.10"
TWO = """\
[[models]]
name = "qwen"
model = "Qwen/Qwen2.5-7B-Instruct"

[[models]]
name = "llama"
model = "meta-llama/Llama-3.1-8B-Instruct"
port = 8001
gpus = "1"
"""
#: Llama 3.1 8B's config.json, the parts the estimate reads
LLAMA_8B = {
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_size": 4096,
}


def test_a_recorded_switch_applies_until_the_config_moves_away() -> None:
    config = parse_config(TWO, "t", {})
    state = ModelsState(
        {"qwen": Switched("Qwen/Qwen2.5-14B-Instruct", "Qwen/Qwen2.5-7B-Instruct", "x", "t")}
    )
    got = effective(config, state)
    assert [m.model for m in got.models] == [
        "Qwen/Qwen2.5-14B-Instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
    ]
    assert got.models[0].served_name == "qwen" and got.models[0].port == 8000
    # the person edits the slot in the config afterwards: the config wins
    edited = parse_config(TWO.replace("Qwen2.5-7B", "Qwen2.5-3B"), "t", {})
    assert effective(edited, state).models[0].model == "Qwen/Qwen2.5-3B-Instruct"


def test_state_round_trips() -> None:
    state = ModelsState({"qwen": Switched("a/b", "c/d", "c/d", "2026-11-27T00:00:00+00:00")})
    assert ModelsState.parse(state.dump()) == state
    assert ModelsState.parse(None) == ModelsState()


def test_with_model_validates_like_the_config() -> None:
    slot = parse_config(TWO, "t", {}).models[0]
    assert with_model(slot, "/root/.cache/huggingface/local/x").model.endswith("/x")
    with pytest.raises(ValueError, match="Hugging Face id"):
        with_model(slot, "bad model; rm -rf /")


def test_find_slot_by_name_alias_or_unit_and_needs_a_name_when_several() -> None:
    config = parse_config(TWO, "t", {})
    assert find_slot(config, "llama").name == "llama"
    assert find_slot(config, "vllm-llama").name == "llama"
    with pytest.raises(UsageError, match="several models"):
        find_slot(config, None)
    with pytest.raises(UsageError, match="no served model named 'gpt'"):
        find_slot(config, "gpt")


def test_cache_folder_names_match_huggingface_hub() -> None:
    assert repo_folder("Qwen/Qwen2.5-7B-Instruct") == "models--Qwen--Qwen2.5-7B-Instruct"
    assert repo_from_folder("models--Qwen--Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert repo_from_folder("datasets--x--y") is None
    cache = PurePosixPath("/var/lib/vllm/.cache/huggingface")
    assert host_path_of("/root/.cache/huggingface/local/m", cache) == cache / "local/m"
    assert host_path_of("/models/tiny-llama", cache) is None


def test_kv_cache_of_llama_8b_at_16k_tokens_is_2_gib() -> None:
    # 2 x 32 layers x 8 KV heads x 128 x 16384 tokens x 2 bytes
    assert kv_cache_bytes(LLAMA_8B, 16384) == 2 * GIB


def test_fit_refuses_what_clearly_does_not_fit_and_passes_what_does() -> None:
    slot = parse_config(TWO, "t", {}).models[1]  # gpus = "1", utilisation 0.9
    gpus = [80 * GIB, 24 * GIB]
    fit = estimate_fit(slot, 16 * GIB, LLAMA_8B, gpus)
    assert fit.usable == int(24 * GIB * 0.9) and fit.fits, fit.describe()
    too_big = estimate_fit(slot, 30 * GIB, LLAMA_8B, gpus)
    assert not too_big.fits
    assert "weights 30.0 GiB" in too_big.describe() and "21.6 GiB" in too_big.describe()


def test_a_model_taken_out_of_the_config_is_retired(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    two, one = tmp_path / "two.toml", tmp_path / "one.toml"
    two.write_text(TWO)
    one.write_text(TWO.split('[[models]]\nname = "llama"')[0])
    args = ("--root", str(root), "--listen-ip", IP)
    code, _, err = run_cli("install", *args, "--config", str(two))
    assert code == 0, err
    quadlet = root / "var/lib/vllm/.config/containers/systemd/vllm-llama.container"
    env = root / "var/lib/vllm/.config/liminati/vllm-llama.env"
    assert quadlet.is_file() and env.is_file()

    code, out, err = run_cli("plan", *args, "--config", str(one), "--json", "--detailed-exitcode")
    assert code == 3, err
    removed = {
        (a["kind"], a["target"]) for a in json.loads(out)["actions"] if a["change"] == "remove"
    }
    assert removed == {
        ("unit", "vllm-user/vllm-llama.service"),
        ("file", "/var/lib/vllm/.config/containers/systemd/vllm-llama.container"),
        ("file", "/var/lib/vllm/.config/liminati/vllm-llama.env"),
        # one model left: no routing on "model" any more
        ("file", "/var/lib/nginx-proxy/snippets/liminati-router.js"),
    }, removed

    code, _, err = run_cli("install", *args, "--config", str(one))
    assert code == 0, err
    assert "to remove" in err and "stopped vllm-llama.service" in err, err
    assert not quadlet.exists() and not env.exists()
    staged = (root / ".liminati-staged-commands.sh").read_text()
    assert "stop vllm-llama.service" in staged
    manifest = json.loads((root / "var/lib/liminati/manifest.json").read_text())
    assert not any("vllm-llama" in k for k in [*manifest["files"], *manifest["units"]])
    # a backup of what was removed, and then nothing left to do
    assert list((root / "var/lib/liminati/backups").rglob("vllm-llama.container"))
    code, _, err = run_cli("install", *args, "--config", str(one))
    assert code == 0 and "Nothing to change" in err, err


def test_a_retired_file_edited_by_hand_is_kept(run_cli: RunCli, tmp_path: Path) -> None:
    root = tmp_path / "root"
    two, one = tmp_path / "two.toml", tmp_path / "one.toml"
    two.write_text(TWO)
    one.write_text(TWO.split('[[models]]\nname = "llama"')[0])
    args = ("--root", str(root), "--listen-ip", IP)
    assert run_cli("install", *args, "--config", str(two))[0] == 0
    quadlet = root / "var/lib/vllm/.config/containers/systemd/vllm-llama.container"
    quadlet.write_text(quadlet.read_text() + "# mine\n")
    code, _, err = run_cli("install", *args, "--config", str(one))
    assert code == 0, err
    assert quadlet.read_text().endswith("# mine\n")
    assert "edited by hand" in err


def test_remove_deletes_an_unused_cached_model_only_with_purge(
    run_cli: RunCli, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    args = ("--root", str(root), "--listen-ip", IP)
    assert run_cli("install", *args)[0] == 0
    hub = root / "var/lib/vllm/.cache/huggingface/hub"
    for repo in ("models--Qwen--Qwen2.5-7B-Instruct", "models--org--old"):
        snap = hub / repo / "snapshots/abc"
        snap.mkdir(parents=True)
        (snap / "config.json").write_text("{}")
        (snap / "model.safetensors").write_bytes(b"\0" * 65536)
    code, out, err = run_cli("model", "list", "--json", *args)
    assert code == 0, err
    cached = {c["model"]: c["served_by"] for c in json.loads(out)["cached"]}
    assert cached == {"Qwen/Qwen2.5-7B-Instruct": ["qwen"], "org/old": []}
    code, _, err = run_cli("model", "remove", "org/old", *args)
    assert code == 2 and "add --purge" in err and (hub / "models--org--old").is_dir()
    code, _, err = run_cli("model", "remove", "Qwen/Qwen2.5-7B-Instruct", "--purge", *args)
    assert code == 2 and "served by qwen" in err
    code, _, err = run_cli("model", "remove", "qwen", "--purge", *args)
    assert code == 2 and "take its [[models]] entry out" in err
    code, _, err = run_cli("model", "remove", "org/old", "--purge", *args)
    assert code == 0, err
    assert (
        not (hub / "models--org--old").exists()
        and (hub / "models--Qwen--Qwen2.5-7B-Instruct").is_dir()
    )


def test_pull_runs_the_image_as_the_user_with_no_secret_in_argv() -> None:
    from liminati.apply.models import pull_argv

    config = parse_config("", "t", {})
    argv = pull_argv(config, "org/m", "", "http://127.0.0.1:18990", token=True)
    assert argv[:3] == ["podman", "run", "--rm"]
    assert "--network=pasta:-T,18990" in argv
    assert argv[argv.index("--env-file") + 1] == "/var/lib/vllm/.config/liminati/hf-token.env"
    assert "-v" in argv and "/var/lib/vllm/.cache/huggingface:/root/.cache/huggingface:z" in argv
    assert argv[-2:] == ["org/m", ""]
    assert not any("hf_" in a for a in argv)
    plain = pull_argv(config, "org/m", "v1", "", token=False)
    assert "--env-file" not in plain and "--network=pasta" in plain and plain[-1] == "v1"


def test_token_set_keeps_it_0600_for_vllm_user_and_never_prints_it(
    run_cli: RunCli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    args = ("--root", str(root), "--listen-ip", IP)
    assert run_cli("install", *args)[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("not a token!\n"))
    code, out, err = run_cli("model", "token", "set", *args)
    assert code == 2 and "does not look like a Hugging Face token" in err
    token = "hf_abcdefghijklmnopqrstuvwxyz0123456789"
    monkeypatch.setattr("sys.stdin", io.StringIO(token + "\n"))
    code, out, err = run_cli("model", "token", "set", *args)
    assert code == 0, err
    assert token not in out + err
    path = root / "var/lib/vllm/.config/liminati/hf-token.env"
    assert path.read_text() == f"HF_TOKEN={token}\n" and (path.stat().st_mode & 0o777) == 0o600
    assert run_cli("model", "token", "status", *args)[0] == 0
    assert run_cli("model", "token", "clear", *args)[0] == 0
    assert not path.exists() and run_cli("model", "token", "status", *args)[0] == 4
