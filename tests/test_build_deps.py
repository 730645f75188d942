"""setup.py builds what the sources say after a `git pull` or a merge
(README "Development"): a changed .pxd (the module's own, which Cython's
dependency tree does not look up) regenerates the .c, a changed header
recompiles the extension, changed Cython directives regenerate every .c,
and nothing changed rebuilds nothing.  A scratch project with the real
setup.py and one extension laid out as ext/ is (own .pxd in ext/aal_core/,
header in ext/includes/), built by setuptools' build_ext into build/ as
pip's in-tree build does."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow    # five small builds, ~15 s

PYX = "def values():\n    return FROM_PXD, FROM_H\n"
PXD = 'cdef enum:\n    FROM_PXD = {}\n\ncdef extern from "probe.h":\n    int FROM_H\n'
HEADER = "#define FROM_H {}\n"


def change(proj: Path, rel: str, text: str) -> None:
    """What a checkout does: every file already there (sources and build
    outputs) is moved 100 s into the past, as if time had passed since the
    last build (mtimes are coarse), then `rel` is written now."""
    for f in proj.rglob("*"):
        if f.is_file():
            t = f.stat().st_mtime - 100
            os.utime(f, (t, t))
    (proj / rel).write_text(text)


def build(proj: Path, **env) -> str:
    r = subprocess.run([sys.executable, "setup.py", "build_ext"], cwd=proj, capture_output=True, text=True,
                       timeout=180, env={**os.environ, **env})
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def values(proj: Path):
    """The built module's values(), loaded from build/lib.* in a fresh
    interpreter (the installed aal_core package has no probe)."""
    (so,) = proj.glob("build/lib.*/aal_core/probe.*.so")
    code = ("import importlib.util as u, sys; s = u.spec_from_file_location('aal_core.probe', sys.argv[1]); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); print(m.values())")
    r = subprocess.run([sys.executable, "-c", code, str(so)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return eval(r.stdout)


def test_setup_rebuilds_what_changed_and_only_that(tmp_path):
    proj = tmp_path / "proj"
    (proj / "ext/aal_core").mkdir(parents=True)
    (proj / "ext/includes").mkdir()
    shutil.copy(REPO / "setup.py", proj / "setup.py")
    (proj / "ext/probe.pyx").write_text(PYX)
    (proj / "ext/aal_core/probe.pxd").write_text(PXD.format(1))
    (proj / "ext/includes/probe.h").write_text(HEADER.format(10))
    c = proj / "ext/probe.c"
    build(proj)
    assert values(proj) == (1, 10)

    change(proj, "ext/aal_core/probe.pxd", PXD.format(2))
    out = build(proj)
    assert "regenerating ext/probe.c (ext/aal_core/probe.pxd is newer)" in out
    assert values(proj) == (2, 10)

    change(proj, "ext/includes/probe.h", HEADER.format(11))
    before = c.stat().st_mtime_ns
    out = build(proj)
    assert "regenerating" not in out and c.stat().st_mtime_ns == before   # the .c is the same C
    assert values(proj) == (2, 11)                                          # but it was compiled again

    out = build(proj, AAL_CYTHON_DEBUG="1")
    assert "regenerating ext/probe.c (the Cython version or directives changed)" in out
    assert '"boundscheck": true' in (proj / "build/cython-options.json").read_text()
    before = c.stat().st_mtime_ns
    out = build(proj, AAL_CYTHON_DEBUG="1")
    assert "regenerating" not in out and "Cythonizing" not in out and c.stat().st_mtime_ns == before
    assert values(proj) == (2, 11)
