#!/usr/bin/env bash
# Prepare a fresh NVIDIA Jetson (Orin Nano first) for aal-core, and install
# it as a systemd service.  Idempotent: run it again after `git pull`.
#
#   sudo TOOLS/orin_nano_prep.sh                  apt deps, build, install, enable
#   sudo TOOLS/orin_nano_prep.sh --add-user "$SUDO_USER"
#                                                 ... and let that user use aalctl
#   TOOLS/orin_nano_prep.sh --root DIR --no-apt   stage into DIR (no root needed)
#
# Options:
#   --root DIR          install under DIR instead of / (implies --no-enable)
#   --prefix DIR        venv location (default /opt/aal-core)
#   --from PATH         source tree (default: this checkout) or a built .whl
#   --python PY         interpreter (default python3; JetPack 5 ships 3.8, so
#                       there install python3.10 and pass --python python3.10;
#                       its -dev and -venv packages are then the ones installed)
#   --no-apt            do not apt-get install the build dependencies
#   --no-venv           only units, snippets and config
#   --no-enable         do not start anything
#   --add-user NAME     add NAME to group aal (may use the socket)
#   --max-performance   also `nvpmodel -m 0` and `jetson_clocks`: maximum
#                       clocks, more heat and power; off by default
#
# Not a Jetson (no /etc/nv_tegra_release)?  It warns and goes on: the daemon
# runs anywhere, without tegrastats.
#
# Exit codes: 0 done, 1 a step failed, 2 usage error.
#
# Memory advice (not done by this script; aal-core works either way):
# - JetPack's default swap is zram (nvzramconfig).  zram is compressed RAM:
#   it buys time under pressure but is no headroom for GPU allocations,
#   which cannot be swapped.  Keep it.
# - A swap file on NVMe (not the SD card) gives the kernel somewhere to put
#   cold CPU pages:  fallocate -l 8G /swapfile && chmod 600 /swapfile &&
#   mkswap /swapfile && swapon /swapfile  (plus an /etc/fstab line).
# - Headless boards free ~800 MB: systemctl set-default multi-user.target.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root=/
prefix=/opt/aal-core
from="$here"
python=python3
do_apt=1
do_venv=1
do_enable=1
add_user=""
max_perf=0

say() { echo "orin_nano_prep: $*" >&2; }
die() { echo "orin_nano_prep: $*" >&2; exit 1; }
usage() { sed -n '2,28p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --from) from="${2:?--from needs a path}"; shift 2 ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --no-apt) do_apt=0; shift ;;
        --no-venv) do_venv=0; shift ;;
        --no-enable) do_enable=0; shift ;;
        --add-user) add_user="${2:?--add-user needs a user name}"; shift 2 ;;
        --max-performance) max_perf=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "orin_nano_prep: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
root="$(realpath -m "$root")"
[ "$root" = / ] || { do_enable=0; do_apt=0; }

# --- is this a Jetson? --------------------------------------------------------
jetson=0
release_file="${root%/}/etc/nv_tegra_release"
if [ -r "$release_file" ]; then
    jetson=1
    l4t="$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\).*/\1.\2/p' "$release_file" | head -n1)"
    model="$(tr -d '\0' < /proc/device-tree/model 2>/dev/null || true)"
    say "Jetson: ${model:-unknown model}, L4T ${l4t:-unknown}"
    case "$l4t" in
        32.*) say "warning: JetPack 4 (L4T 32) ships Python 3.6 and cgroup v1 only; aal-core needs Python >= 3.10 (--python)" ;;
        35.*) say "note: JetPack 5 (L4T 35) ships Python 3.8 and OpenSSL 1.1.1; aal-core needs Python >= 3.10 (--python python3.10)" ;;
    esac
else
    say "warning: not a Jetson (no $release_file); installing anyway, the daemon runs without tegrastats"
fi
if [ "$max_perf" = 1 ] && [ "$jetson" = 0 ]; then
    die "--max-performance needs a Jetson (nvpmodel, jetson_clocks)"
fi

# --- build dependencies ---------------------------------------------------------
if [ "$do_apt" = 1 ]; then
    [ "$(id -u)" = 0 ] || die "installing Debian packages needs root (or --no-apt)"
    # A C compiler and the Python headers build the Cython extensions;
    # python3-venv holds ensurepip.
    # libssl-dev: the ledger extension hashes with OpenSSL's libcrypto.
    # The headers and venv module of the Python that builds: python3.X-dev
    # and python3.X-venv for a distribution python3.X (--python python3.10
    # on JetPack 5), python3-dev/-venv for the default one.
    pyver=3
    case "$python" in
        python3.*|/usr/bin/python3.*) pyver="${python##*python}" ;;
    esac
    want=(build-essential "python$pyver-dev" "python$pyver-venv" libssl-dev)
    missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "apt-get install ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
    [ "$jetson" = 0 ] || command -v tegrastats >/dev/null \
        || say "warning: no tegrastats on this Jetson (apt-get install nvidia-l4t-tools); the daemon runs without it"
fi

# --- aal-core itself --------------------------------------------------------------
args=(--root "$root" --prefix "$prefix" --from "$from" --python "$python")
[ "$do_venv" = 1 ] || args+=(--no-venv)
[ "$do_enable" = 1 ] || args+=(--no-enable)
"$here/TOOLS/install_systemd.sh" "${args[@]}"

if [ -n "$add_user" ]; then
    if [ "$root" = / ]; then
        id "$add_user" >/dev/null 2>&1 || die "--add-user: no user $add_user"
        usermod -aG aal "$add_user"
        say "$add_user is in group aal (log in again to use aalctl)"
    else
        say "--add-user ignored with --root (users are created on the target at boot)"
    fi
fi

# --- optional: maximum performance ------------------------------------------------
if [ "$max_perf" = 1 ] && [ "$root" = / ]; then
    # Mode 0 is the board's highest power mode (MAXN on Orin Nano 8GB: 15 W,
    # or 25 W/MAXN SUPER on JetPack 6.2); jetson_clocks pins clocks at max.
    say "nvpmodel -m 0; jetson_clocks"
    nvpmodel -m 0
    jetson_clocks
fi
say "done"
