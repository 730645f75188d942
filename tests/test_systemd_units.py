"""The shipped systemd files, checked without booting anything.

`systemd-analyze verify` and `security --offline`, the sysusers/tmpfiles
snippets applied to a scratch root by the real systemd-sysusers and
systemd-tmpfiles, the unit's directives against what the daemon's code
expects (exit codes, socket path, group), the example config against the
config loader, and TOOLS/install_systemd.sh / orin_nano_prep.sh in their
no-root modes.  The booted end-to-end test is test_systemd_e2e.py.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aal_core import __main__ as cli
from aal_core import config as config_mod

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
INSTALL = REPO / "TOOLS/install_systemd.sh"
PREP = REPO / "TOOLS/orin_nano_prep.sh"
BIN = Path(sys.executable).parent


def need(tool: str) -> str:
    """Fail, not skip: TOOLS/setup.sh --test installs every one of them
    (systemd-container brings systemd; shellcheck)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (TOOLS/setup.sh --test installs it)")
    return path


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """systemd.syntax(7): sections of keys, a key may repeat; no continuation lines used here."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = out.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def units(tmp_path) -> Path:
    """The two units in a directory, ExecStart pointing at this venv's aal-core
    (verify checks that the executable exists)."""
    d = tmp_path / "units"
    d.mkdir()
    for name in ("aal-core.service", "aal-core.socket"):
        text = (SYSTEMD / name).read_text().replace("/opt/aal-core/bin/", f"{BIN}/")
        (d / name).write_text(text)
    return d


def test_systemd_analyze_verify(units):
    need("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "verify", str(units / "aal-core.socket"),
                        str(units / "aal-core.service")], capture_output=True, text=True, timeout=60)
    # Any output is a warning (unknown directive, bad value, missing unit): none allowed.
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_systemd_analyze_verify_catches_a_broken_unit(units):
    """The check above can fail: a misspelt directive is reported."""
    need("systemd-analyze")
    svc = units / "aal-core.service"
    svc.write_text(svc.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    r = subprocess.run(["systemd-analyze", "verify", str(svc)], capture_output=True, text=True, timeout=60)
    assert "NoNewPrivilege" in r.stdout + r.stderr


def test_security_exposure_stays_low(units):
    need("systemd-analyze")
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        str(units / "aal-core.service")], capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for aal-core.service: ([\d.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    # 2.9 when written ("OK"); root with six capabilities cannot get much lower.
    # 3.1 with CAP_SETUID/CAP_SETGID for the overlay user (README "Confinement").
    assert float(m.group(1)) <= 3.5, r.stdout


def test_service_matches_the_daemon():
    svc = parse_unit(SYSTEMD / "aal-core.service")
    s = svc["Service"]
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["Restart"] == "on-failure" and one["WatchdogSec"]
    # Exit codes that a restart cannot fix are the daemon's own constants.
    assert set(one["RestartPreventExitStatus"].split()) == {str(cli.EXIT_CONFIG), str(cli.EXIT_STATE)}
    assert one["ExecStart"].split()[:2] == ["/opt/aal-core/bin/aal-core", "run"]
    assert config_mod.DEFAULT_CONFIG_FILE in one["ExecStart"]
    d = config_mod.DaemonConfig()
    assert one["StateDirectory"] == os.path.basename(d.state_dir)
    assert "/run/" + one["RuntimeDirectory"] == os.path.dirname(d.socket)
    assert one["ConfigurationDirectory"] == os.path.basename(os.path.dirname(config_mod.DEFAULT_CONFIG_FILE))
    # The socket unit's file lives in RuntimeDirectory: a stop must not remove it.
    assert one["RuntimeDirectoryPreserve"] == "yes"
    assert one["Group"] == config_mod.RpcConfig().group
    for key, value in {"ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                       "NoNewPrivileges": "yes", "ProtectKernelTunables": "yes",
                       "ProtectKernelModules": "yes", "RestrictSUIDSGID": "yes",
                       "MemoryDenyWriteExecute": "yes", "PrivateNetwork": "yes",
                       "RestrictAddressFamilies": "AF_UNIX"}.items():
        assert one.get(key) == value, key
    assert "/sys/fs/cgroup" in one["ReadWritePaths"].split()
    assert "ProtectControlGroups" not in s  # would make /sys/fs/cgroup read-only
    caps = set(one["CapabilityBoundingSet"].split())
    assert caps and caps <= {"CAP_KILL", "CAP_SYS_PTRACE", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH",
                             "CAP_SYS_RESOURCE", "CAP_SETUID", "CAP_SETGID"}
    # Overlays run as aal-overlay (README "Confinement"): the child changes ids, and enters a
    # Landlock domain, whose calls @system-service does not include.
    assert {"CAP_SETUID", "CAP_SETGID"} <= caps
    filters = " ".join(s["SystemCallFilter"]).split()
    assert {"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"} <= set(filters)
    assert svc["Unit"]["Requires"] == ["aal-core.socket"] and svc["Unit"]["After"] == ["aal-core.socket"]
    assert svc["Install"]["Also"] == ["aal-core.socket"]


def test_socket_matches_the_daemon():
    sock = parse_unit(SYSTEMD / "aal-core.socket")["Socket"]
    assert sock["ListenStream"] == [config_mod.DaemonConfig().socket]
    assert sock["SocketGroup"] == [config_mod.RpcConfig().group]
    assert sock["SocketMode"] == ["0660"]
    assert sock["RemoveOnStop"] == ["yes"]


@pytest.mark.root  # systemd-tmpfiles chowns to the new group
def test_sysusers_and_tmpfiles_on_a_scratch_root(tmp_path):
    need("systemd-sysusers")
    need("systemd-tmpfiles")
    (tmp_path / "etc/sysusers.d").mkdir(parents=True)
    (tmp_path / "etc/tmpfiles.d").mkdir(parents=True)
    shutil.copy(SYSTEMD / "aal-core.sysusers", tmp_path / "etc/sysusers.d/aal-core.conf")
    shutil.copy(SYSTEMD / "aal-core.tmpfiles", tmp_path / "etc/tmpfiles.d/aal-core.conf")
    r = subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    users = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    assert groups["aal"][3] == "aal-core"                       # the service account is a member
    assert int(users["aal-core"][2]) < 1000                      # a system user
    assert users["aal-core"][6].endswith("nologin")
    assert users["aal-core"][5] == config_mod.DaemonConfig().state_dir
    # The overlay user: a system user in no group of aal-core's, named as the config's default.
    ov = config_mod.OverlaysConfig().user
    assert int(users[ov][2]) < 1000 and users[ov][6].endswith("nologin")
    assert ov not in groups["aal"][3].split(",") and int(users[ov][3]) != int(groups["aal"][2])
    r = subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = (tmp_path / "var/lib/aal-core").stat()
    assert (oct(st.st_mode & 0o7777), st.st_uid, st.st_gid) == ("0o750", 0, int(groups["aal"][2]))
    assert (tmp_path / "run/aal-core").is_dir()


def _commented_settings(text: str) -> list[tuple[str, str]]:
    """(section, 'key = value') for each commented-out setting in the example."""
    out, section = [], None
    for line in text.splitlines():
        if line.startswith("[") and line.rstrip().endswith("]"):
            section = line.strip()[1:-1]
        m = re.match(r"#\s*([a-z_]+\s*=\s*.+)$", line)
        if m and section:
            out.append((section, m.group(1)))
    return out


def test_example_config_is_valid_and_documents_the_defaults(tmp_path):
    path = SYSTEMD / "aal-core.toml"
    assert config_mod.load(str(path)) == config_mod.Config()     # everything commented: defaults
    settings = _commented_settings(path.read_text())
    assert len(settings) >= 10
    # Uncommented, every documented value must load and equal the default it claims to be.
    merged: dict[str, list[str]] = {}
    for section, kv in settings:
        merged.setdefault(section, []).append(kv)
    uncommented = tmp_path / "all.toml"
    uncommented.write_text("\n".join(f"[{s}]\n" + "\n".join(kvs) for s, kvs in merged.items()))
    assert config_mod.load(str(uncommented)) == config_mod.Config(), uncommented.read_text()


def test_exit_codes_are_documented():
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## systemd\n", 1)[1].split("\n## ", 1)[0]
    for name in ("EXIT_OK", "EXIT_FAIL", "EXIT_CONFIG", "EXIT_LISTEN", "EXIT_STATE"):
        code = getattr(cli, name)
        assert re.search(rf"^\|\s*{code}\s*\|", section, re.M), f"exit code {code} ({name}) not in README"


# --- TOOLS/install_systemd.sh, without a venv or systemctl -------------------

def run_script(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "LC_ALL": "C"})


def test_install_staged_files_and_idempotence(tmp_path):
    root = tmp_path / "root"
    r = run_script(str(INSTALL), "--root", str(root), "--no-venv")
    assert r.returncode == 0, r.stderr
    etc = root / "etc"
    assert (etc / "systemd/system/aal-core.service").read_text() == (SYSTEMD / "aal-core.service").read_text()
    assert (etc / "systemd/system/aal-core.socket").read_text() == (SYSTEMD / "aal-core.socket").read_text()
    assert (etc / "sysusers.d/aal-core.conf").read_text() == (SYSTEMD / "aal-core.sysusers").read_text()
    assert (etc / "tmpfiles.d/aal-core.conf").read_text() == (SYSTEMD / "aal-core.tmpfiles").read_text()
    cfg = etc / "aal-core/aal-core.toml"
    assert cfg.read_text() == (SYSTEMD / "aal-core.toml").read_text()
    assert oct(cfg.stat().st_mode & 0o777) == "0o644"
    # A second run keeps the administrator's config and leaves the rest as it was.
    cfg.write_text("[daemon]\nlog_level = \"debug\"\n")
    r = run_script(str(INSTALL), "--root", str(root), "--no-venv")
    assert r.returncode == 0 and "keeping existing" in r.stderr, r.stderr
    assert cfg.read_text() == "[daemon]\nlog_level = \"debug\"\n"
    assert not list(root.rglob("*.tmp"))


def test_install_other_prefix_rewrites_execstart(tmp_path):
    r = run_script(str(INSTALL), "--root", str(tmp_path), "--no-venv", "--prefix", "/usr/local/aal")
    assert r.returncode == 0, r.stderr
    svc = (tmp_path / "etc/systemd/system/aal-core.service").read_text()
    assert "ExecStart=/usr/local/aal/bin/aal-core run" in svc and "/opt/aal-core/" not in svc


@pytest.mark.parametrize("args, code, text", [
    (["--bogus"], 2, "unknown option --bogus"),
    (["--prefix", "relative/dir"], 2, "--prefix must be absolute"),
    (["--from", "/nonexistent/aal.tar"], 1, "not a source tree"),
    (["--python", "/nonexistent/python3"], 1, "no /nonexistent/python3"),
])
def test_install_bad_usage_is_a_clear_error(tmp_path, args, code, text):
    r = run_script(str(INSTALL), "--root", str(tmp_path / "r"), *args)
    assert r.returncode == code, r.stderr
    assert text in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r/etc").exists()  # nothing half-installed


def test_scripts_are_shellcheck_clean():
    need("shellcheck")
    scripts = sorted(str(p) for p in (REPO / "TOOLS").glob("*.sh")) + [str(REPO / ".ci/run")]
    assert str(INSTALL) in scripts and len(scripts) >= 6, scripts
    r = run_script("shellcheck", *scripts)
    assert r.returncode == 0, r.stdout


# --- TOOLS/orin_nano_prep.sh, on Debian (not a Jetson) ----------------------

def test_prep_on_a_non_jetson_warns_and_stages(tmp_path):
    r = run_script(str(PREP), "--root", str(tmp_path), "--no-venv", "--no-apt")
    assert r.returncode == 0, r.stderr
    assert "not a Jetson" in r.stderr
    assert (tmp_path / "etc/systemd/system/aal-core.service").exists()
    assert "nvpmodel -m 0" not in r.stderr  # performance modes only on request


def test_prep_reads_the_l4t_release(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8\n")
    r = run_script(str(PREP), "--root", str(tmp_path), "--no-venv", "--no-apt")
    assert r.returncode == 0, r.stderr
    assert "L4T 36.4.3" in r.stderr and "not a Jetson" not in r.stderr


def test_prep_refuses_max_performance_off_a_jetson(tmp_path):
    r = run_script(str(PREP), "--root", str(tmp_path), "--no-venv", "--no-apt", "--max-performance")
    assert r.returncode == 1 and "--max-performance" in r.stderr
    assert not (tmp_path / "etc/systemd").exists()


def test_prep_bad_usage(tmp_path):
    r = run_script(str(PREP), "--nope")
    assert r.returncode == 2 and "unknown option --nope" in r.stderr
