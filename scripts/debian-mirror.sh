# shellcheck shell=bash
# Sourced by the test scripts: debian_mirror prints the host's Debian mirror, read from its
# apt sources (deb822 first, then sources.list; never hard-coded): the first URIs of a stanza
# whose suites are not -security. The caller defines die().
debian_mirror() {
    local f uri=""
    for f in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        uri="$(awk '
            /^[[:space:]]*$/ { uris = ""; suites = ""; next }
            /^URIs:/   { uris = $2 }
            /^Suites:/ { for (i = 2; i <= NF; i++) if ($i !~ /-security$/) suites = $i }
            uris != "" && suites != "" && uris !~ /security/ { print uris; exit }
        ' "$f")"
        [[ -n "$uri" ]] && break
    done
    if [[ -z "$uri" && -r /etc/apt/sources.list ]]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)"
    fi
    [[ -n "$uri" ]] || die "cannot find the Debian mirror in /etc/apt/sources.list.d/debian.sources"
    printf '%s\n' "${uri%/}"
}
