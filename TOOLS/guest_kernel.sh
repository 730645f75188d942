#!/usr/bin/env bash
# The kernel the cgroup v2 guest test boots (tests/test_cgroup_v2_guest.py):
# Debian's stock amd64 kernel, fetched with `apt-get download` and extracted
# once into ~/.cache/aal-core/kernel-<package>/ (reused afterwards; quick when
# already there).  The package is resolved from linux-image-amd64's dependency,
# so a new ABI number in the archive is followed, not hard-coded.
# Prints the vmlinuz path.  x86_64 only (the test skips elsewhere).
set -euo pipefail
cache="${AAL_GUEST_CACHE:-$HOME/.cache/aal-core}"
link="$cache/guest-kernel"
# Already extracted: reuse it (no apt query, no download).
if [ -e "$link/vmlinuz" ] && [ -d "$link/lib/modules" ]; then
    readlink -f "$link/vmlinuz"
    exit 0
fi
resolve() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'; }
pkg="$(resolve)"
if [ -z "$pkg" ] && [ "$(id -u)" = 0 ]; then
    apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null 2>&1 || true
    pkg="$(resolve)"
fi
if [ -z "$pkg" ]; then
    echo "guest_kernel: apt-cache cannot resolve linux-image-amd64's kernel package (run apt-get update)" >&2
    exit 1
fi
dir="$cache/kernel-$pkg"
if [ ! -e "$dir/vmlinuz" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    chmod 755 "$tmp"            # apt's _apt user writes the download there
    (cd "$tmp" && apt-get download -qq "$pkg" >/dev/null 2>&1) || {
        echo "guest_kernel: apt-get download $pkg failed" >&2
        exit 1
    }
    rm -rf "$dir.part"
    mkdir -p "$dir.part"
    dpkg-deb -x "$tmp"/"$pkg"_*.deb "$dir.part"
    # vng finds the modules from the kernel's place: keep the package layout
    ln -s "boot/$(basename "$(ls "$dir.part"/boot/vmlinuz-*)")" "$dir.part/vmlinuz"
    rm -rf "$dir"
    mv "$dir.part" "$dir"
fi
ln -sfn "$dir" "$link"
readlink -f "$link/vmlinuz"
