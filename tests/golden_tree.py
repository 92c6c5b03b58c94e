"""Golden trees: render a case into a dict of files, compare it whole with tests/golden/<case>/."""

from __future__ import annotations

import os
from pathlib import Path

from liminati import pki
from liminati.config import Config, parse_config
from liminati.render import Desired, Material, build_desired
from liminati.render.dnsmasq import dnsadmin_source
from liminati.render.stack import DEFAULT_PROGRAM

GOLDEN = Path(__file__).parent / "golden"
FIXTURES = GOLDEN / "fixtures"
CASES = sorted(p.stem for p in (GOLDEN / "cases").glob("*.toml"))
UPDATE = os.environ.get("LIMINATI_UPDATE_GOLDEN") == "1"


def case_config(case: str) -> Config:
    path = GOLDEN / "cases" / f"{case}.toml"
    return parse_config(path.read_text(), str(path))


def fixture_material() -> Material:
    ca = (FIXTURES / "ca.crt").read_bytes()
    return Material(
        ca_cert_pem=ca,
        ca_key_pem=(FIXTURES / "ca.key").read_bytes(),
        leaf_cert_pem=(FIXTURES / "leaf.crt").read_bytes(),
        leaf_key_pem=(FIXTURES / "leaf.key").read_bytes(),
        ca_sha256=pki.fingerprint(ca),
        secrets={
            "vllm-api-key": "golden-vllm-api-key",
            "webui-secret-key": "golden-webui-secret-key",
            "webui-admin-password": "golden-webui-admin-password",
            "dnsadmin-password": "golden-dnsadmin-password",
        },
        api_keys={"alice": "golden-key-alice", "bob": "golden-key-bob"},
    )


def render_case(case: str, program: tuple[str, ...] = DEFAULT_PROGRAM) -> tuple[Config, Desired]:
    config = case_config(case)
    return config, build_desired(config, config.listen_ip, fixture_material(), program)


def tree_of(desired: Desired, material: Material) -> dict[str, bytes]:
    """Relative path -> bytes: every rendered file, plus _tree.txt describing owners and modes.

    Files that are only copies of the material (keys, certificates, secrets) appear in
    _tree.txt by name, not as files: they are inputs, not output of render.
    """
    # the DNS admin page is shipped as a file of the package: an input, not rendered output
    inputs = (
        {dnsadmin_source()}
        | {
            material.ca_cert_pem,
            material.ca_key_pem,
            material.leaf_cert_pem,
            material.leaf_key_pem,
        }
        | {(v + "\n").encode() for v in material.secrets.values()}
    )
    out: dict[str, bytes] = {}
    lines = [
        f"user {u.name} home={u.home} shell={u.shell} subids={u.subid_count}" for u in desired.users
    ]
    lines += [f"dir  {d.mode:04o} {d.owner}:{d.group} {d.path}" for d in desired.dirs]
    for f in desired.files:
        flags = []
        if f.secret:
            flags.append("secret")
        if f.policy.value != "managed":
            flags.append(f.policy.value)
        if f.activate:
            flags.append(f"activate={f.activate}")
        flags += [f"unit={r.user}/{r.unit}" for r in f.units]
        copied = f.content in inputs
        if copied:
            flags.append("material")
        else:
            out[f.path.lstrip("/")] = f.content
        lines.append(f"file {f.mode:04o} {f.owner}:{f.group} {f.path} {' '.join(flags)}".rstrip())
    lines += [
        f"unit {u.user} {u.unit} from {u.quadlet} image={u.image} reload={u.reloadable}"
        for u in desired.units
    ]
    out["_tree.txt"] = ("\n".join(lines) + "\n").encode()
    return out


def compare_tree(expected_dir: Path, actual: dict[str, bytes]) -> None:
    """Whole-tree equality; with LIMINATI_UPDATE_GOLDEN=1 rewrite the tree instead."""
    if UPDATE:
        if expected_dir.exists():
            for p in sorted(expected_dir.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
        for rel, data in actual.items():
            target = expected_dir / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        return
    on_disk = {
        str(p.relative_to(expected_dir)): p.read_bytes()
        for p in expected_dir.rglob("*")
        if p.is_file()
    }
    assert sorted(on_disk) == sorted(actual), (
        f"file set differs from {expected_dir} (regenerate with LIMINATI_UPDATE_GOLDEN=1 "
        "and review the diff)"
    )
    for rel in sorted(actual):
        assert actual[rel].decode() == on_disk[rel].decode(), f"{rel} differs from golden"
