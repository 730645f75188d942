"""aal-core installs where its users are (README "Install matrix").

- JetPack 6 is Ubuntu 22.04 with CPython 3.10 on aarch64: the wheel is built
  with a real Python 3.10 (the machine's pyenv 3.10) by the user's own path,
  TOOLS/orin_nano_prep.sh -> TOOLS/install_systemd.sh (a 3.10 build venv with
  the pinned build tools, a fresh 3.10 service venv installed with
  -c TOOLS/constraints.txt), and the daemon started from that venv answers
  system.health and stress.get through that venv's aalctl.
- Every runtime and build requirement, pinned as TOOLS/constraints.txt pins it
  for that Python, resolves, with all its dependencies, to binary wheels for
  CPython 3.10/3.11/3.12 on aarch64 (manylinux2014 .. manylinux_2_35: glibc
  2.35 is Ubuntu 22.04's) and on x86_64, from the package index alone (not this
  machine's local wheel folders).  A pin that publishes only an sdist must
  build to a pure-Python wheel.  The lists come from pyproject.toml, so they
  cannot drift from what `pip install .` asks for.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import short_tmpdir, wait_for, without_systemd_env

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CONSTRAINTS = REPO / "TOOLS/constraints.txt"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

pytestmark = pytest.mark.slow


# -- helpers ---------------------------------------------------------------

def target_env(python: str, machine: str) -> dict:
    """PEP 508 marker environment of a Linux CPython `python` on `machine`."""
    return {"python_version": python, "python_full_version": python + ".0", "platform_machine": machine,
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "platform_release": "", "platform_version": "", "implementation_version": python + ".0",
            "extra": ""}


def constraint_pins(env: dict) -> dict[str, Requirement]:
    """TOOLS/constraints.txt as it applies in `env` (markers evaluated there:
    pip evaluates them for the interpreter it runs on, not for --python-version)."""
    pins: dict[str, Requirement] = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            name = canonicalize_name(req.name)
            assert name not in pins, f"{CONSTRAINTS}: two pins of {req.name} apply on {env['python_version']}"
            pins[name] = req
    return pins


def pinned(requirements: list[str], env: dict) -> list[str]:
    """name==version for every requirement that applies in `env`, from the
    constraints; each must be pinned exactly, to a version it accepts."""
    pins = constraint_pins(env)
    out = []
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        pin = pins.get(canonicalize_name(req.name))
        assert pin is not None, f"{req.name} (pyproject.toml) is not pinned in {CONSTRAINTS}"
        specs = list(pin.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{CONSTRAINTS}: {pin} is not an exact pin"
        assert req.specifier.contains(specs[0].version, prereleases=True), \
            f"{CONSTRAINTS} pins {pin}, outside pyproject.toml's {req}"
        out.append(f"{req.name}=={specs[0].version}")
    return out


def index_env() -> dict:
    """The package index as a board sees it: no local config, find-links,
    extra indexes or machine-wide constraints."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT", "PIP_INDEX_URL", "PIP_CACHE_DIR")}
    env["PIP_CONFIG_FILE"] = os.devnull
    if "PIP_CERT" not in env and os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        env["PIP_CERT"] = "/etc/ssl/certs/ca-certificates.crt"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def pip(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          timeout=timeout, env=index_env())


def platform_args(machine: str, python: str) -> list[str]:
    tags = ["manylinux2014_" + machine] + [f"manylinux_2_{m}_{machine}" for m in range(17, 36)]
    abi = "cp" + python.replace(".", "")
    return [a for t in tags for a in ("--platform", t)] + [
        "--python-version", python, "--implementation", "cp", "--abi", abi]


COMPILED = re.compile(r"\.(c|cc|cpp|cxx|h|pyx|rs|f|f90|go)$|(^|/)(CMakeLists\.txt|meson\.build|Cargo\.toml)$")


def pure_wheel_from_sdist(spec: str, work: Path) -> Path:
    """Fetch the sdist of `spec` (a pin with no wheel at all), check that it
    holds no code to compile, build it and check the wheel is pure Python."""
    sdists = work / "sdist"
    r = pip("download", "-q", "--no-deps", "--no-binary", ":all:", "-d", str(sdists), spec)
    assert r.returncode == 0, f"pip download {spec}:\n{r.stderr}"
    (archive,) = sdists.iterdir()      # a fresh folder per pin
    if archive.suffix == ".zip":
        names = zipfile.ZipFile(archive).namelist()
    else:
        with tarfile.open(archive) as tf:
            names = tf.getnames()
    compiled = [n for n in names if COMPILED.search(n)]
    assert not compiled, f"{spec} has no wheel for the board and its sdist needs compiling there: {compiled[:5]}"
    wheels = work / "built"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(wheels), str(archive)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"building {archive.name}:\n{r.stderr}"
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name.endswith("-none-any.whl"), f"{spec}'s sdist builds {wheel.name}, not a pure-Python wheel"
    return wheel


def resolve(reqs: list[str], machine: str, python: str, work: Path, *extra: str) -> list[dict]:
    """pip's resolution of `reqs` for the target (metadata only), as the
    report's install list."""
    env = target_env(python, machine)
    work.mkdir(parents=True, exist_ok=True)
    cons = work / "constraints.txt"
    cons.write_text("".join(f"{p.name}{p.specifier}\n" for p in constraint_pins(env).values()))
    report = work / "report.json"
    if report.exists():
        report.unlink()
    r = pip("install", "-q", "--dry-run", "--ignore-installed", "--target", str(work / "target"),
            "--report", str(report), "-c", str(cons), *platform_args(machine, python), *extra, *reqs)
    assert r.returncode == 0, f"cp{python} {machine}: {' '.join(reqs)}\n{r.stdout}\n{r.stderr}"
    return json.loads(report.read_text())["install"]


RUNTIME = PYPROJECT["project"]["dependencies"]
BUILD = PYPROJECT["build-system"]["requires"]
# x86_64 cp311 is this machine's own venv (TOOLS/setup.sh); ~10 s a target.
TARGETS = [("aarch64", "3.10"), ("aarch64", "3.11"), ("aarch64", "3.12"), ("x86_64", "3.10"), ("x86_64", "3.12")]


@pytest.fixture(scope="module")
def pure_wheels(tmp_path_factory) -> dict:
    """Pure-Python wheels built here from sdist-only pins, by pin (built once)."""
    return {"dir": tmp_path_factory.mktemp("pure")}


@pytest.mark.parametrize("machine,python", TARGETS, ids=[f"cp{p.replace('.', '')}-{m}" for m, p in TARGETS])
def test_runtime_and_build_requirements_resolve_to_wheels(machine, python, pure_wheels, tmp_path):
    env = target_env(python, machine)
    direct = pinned(RUNTIME, env) + pinned(BUILD, env)
    assert any(r.startswith("numpy==") for r in direct) and any(r.startswith("Cython==") for r in direct)
    # 1. the pins alone: a wheel for the target, or (no wheel at all) an sdist.
    got = resolve(direct, machine, python, tmp_path / "direct", "--no-deps", "--prefer-binary",
                  "--no-build-isolation")
    assert sorted(canonicalize_name(i["metadata"]["name"]) for i in got) == \
        sorted(canonicalize_name(r.split("==")[0]) for r in direct)
    reqs = []
    for item in got:
        spec = f"{item['metadata']['name']}=={item['metadata']['version']}"
        assert spec in direct, f"{spec} is not what {CONSTRAINTS} pins"
        if item["download_info"]["url"].endswith(".whl"):
            reqs.append(spec)
        else:
            if spec not in pure_wheels:
                pure_wheels[spec] = pure_wheel_from_sdist(spec, pure_wheels["dir"] / spec)
            reqs.append(str(pure_wheels[spec]))
    # 2. with every dependency: binary (or pure-Python) wheels only.
    got = resolve(reqs, machine, python, tmp_path / "closure", "--only-binary=:all:")
    urls = [i["download_info"]["url"] for i in got]
    assert urls and all(u.endswith(".whl") for u in urls), urls
    versions = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in got}
    assert versions["numpy"] == ("2.2.6" if python == "3.10" else versions["numpy"])
    if python == "3.10":
        assert "tomli" in versions     # the daemon's TOML parser there


def test_test_and_bench_pins_have_wheels_on_cp310_aarch64(tmp_path):
    """The test/bench extras are installed on a board only to run the suite
    or the benchmarks; their pins must at least exist there."""
    env = target_env("3.10", "aarch64")
    extras = PYPROJECT["project"]["optional-dependencies"]
    direct = sorted(set(pinned([r for name in ("test", "bench", "client-torch") for r in extras[name]], env)))
    got = resolve(direct, "aarch64", "3.10", tmp_path, "--no-deps", "--only-binary=:all:")
    assert len(got) == len(direct)


# -- a real Python 3.10: build, install, serve ---------------------------------

def python310() -> str:
    """A CPython 3.10 that can make venvs: pyenv's newest 3.10.x, else
    python3.10 on PATH.  None is a failure: CI's machine has pyenv 3.10."""
    candidates = []
    pyenv = shutil.which("pyenv") or os.path.expanduser("~/.pyenv/bin/pyenv")
    if os.access(pyenv, os.X_OK):
        r = subprocess.run([pyenv, "versions", "--bare"], capture_output=True, text=True, timeout=30)
        found = [v.strip() for v in r.stdout.splitlines() if re.fullmatch(r"3\.10\.\d+", v.strip())]
        for v in sorted(found, key=lambda s: int(s.split(".")[2]), reverse=True):
            p = subprocess.run([pyenv, "prefix", v], capture_output=True, text=True, timeout=30)
            if p.returncode == 0:
                candidates.append(os.path.join(p.stdout.strip(), "bin", "python3.10"))
    if shutil.which("python3.10"):
        candidates.append(shutil.which("python3.10"))
    for c in candidates:
        r = subprocess.run([c, "-c", "import sys, venv, ensurepip, sysconfig, os; "
                            "assert sys.version_info[:2] == (3, 10); "
                            "assert os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')); "
                            "print(sys.executable)"], capture_output=True, text=True, timeout=60)
        if r.returncode == 0:
            return r.stdout.strip()
    pytest.fail("no CPython 3.10 with venv and its headers (tried pyenv's 3.10.x and python3.10 on PATH: "
                f"{candidates or 'none found'}); install one: `pyenv install 3.10` or apt-get install python3.10-venv "
                "python3.10-dev")


def aalctl(venv: Path, sock: str, method: str) -> dict:
    r = subprocess.run([str(venv / "bin/python"), "-I", str(venv / "bin/aalctl"), "--socket", sock, "call", method],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"aalctl call {method}: {r.stderr}"
    return json.loads(r.stdout)


def test_python310_build_install_and_serve(tmp_path):
    py = python310()
    root = tmp_path / "root"
    # The user's path on a board: orin_nano_prep.sh -> install_systemd.sh
    # (staged: no apt, no systemctl).
    r = subprocess.run([str(REPO / "TOOLS/orin_nano_prep.sh"), "--root", str(root), "--no-apt", "--python", py],
                       capture_output=True, text=True, timeout=480)
    assert r.returncode == 0, f"orin_nano_prep.sh --python {py} failed:\n{r.stderr[-6000:]}"
    assert re.search(r"installing aal_core-[^ ]*-cp310-cp310-linux_[a-z0-9_]+\.whl", r.stderr), r.stderr[-3000:]
    venv = root / "opt/aal-core"
    assert (venv / "pyvenv.cfg").read_text().count("version = 3.10.") == 1
    # The service venv holds what the constraints pin for 3.10.
    r = subprocess.run([str(venv / "bin/python"), "-I", "-c",
                        "import importlib.metadata as m, json; "
                        "print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"],
                       capture_output=True, text=True, timeout=60)
    installed = json.loads(r.stdout)
    for name, pin in constraint_pins(target_env("3.10", os.uname().machine)).items():
        if name in installed and name not in ("pip", "setuptools"):
            assert pin.specifier.contains(installed[name]), f"{name} {installed[name]} is not {pin}"
    assert "tomli" in installed and installed["numpy"].startswith("2.2.")

    base = short_tmpdir("aal310")
    sock = os.path.join(base, "aal-core.sock")
    err = open(os.path.join(base, "daemon.stderr"), "wb")
    proc = subprocess.Popen([str(venv / "bin/python"), "-I", str(venv / "bin/aal-core"), "run", "--local", base,
                             "--tegrastats", "replay"], stdout=subprocess.DEVNULL, stderr=err,
                            env=without_systemd_env())
    try:
        def healthy():
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}: {Path(base, 'daemon.stderr').read_text()}")
            return os.path.exists(sock) and aalctl(venv, sock, "system.health").get("ok")
        wait_for(healthy, timeout=30, what="the 3.10 daemon's system.health")
        # It is the 3.10 interpreter that serves.
        assert os.path.realpath(f"/proc/{proc.pid}/exe") == os.path.realpath(py)
        health = aalctl(venv, sock, "system.health")
        assert health["ok"] is True and health["uptime_s"] >= 0
        # stress.get: the model has run on replayed tegrastats samples
        # (parsed by the 3.10 build of the Cython parser).
        stress = wait_for(lambda: (s := aalctl(venv, sock, "stress.get")).get("power_mw") and s,
                          timeout=20, what="a stress sample with tegrastats data")
        assert stress["band"] in ("LOW", "MODERATE", "HIGH", "CRITICAL"), stress
        assert 0.0 <= stress["stress"] <= 1.0 and stress["seq"] >= 1, stress
        assert stress["power_mw"] > 0 and stress["temp_c"] > 0 and stress["model"], stress
        assert 0.0 <= stress["components"]["used"] <= 1.0, stress
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        err.close()
        log = Path(base, "daemon.stderr").read_text(errors="replace")
        shutil.rmtree(base, ignore_errors=True)
    assert rc == 0, log
