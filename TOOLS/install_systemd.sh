#!/usr/bin/env bash
# Install aal-core as a systemd service: a venv at PREFIX (default
# /opt/aal-core) holding the built package, the units, the sysusers/tmpfiles
# snippets and a default config.  Idempotent: run it again to upgrade; an
# existing /etc/aal-core/aal-core.toml is never overwritten.
#
#   TOOLS/install_systemd.sh                 build from this checkout, install
#                                            into /, enable and start
#   TOOLS/install_systemd.sh --root DIR      stage everything under DIR (a
#                                            container tree, an image); no
#                                            systemctl, users not created
#
# Options:
#   --root DIR       install under DIR instead of / (implies --no-enable)
#   --prefix DIR     venv location as seen by the running system (/opt/aal-core)
#   --from PATH      a source tree (default: this checkout) or a built .whl
#   --python PY      interpreter for the venv (default: python3)
#   --no-venv        only units, snippets and config (venv already in place)
#   --no-enable      do not run systemd-sysusers/-tmpfiles/systemctl
#
# Exit codes: 0 done, 1 a step failed, 2 usage error.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root=/
prefix=/opt/aal-core
from="$here"
python=python3
do_venv=1
do_enable=1

usage() { sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
die() { echo "install_systemd: $*" >&2; exit 1; }
say() { echo "install_systemd: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) root="${2:?--root needs a directory}"; shift 2 ;;
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --from) from="${2:?--from needs a path}"; shift 2 ;;
        --python) python="${2:?--python needs an interpreter}"; shift 2 ;;
        --no-venv) do_venv=0; shift ;;
        --no-enable) do_enable=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install_systemd: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done

case "$prefix" in /*) ;; *) echo "install_systemd: --prefix must be absolute: $prefix" >&2; exit 2 ;; esac
root="$(realpath -m "$root")"
[ "$root" = / ] || do_enable=0
dest="${root%/}$prefix"          # where the venv is written now
etc="${root%/}/etc"

# --- checks first: a bad option must not leave half an install behind ------
if [ "$do_venv" = 1 ]; then
    if [ -f "$from" ]; then
        case "$from" in *.whl) ;; *) die "--from $from: not a source tree (no pyproject.toml) or a .whl" ;; esac
    elif [ ! -f "$from/pyproject.toml" ]; then
        die "--from $from: not a source tree (no pyproject.toml) or a .whl"
    fi
    command -v "$python" >/dev/null || die "no $python; install python3 (>= 3.10) and python3-venv"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || die "$python is $("$python" -V 2>&1); aal-core needs Python >= 3.10"
    "$python" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$python cannot create venvs; apt-get install python3-venv"
fi

# --- the venv ---------------------------------------------------------------
if [ "$do_venv" = 1 ]; then
    [ -x "$dest/bin/python" ] || "$python" -m venv "$dest"
    pip=("$dest/bin/python" -m pip install -q --disable-pip-version-check -c "$here/TOOLS/constraints.txt")
    if [ -f "$from" ]; then
        wheel="$from"
    else
        # Build a wheel with the pinned build dependencies, then install it:
        # the same steps as TOOLS/setup.sh, with no x86-only flags (aarch64).
        # The build tools go into a throw-away venv, not into the service's.
        say "building aal-core from $from"
        wheels="$(mktemp -d)"
        trap 'rm -rf "$wheels"' EXIT
        "$python" -m venv "$wheels/venv"
        "$wheels/venv/bin/python" -m pip install -q --disable-pip-version-check \
            -c "$here/TOOLS/constraints.txt" setuptools wheel Cython grpcio-tools
        "$wheels/venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
            --no-build-isolation -c "$here/TOOLS/constraints.txt" -w "$wheels" "$from"
        wheel="$(ls "$wheels"/aal_core-*.whl)"
    fi
    say "installing $(basename "$wheel") into $prefix"
    "${pip[@]}" "$wheel"                                  # its dependencies
    "${pip[@]}" --no-deps --force-reinstall "$wheel"      # this build, even if same version
    if [ "$dest" != "$prefix" ]; then
        # Staged install: the scripts must name the venv where it will run.
        for f in "$dest"/bin/*; do
            if [ -f "$f" ] && [ ! -L "$f" ] && grep -Iq . "$f" 2>/dev/null; then
                sed -i "s|$dest|$prefix|g" "$f"
            fi
        done
    fi
    "$dest/bin/python" -c 'import aal_core.__main__' || die "the installed package does not import"
fi

# --- units, snippets, config -----------------------------------------------
install -d -m 0755 "$etc/systemd/system" "$etc/sysusers.d" "$etc/tmpfiles.d" "$etc/aal-core"
for unit in aal-core.service aal-core.socket aal-core-export.service; do
    sed "s|/opt/aal-core/|$prefix/|g" "$here/systemd/$unit" > "$etc/systemd/system/$unit.tmp"
    chmod 0644 "$etc/systemd/system/$unit.tmp"
    mv -f "$etc/systemd/system/$unit.tmp" "$etc/systemd/system/$unit"
done
install -m 0644 "$here/systemd/aal-core.sysusers" "$etc/sysusers.d/aal-core.conf"
install -m 0644 "$here/systemd/aal-core.tmpfiles" "$etc/tmpfiles.d/aal-core.conf"
if [ -e "$etc/aal-core/aal-core.toml" ]; then
    say "keeping existing $etc/aal-core/aal-core.toml"
else
    install -m 0644 "$here/systemd/aal-core.toml" "$etc/aal-core/aal-core.toml"
fi
say "installed units, sysusers.d, tmpfiles.d and config under $etc"

[ "$do_enable" = 1 ] || { say "done (not enabled: --root or --no-enable)"; exit 0; }

# --- users, directories, enable ---------------------------------------------
[ "$(id -u)" = 0 ] || die "enabling needs root (or use --no-enable)"
if command -v systemd-sysusers >/dev/null; then
    systemd-sysusers /etc/sysusers.d/aal-core.conf
else  # systemd < 215 has no sysusers; same result by hand
    getent group aal >/dev/null || groupadd --system aal
    getent passwd aal-core >/dev/null || useradd --system --home-dir /var/lib/aal-core \
        --no-create-home --shell /usr/sbin/nologin --groups aal aal-core
fi
systemd-tmpfiles --create /etc/tmpfiles.d/aal-core.conf
if [ ! -d /run/systemd/system ]; then
    say "systemd is not running here (no /run/systemd/system); installed but not started"
    exit 0
fi
systemctl daemon-reload
systemctl enable aal-core.socket aal-core.service
if systemctl is-active --quiet aal-core.service; then
    systemctl restart aal-core.service      # pick up the new build
else
    systemctl start aal-core.socket aal-core.service
fi
say "aal-core is running: systemctl status aal-core; $prefix/bin/aalctl status"
