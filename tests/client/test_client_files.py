"""What the download server hands to clients, checked on the files themselves, for every
golden case: install-client.sh (bash, dash, shellcheck, truncation), install-client.ps1 (a
PowerShell grammar and a structural lint) and liminati.mobileconfig (plistlib).

The installers are run for real on a booted Debian 13 client in
tests/live/test_client_debian.py. install-client.ps1 is untested on Windows: no Windows
machine or PowerShell is available to CI, so it is parsed with tree-sitter-powershell (a
PowerShell grammar; scripts/install-test-deps.sh installs it) and linted for structure here.
"""

from __future__ import annotations

import hashlib
import os
import plistlib
import random
import re
import shutil
import subprocess
import uuid
from functools import cache
from pathlib import Path

import pytest

from golden_tree import CASES, case_config, fixture_material, render_case
from liminati import pki

DIST = "var/lib/nginx-proxy/dist"
CA = fixture_material().ca_cert_pem
CA_SHA256 = pki.fingerprint(CA)


@cache
def dist_files(case: str) -> dict[str, bytes]:
    _config, desired = render_case(case)
    return {Path(f.path).name: f.content for f in desired.files if f.path.startswith(f"/{DIST}/")}


def script(case: str, tmp_path: Path, name: str = "install-client.sh") -> Path:
    path = tmp_path / name
    path.write_bytes(dist_files(case)[name])
    path.chmod(0o644)
    tmp_path.chmod(0o755)
    return path


def need(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        pytest.fail(f"{tool} not found: run scripts/install-test-deps.sh")
    return found


def as_nobody(
    argv: list[str], *, path: str = "/nonexistent-liminati", **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run as `nobody` with an empty environment and (by default) no PATH worth the name: a
    test that fails must not be able to touch this host."""
    env = ["env", "-i", f"PATH={path}", "HOME=/nonexistent", "LANG=C.UTF-8"]
    prefix = ["runuser", "-u", "nobody", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *env, *argv], capture_output=True, text=True, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def test_every_case_serves_the_three_client_files() -> None:
    for case in CASES:
        assert set(dist_files(case)) == {
            "install-client.sh",
            "install-client.ps1",
            "liminati.mobileconfig",
        }, case


# -- install-client.sh ----------------------------------------------------------------------
@pytest.mark.validators
@pytest.mark.parametrize("case", CASES)
def test_shell_script_is_shellcheck_clean_and_parses_in_bash_and_dash(
    case: str, tmp_path: Path
) -> None:
    path = script(case, tmp_path)
    for argv in (
        [need("shellcheck"), "--shell=bash", "--severity=style", str(path)],
        [need("bash"), "-n", str(path)],
        # plain sh must parse it all to reach the "needs bash" message
        [need("dash"), "-n", str(path)],
    ):
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert out.returncode == 0, (argv[0], out.stdout, out.stderr)


@pytest.mark.parametrize("case", CASES)
def test_shell_script_embeds_the_fingerprint_ports_and_the_seed_one_liner(case: str) -> None:
    config = case_config(case)
    text = dist_files(case)["install-client.sh"].decode()
    assert f"CA_SHA256='{CA_SHA256}'" in text
    assert f"DIST_PORT='{config.ports.dist}'" in text
    assert f"HTTPS_PORT='{config.ports.https}'" in text
    assert f"DNS_PORT='{config.ports.dns}'" in text
    ip = config.listen_ip
    assert f"#   curl http://{ip}:{config.ports.dist}/install-client.sh | bash -s {ip}\n" in text


@pytest.mark.validators
def test_sh_and_bash_as_sh_are_refused_with_a_message() -> None:
    text = dist_files("default")["install-client.sh"].decode()
    for argv in (
        [need("dash"), "-s", "100.64.0.10"],
        [need("bash"), "--posix", "-s", "100.64.0.10"],
    ):
        out = as_nobody(argv, input=text)
        assert out.returncode == 1, (argv, out)
        assert "liminati: error: this installer needs bash" in out.stderr, (argv, out)
        assert out.stdout == ""


def _body_start(text: str) -> int:
    """Byte offset just past the line holding the opening `{` of the whole-script group."""
    match = re.search(r"^\{\n", text, re.MULTILINE)
    assert match, "no opening { line"
    return match.end()


def test_shell_script_is_one_group_closed_on_the_last_line() -> None:
    """Above the group only comments; the group ends with the one call and its `}`."""
    text = dist_files("default")["install-client.sh"].decode()
    start = _body_start(text)
    head = text[:start].splitlines()[:-1]
    assert all(line == "" or line.startswith("#") for line in head), head
    assert text[start:].splitlines()[-2:] == ['{ main ${1+"$@"}; }', "}"]
    assert text.endswith("}\n")


@pytest.mark.validators
def test_every_cut_of_the_shell_script_is_a_syntax_error_or_only_comments(tmp_path: Path) -> None:
    """A download cut anywhere runs nothing: a prefix ending at a line boundary inside the
    group fails to parse (bash -n: exit 2), and the ones before it are comments. Checked at
    every boundary between two top-level definitions (where a script of plain definitions
    would parse) and at every 20th line besides."""
    text = dist_files("default")["install-client.sh"].decode()
    start = _body_start(text)
    bash = need("bash")
    ends = [m.end() for m in re.finditer("\n", text) if start <= m.end() < len(text)]
    cuts = [n for i, n in enumerate(ends) if i % 20 == 0 or not text[n : n + 1].isspace()]
    assert len(cuts) > 100
    # one bash for all cuts: `bash -n` of each prefix, through a here-string per cut
    driver = tmp_path / "cuts.sh"
    prefix_file = tmp_path / "script.sh"
    prefix_file.write_text(text)
    driver.write_text(
        'while read -r n; do head -c "$n" "$1" | bash -n 2>/dev/null; echo "$n $?"; done\n'
    )
    out = subprocess.run(
        [bash, str(driver), str(prefix_file)],
        input="\n".join(map(str, cuts)) + "\n",
        capture_output=True,
        text=True,
        check=True,
    )
    statuses = dict(line.split() for line in out.stdout.splitlines())
    assert len(statuses) == len(cuts)
    parsed = [n for n, rc in statuses.items() if rc != "2"]
    assert parsed == [], f"prefixes that parse (would run): {parsed[:10]}"


@pytest.mark.validators
def test_a_truncated_shell_script_executes_no_command(tmp_path: Path) -> None:
    """20 random cuts piped to `bash -x` (as nobody, empty environment): no trace line, so no
    command of the script ran. The booted client repeats this as root (test_client_debian)."""
    text = dist_files("default")["install-client.sh"]
    seed = random.SystemRandom().randrange(10**6)
    rng = random.Random(seed)
    bash = need("bash")
    for offset in sorted(rng.sample(range(1, len(text) - 1), 20)):
        out = as_nobody([bash, "-x", "-s", "100.64.0.10"], input=text[:offset].decode())
        traced = [line for line in out.stderr.splitlines() if line.startswith("+")]
        assert (traced, out.stdout) == ([], ""), f"seed {seed}, offset {offset}"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--help"], 0, "Usage:"),
        (["--version"], 0, "liminati client installer"),
        (["--frobnicate"], 2, "unknown option: --frobnicate"),
        (["100.64.0.300"], 2, "not an IPv4 address: 100.64.0.300"),
        (["100.64.0.10", "100.64.0.11"], 2, "more than one server address"),
        (["--check", "--uninstall"], 2, "cannot be combined"),
    ],
)
def test_shell_script_arguments(args: list[str], status: int, message: str) -> None:
    text = dist_files("default")["install-client.sh"].decode()
    # these exit before doing anything, so the usual PATH (--help needs cat)
    out = as_nobody(["/bin/bash", "-s", "--", *args], input=text, path="/usr/bin:/bin")
    assert out.returncode == status, out
    assert message in out.stdout + out.stderr


# -- install-client.ps1 ---------------------------------------------------------------------
#: cmdlets the Windows installer may call (DnsClient and PKI modules, Microsoft.PowerShell.*)
KNOWN_CMDLETS = {
    "Add-DnsClientNrptRule",
    "Clear-DnsClientCache",
    "ConvertTo-Json",
    "ForEach-Object",
    "Get-ChildItem",
    "Get-Command",
    "Get-DnsClientNrptRule",
    "Import-Certificate",
    "Invoke-RestMethod",
    "Invoke-WebRequest",
    "Join-Path",
    "New-Item",
    "New-Object",
    "Out-Null",
    "Remove-DnsClientNrptRule",
    "Remove-Item",
    "Resolve-DnsName",
    "Set-StrictMode",
    "Sort-Object",
    "Test-Path",
    "Where-Object",
    "Write-Host",
}


def _powershell_tree(source: bytes):  # type: ignore[no-untyped-def]
    try:
        import tree_sitter_powershell
        from tree_sitter import Language, Parser
    except ImportError:
        pytest.fail("tree-sitter-powershell is not installed: run scripts/install-test-deps.sh")
    return Parser(Language(tree_sitter_powershell.language())).parse(source)


def _nodes(node):  # type: ignore[no-untyped-def]
    yield node
    for child in node.children:
        yield from _nodes(child)


@pytest.mark.validators
@pytest.mark.parametrize("case", CASES)
def test_powershell_script_parses_and_calls_only_known_commands(case: str) -> None:
    source = dist_files(case)["install-client.ps1"]
    tree = _powershell_tree(source)
    errors = [
        (n.type, n.start_point, source[n.start_byte : n.end_byte][:60])
        for n in _nodes(tree.root_node)
        if n.type == "ERROR" or n.is_missing
    ]
    assert errors == []

    def text(node) -> str:  # type: ignore[no-untyped-def]
        return source[node.start_byte : node.end_byte].decode()

    defined = [
        text(n.child_by_field_name("function_name") or n.children[1])
        for n in _nodes(tree.root_node)
        if n.type == "function_statement"
    ]
    assert len(defined) == len(set(defined)), "a function defined twice"
    called = {
        text(n.child_by_field_name("command_name"))
        for n in _nodes(tree.root_node)
        if n.type == "command" and n.child_by_field_name("command_name") is not None
    }
    unknown = called - set(defined) - KNOWN_CMDLETS
    assert unknown == set(), f"commands neither defined nor known: {sorted(unknown)}"
    unused = set(defined) - called
    assert unused == set(), f"functions never called: {sorted(unused)}"


@pytest.mark.validators
def test_the_powershell_grammar_does_reject_a_broken_script() -> None:
    """The parse test above means something: a cut script and a lost brace are errors."""
    source = dist_files("default")["install-client.ps1"]
    assert _powershell_tree(source[: len(source) // 2]).root_node.has_error
    broken = source.replace(b"function Install-Ca($Certificate) {", b"function Install-Ca(", 1)
    assert _powershell_tree(broken).root_node.has_error


@pytest.mark.parametrize("case", CASES)
def test_powershell_script_structure(case: str) -> None:
    config = case_config(case)
    raw = dist_files(case)["install-client.ps1"]
    raw.decode("ascii")  # Windows PowerShell 5.1 reads a BOM-less file as the ANSI code page
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    text = raw.decode().replace("\r\n", "\n")
    ip = config.listen_ip
    assert f"$CaSha256 = '{CA_SHA256}'" in text
    assert f"[string]$Server = '{ip}'" in text
    for switch in ("[switch]$Check", "[switch]$Uninstall"):
        assert switch in text
    one_liner = (
        f"& ([scriptblock]::Create((irm http://{ip}:{config.ports.dist}/install-client.ps1)))"
        f" -Server {ip}"
    )
    assert one_liner in text
    # the CA into LocalMachine\Root, an NRPT rule for the domain only, both removable
    assert "Import-Certificate -FilePath $file -CertStoreLocation $RootStore" in text
    assert "$RootStore = 'Cert:\\LocalMachine\\Root'" in text
    assert "Add-DnsClientNrptRule -Namespace $namespaces -NameServers $Server" in text
    assert '$namespaces = @(".$Domain", $Domain)' in text
    assert "Remove-DnsClientNrptRule -Name $rule.Name -Force" in text
    # nothing changes before the fingerprint check
    install = text[text.index("function Invoke-Install") :]
    assert install.index("Get-VerifiedCa") < install.index("Install-Ca $certificate")


# -- liminati.mobileconfig ------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_mobileconfig_is_a_valid_profile_with_the_ca(case: str) -> None:
    config = case_config(case)
    raw = dist_files(case)["liminati.mobileconfig"]
    assert raw.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE plist')
    profile = plistlib.loads(raw, fmt=plistlib.FMT_XML)
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadVersion"] == 1
    assert profile["PayloadIdentifier"] == f"internal.liminati.{config.domain}"
    payloads = profile["PayloadContent"]
    # the CA only: com.apple.dnsSettings.managed is for encrypted DNS (HTTPS or TLS), and
    # the liminati DNS is plain DNS (README, "Onboarding a client")
    assert [p["PayloadType"] for p in payloads] == ["com.apple.security.root"]
    root = payloads[0]
    assert isinstance(root["PayloadContent"], bytes)
    # the CA's DER form, byte for byte: its SHA-256 is the fingerprint the installers check
    assert hashlib.sha256(root["PayloadContent"]).hexdigest() == CA_SHA256
    for item in (profile, root):
        assert {"PayloadUUID", "PayloadIdentifier", "PayloadType", "PayloadVersion"} <= set(item)
        assert str(uuid.UUID(item["PayloadUUID"])).upper() == item["PayloadUUID"]
        assert isinstance(item["PayloadDisplayName"], str)
    assert profile["PayloadUUID"] != root["PayloadUUID"]
    assert root["PayloadIdentifier"].startswith(profile["PayloadIdentifier"] + ".")
    assert "Certificate Trust Settings" in profile["PayloadDescription"]
    assert CA_SHA256 in profile["PayloadDescription"]
