#!/usr/bin/env bash
# Install what aal-core needs into ./.venv and build it (Cython + protobuf).
#   TOOLS/setup.sh          runtime only (for `aal-core run`)
#   TOOLS/setup.sh --test   also the test/bench tools, torch (client side) and
#                           the system packages the system tests use; and
#                           ./.venv310: the same build and test pins under a
#                           CPython 3.10 (JetPack 6's), for TOOLS/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

apt_pkgs=()
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3-venv)
# The Cython extensions are compiled: a C compiler with the libc headers, and
# the headers of the Python that builds them.
{ command -v cc >/dev/null && [ -e /usr/include/stdio.h ]; } || apt_pkgs+=(build-essential)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
    || apt_pkgs+=(python3-dev)
# The ledger extension hashes SHA3-256 with OpenSSL's libcrypto.
[ -e /usr/include/openssl/evp.h ] || apt_pkgs+=(libssl-dev)
if [ "$want_test" = 1 ]; then
    command -v systemd-nspawn >/dev/null || apt_pkgs+=(systemd-container)
    command -v socat >/dev/null || apt_pkgs+=(socat)
    command -v strace >/dev/null || apt_pkgs+=(strace)
    command -v shellcheck >/dev/null || apt_pkgs+=(shellcheck)
    command -v setpriv >/dev/null || apt_pkgs+=(util-linux)
    # test_systemd_e2e: the nspawn container shares only /usr with the host,
    # so the service's venv there is made from /usr/bin/python3.
    /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || apt_pkgs+=(python3 python3-venv)
    # test_export_prometheus / test_fleet_redis: a real Prometheus (and
    # promtool) and a real redis-server, the versions Debian 12 ships.
    command -v prometheus >/dev/null && command -v promtool >/dev/null \
        || apt_pkgs+=(prometheus=2.42.0+ds-5+deb12u1)
    command -v redis-server >/dev/null || apt_pkgs+=(redis-server=5:7.0.15-1~deb12u10)
    # test_cgroup_v2_guest (x86_64): a QEMU guest booted by virtme-ng.
    if [ "$(uname -m)" = x86_64 ]; then
        command -v qemu-system-x86_64 >/dev/null || apt_pkgs+=(qemu-system-x86)
        command -v modprobe >/dev/null || apt_pkgs+=(kmod)
        [ -x /bin/busybox ] || apt_pkgs+=(busybox-static)
        command -v udevadm >/dev/null || apt_pkgs+=(udev)
    fi
fi
if [ "${#apt_pkgs[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: need these Debian packages (run as root or install them): ${apt_pkgs[*]}" >&2
        exit 1
    fi
    echo "setup: apt-get install ${apt_pkgs[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check -c TOOLS/constraints.txt)
"${PIP[@]}" setuptools wheel Cython grpcio-tools
if [ "$want_test" = 1 ]; then
    "${PIP[@]}" pytest pytest-timeout hypothesis jsonschema cryptography simple-pid jetson-stats torch
    if [ "$(uname -m)" = x86_64 ]; then
        "${PIP[@]}" virtme-ng
        TOOLS/guest_kernel.sh >/dev/null    # the guest's kernel, fetched once into ~/.cache/aal-core
    fi
fi
# Build the extensions and bindings and install the package (not editable:
# what is tested is what a user gets).
"${PIP[@]}" --no-build-isolation .
# tests/test_ledger_openssl111.py: a real OpenSSL 1.1.1 (JetPack 5's) to
# compile the ledger against, unpacked under .venv, not installed.
[ "$want_test" = 0 ] || TOOLS/fetch_openssl111.sh .venv/openssl-1.1.1

# The suite under CPython 3.10 too (TOOLS/test.sh): .venv310, built and
# installed from this checkout with the same constraints (their markers pick
# 3.10's numpy and tomli).  The 3.10: $AAL_PYTHON310, else pyenv's newest
# 3.10.x, else python3.10 on PATH; none (or .venv is 3.10 already) -> none.
python310() {
    local c v
    for c in "${AAL_PYTHON310:-}" \
        $(pyenv versions --bare 2>/dev/null | grep -E '^3\.10\.[0-9]+$' | sort -t. -k3,3nr \
            | while read -r v; do echo "$(pyenv prefix "$v")/bin/python3.10"; done) \
        "$(command -v python3.10 || true)"; do
        { [ -n "$c" ] && [ -x "$c" ]; } || continue
        "$c" -c 'import sys, venv, ensurepip, os, sysconfig; assert sys.version_info[:2] == (3, 10)
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' 2>/dev/null \
            && { echo "$c"; return; }
    done
}
if [ "$want_test" = 1 ] && [ "$(.venv/bin/python -c 'import sys; print(sys.version_info[:2] != (3, 10))')" = True ]; then
    py310=$(python310)
    if [ -z "$py310" ]; then
        echo "setup: no CPython 3.10 with venv and its headers (pyenv install 3.10, or set" \
             "AAL_PYTHON310): .venv310 not made, TOOLS/test.sh's 3.10 pass will fail" >&2
    else
        [ -x .venv310/bin/python ] || "$py310" -m venv .venv310
        PIP310=(.venv310/bin/python -m pip install -q --disable-pip-version-check -c TOOLS/constraints.txt)
        "${PIP310[@]}" setuptools wheel Cython grpcio-tools
        "${PIP310[@]}" pytest pytest-timeout hypothesis jsonschema cryptography torch
        "${PIP310[@]}" --no-build-isolation .
        echo "setup: .venv310 ready ($(.venv310/bin/python -V))" >&2
    fi
fi
echo "setup: ready ($(.venv/bin/aal-core --version))" >&2
