#!/usr/bin/env bash
# Unpack a real OpenSSL 1.1.1 (what JetPack 5 ships) into DIR, for
# tests/test_ledger_openssl111.py: Debian 11's libssl-dev and libssl1.1,
# fetched with apt from the Debian mirror this machine already uses and
# unpacked with dpkg-deb -x.  Nothing is installed system-wide: the host's
# OpenSSL 3 and its apt state are untouched (a private apt state directory).
# The .debs are cached under ~/.cache/aal-core and reused.
#
#   TOOLS/fetch_openssl111.sh DIR      (TOOLS/setup.sh --test: DIR = .venv/openssl-1.1.1)
set -euo pipefail
dest="${1:?usage: TOOLS/fetch_openssl111.sh DIR}"
version=1.1.1w-0+deb11u1        # bullseye's last 1.1.1 (its main archive, not -security)
arch="$(dpkg --print-architecture)"
want="$version $arch"
say() { echo "fetch_openssl111: $*" >&2; }
die() { echo "fetch_openssl111: $*" >&2; exit 1; }

[ "$(cat "$dest/.version" 2>/dev/null)" = "$want" ] && exit 0

cache="${XDG_CACHE_HOME:-$HOME/.cache}/aal-core/openssl-$version-$arch"
debs=("$cache/libssl-dev_${version}_$arch.deb" "$cache/libssl1.1_${version}_$arch.deb")
if [ ! -s "${debs[0]}" ] || [ ! -s "${debs[1]}" ]; then
    # The archive URI of this machine's Debian suite (one-line or deb822 sources).
    # shellcheck disable=SC1091
    codename="$(. /etc/os-release && echo "${VERSION_CODENAME:-}")"
    mirror="$({ cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
        | awk -v c="$codename" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++;
                                               if ($(i + 1) == c) { print $i; exit } }')"
    if [ -z "$mirror" ]; then
        mirror="$({ cat /etc/apt/sources.list.d/*.sources 2>/dev/null || true; } | awk -v c="$codename" '
            /^[ \t]*$/ { if (deb && hit && uri != "") { print uri; exit } deb = hit = 0; uri = ""; next }
            $1 == "Types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            $1 == "URIs:" { uri = $2 }
            $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == c) hit = 1 }
            END { if (deb && hit && uri != "") print uri }' | head -n1)"
    fi
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    { [ -n "$codename" ] && [ -n "$mirror" ] && [ -r "$keyring" ]; } \
        || die "no Debian archive in /etc/apt/sources* (or no $keyring): cannot fetch Debian 11's libssl-dev $version"
    say "apt-get download libssl-dev libssl1.1 $version ($arch) from $mirror bullseye"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/lists/partial" "$tmp/archives/partial" "$cache"
    echo "deb [signed-by=$keyring] $mirror bullseye main" > "$tmp/sources.list"
    apt_opts=(-q -o Dir::Etc::SourceList="$tmp/sources.list" -o Dir::Etc::SourceParts=/nonexistent
              -o Dir::State::Lists="$tmp/lists" -o Dir::Cache="$tmp" -o Dir::Cache::pkgcache=
              -o Dir::Cache::srcpkgcache= -o APT::Architecture="$arch" -o APT::Sandbox::User=root
              -o DPkg::Lock::Timeout=300)
    apt-get "${apt_opts[@]}" update >/dev/null
    (cd "$tmp" && apt-get "${apt_opts[@]}" download "libssl-dev=$version" "libssl1.1=$version" >/dev/null)
    mv -f "$tmp"/libssl-dev_*"_$arch.deb" "${debs[0]}"
    mv -f "$tmp"/libssl1.1_*"_$arch.deb" "${debs[1]}"
fi
rm -rf "$dest"
mkdir -p "$dest"
for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$dest"
done
echo "$want" > "$dest/.version"
say "OpenSSL $version headers and libcrypto under $dest"
