#!/usr/bin/env bash
# Build (once) the Debian 13 "trixie" root filesystem that the tier-4 tests boot with
# systemd-nspawn: systemd, rootless podman 5 with quadlet, python3. Run as root.
#
#   bash scripts/build-rootfs.sh          # prints the root filesystem's directory on stdout
#   bash scripts/build-rootfs.sh --client # a laptop-like client instead (see CLIENT_PACKAGES)
#
# The result is cached under ${LIMINATI_CACHE}/rootfs-<hash>/root (the client:
# rootfs-client-<hash>/root), where <hash> covers every input of the build (suite, packages,
# options, test-only files), so a second run on the same machine only checks the cache (well
# under a second). Logs go to stderr.
#
# Environment:
#   LIMINATI_CACHE          cache folder (default /var/cache/liminati-test)
#   LIMINATI_DEBIAN_MIRROR  override the Debian mirror (default: the host's, read from
#                           /etc/apt/sources.list.d/debian.sources; never hard-coded)
#   LIMINATI_ROOTFS_KEEP=N  how many other rootfs-* builds to keep in the cache (default 1)
set -euo pipefail

VARIANT=server
case "${1:-}" in
    "") ;;
    --client) VARIANT=client ;;
    *) printf '[build-rootfs] ERROR: unknown argument: %s (expected --client or nothing)\n' "$1" >&2; exit 2 ;;
esac

# ---------------------------------------------------------------------------------------------
# The inputs. Changing any of them changes the hash and so builds a new root filesystem.
SUITE=trixie
# The system tier's packages, plus: python3-venv (ensurepip, for `python3 -m venv /opt/liminati`),
# procps (ps/pgrep when debugging a test), dbus-user-session (the user bus for `systemctl
# --user -M user@`).
PACKAGES=(
    systemd systemd-sysv dbus dbus-user-session libpam-systemd
    podman crun uidmap passt fuse-overlayfs catatonit netavark aardvark-dns
    iproute2 curl ca-certificates
    python3 python3-venv
    procps
)
# The client tier's laptop (tests/live/test_client_debian.py): what install-client.sh uses or
# configures on a Debian 13 desktop: systemd-resolved (split DNS), ca-certificates, curl,
# libnss3-tools (certutil, for the browsers' NSS databases), sudo (the seed's one-liner runs as
# a user), and the Python clients the issue names (httpx, openai) from Debian itself.
CLIENT_PACKAGES=(
    systemd systemd-sysv dbus libpam-systemd systemd-resolved
    iproute2 curl ca-certificates libnss3-tools sudo
    python3 python3-httpx python3-openai
    procps
)
# Smaller tree = faster copy per boot: no documentation, manual pages or translations.
DPKG_OPTS=(
    'path-exclude=/usr/share/man/*'
    'path-exclude=/usr/share/doc/*'
    'path-include=/usr/share/doc/*/copyright'
    'path-exclude=/usr/share/info/*'
    'path-exclude=/usr/share/locale/*'
)
APT_OPTS=(
    'Acquire::Languages "none"'
)

# Test-only addition 1: nothing manages the network inside `nspawn --private-network`, so
# network-online.target would never be reached and every quadlet unit (podman 5 orders them
# after podman-user-wait-network-online.service, which polls it) would wait 90 s.
NETWORK_ONLINE_UNIT_NAME=liminati-test-network-online.service
read -r -d '' NETWORK_ONLINE_UNIT <<'EOF' || true
# Test-only (liminati tier 4): the container's network is private and static, declare it online.
[Unit]
Description=Declare the network online (liminati test system)
DefaultDependencies=no
Wants=network-online.target
Before=network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true

[Install]
WantedBy=multi-user.target network-online.target
EOF

# Test-only addition 2: on this host (hybrid cgroups: pids is bound to its v1 hierarchy) the
# container's unified hierarchy has no pids controller, and with podman's default
# pids_limit=2048 crun refuses every container ("controller `pids` is not available").
read -r -d '' CI_CONTAINERS_CONF <<'EOF' || true
# Test-only (liminati tier 4): no pids limit inside the nspawn container.
[containers]
pids_limit = 0
EOF

RECIPE_VERSION=1
# ---------------------------------------------------------------------------------------------

LIMINATI_CACHE="${LIMINATI_CACHE:-/var/cache/liminati-test}"
log() { printf '[build-rootfs] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$(id -u)" -eq 0 ]] || die "run as root (mmdebstrap in root mode, then systemd-nspawn)"
command -v mmdebstrap >/dev/null || die "mmdebstrap not found: run scripts/install-test-deps.sh"

# shellcheck source=scripts/debian-mirror.sh
source "$(dirname "${BASH_SOURCE[0]}")/debian-mirror.sh"

# The hash covers what goes into the tree, not where it was downloaded from.
recipe() {
    printf 'version=%s\nsuite=%s\n' "$RECIPE_VERSION" "$SUITE"
    # (the server's recipe is unchanged by the client variant: same hash, same cache)
    if [[ "$VARIANT" == client ]]; then
        printf 'variant=client\n'
    fi
    printf 'package=%s\n' "${PACKAGES[@]}"
    printf 'dpkgopt=%s\n' "${DPKG_OPTS[@]}"
    printf 'aptopt=%s\n' "${APT_OPTS[@]}"
    printf '%s\n' "$NETWORK_ONLINE_UNIT_NAME" "$NETWORK_ONLINE_UNIT" "$CI_CONTAINERS_CONF"
}
if [[ "$VARIANT" == client ]]; then
    PACKAGES=("${CLIENT_PACKAGES[@]}")
    PREFIX=rootfs-client
    MAIN_BINARY=usr/bin/resolvectl
else
    PREFIX=rootfs
    MAIN_BINARY=usr/bin/podman
fi
HASH="$(recipe | sha256sum | cut -c1-16)"
OUT="$LIMINATI_CACHE/$PREFIX-$HASH"
ROOT="$OUT/root"
STAMP="$OUT/BUILD-INFO"

mkdir -p "$LIMINATI_CACHE"
# One build at a time per cache (parallel CI jobs, or a test run racing a manual build).
exec 9>"$LIMINATI_CACHE/.rootfs.lock"
flock 9

if [[ -f "$STAMP" && -x "$ROOT/usr/lib/systemd/systemd" && -x "$ROOT/$MAIN_BINARY" ]]; then
    log "cached: $ROOT ($(head -1 "$STAMP"))"
    printf '%s\n' "$ROOT"
    exit 0
fi

MIRROR="${LIMINATI_DEBIAN_MIRROR:-$(debian_mirror)}"
T0="$(date +%s.%N)"
TMP="$LIMINATI_CACHE/$PREFIX-$HASH.tmp"
rm -rf --one-file-system "$TMP"
mkdir -p "$TMP"
trap 'rm -rf --one-file-system "$TMP"' EXIT

include="$(IFS=,; printf '%s' "${PACKAGES[*]}")"
args=(--variant=minbase --include="$include" --format=directory)
for o in "${DPKG_OPTS[@]}"; do args+=(--dpkgopt="$o"); done
for o in "${APT_OPTS[@]}"; do args+=(--aptopt="$o"); done
log "mmdebstrap $SUITE from $MIRROR into $TMP/root (${#PACKAGES[@]} packages and their dependencies)"
mmdebstrap --quiet "${args[@]}" "$SUITE" "$TMP/root" "deb $MIRROR $SUITE main" >&2

R="$TMP/root"
if [[ "$VARIANT" == client ]]; then
    # As on an installed Debian desktop: programs read resolved's stub (mmdebstrap leaves the
    # build host's resolv.conf behind).
    ln -sfn ../run/systemd/resolve/stub-resolv.conf "$R/etc/resolv.conf"
fi
# Test-only addition 1 (see above), enabled the way `systemctl enable` would.
printf '%s\n' "$NETWORK_ONLINE_UNIT" >"$R/etc/systemd/system/$NETWORK_ONLINE_UNIT_NAME"
for target in multi-user.target network-online.target; do
    mkdir -p "$R/etc/systemd/system/$target.wants"
    ln -sfn "/etc/systemd/system/$NETWORK_ONLINE_UNIT_NAME" \
        "$R/etc/systemd/system/$target.wants/$NETWORK_ONLINE_UNIT_NAME"
done
# Test-only addition 2.
mkdir -p "$R/etc/containers/containers.conf.d"
printf '%s\n' "$CI_CONTAINERS_CONF" >"$R/etc/containers/containers.conf.d/50-ci.conf"
# A name for the journal and prompts; nspawn would otherwise use the temp folder's name.
printf 'liminati-test\n' >"$R/etc/hostname"
# nspawn hands the container a transient machine id when this file is empty.
: >"$R/etc/machine-id"

version_of() { dpkg-query --admindir="$R/var/lib/dpkg" -W -f="\${Version}" "$1"; }
{
    if [[ "$VARIANT" == client ]]; then
        printf 'debian %s client, systemd %s, python3 %s, httpx %s, openai %s\n' "$SUITE" \
            "$(version_of systemd)" "$(version_of python3)" "$(version_of python3-httpx)" \
            "$(version_of python3-openai)"
    else
        printf 'debian %s, podman %s, systemd %s, python3 %s\n' "$SUITE" \
            "$(version_of podman)" "$(version_of systemd)" "$(version_of python3)"
    fi
    printf 'built %s from %s in %.0fs\n' "$(date -u +%FT%TZ)" "$MIRROR" \
        "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
    printf '\n# recipe (hash %s)\n' "$HASH"
    recipe
} >"$TMP/BUILD-INFO"

rm -rf --one-file-system "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
log "built: $ROOT ($(head -1 "$STAMP"); $(du -sh "$ROOT" | cut -f1))"

# Old builds from earlier recipes are each several hundred MB: keep only the newest few.
keep="${LIMINATI_ROOTFS_KEEP:-1}"
# (each variant its own: the server's builds never remove the client's, nor the other way)
if [[ "$VARIANT" == client ]]; then
    others=(-name 'rootfs-client-*')
else
    others=(-name 'rootfs-*' ! -name 'rootfs-client-*')
fi
mapfile -t old < <(find "$LIMINATI_CACHE" -mindepth 1 -maxdepth 1 -type d "${others[@]}" \
    ! -name '*.tmp' ! -name "$PREFIX-$HASH" -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2- |
    tail -n +"$((keep + 1))")
for d in "${old[@]}"; do
    log "removing old build $d"
    rm -rf --one-file-system "$d"
done

printf '%s\n' "$ROOT"
