"""The overlay sandbox inside the shipped unit's fences, under a real systemd
(the booted nspawn container of test_systemd_e2e.py).

A transient service (`systemd-run --pipe --wait`) gets every sandboxing
directive of systemd/aal-core.service as a property, the same seccomp
filter (@system-service + landlock_*), the same capability bounding set
(with CAP_SETUID/CAP_SETGID), PrivateNetwork=, RestrictAddressFamilies=,
and runs the installed /opt/aal-core Python: probe, plan and spawn of the
probe overlay in CLEAR and ASCEND.  It shows that what the README promises
holds there: overlays become the sysusers-made `aal-overlay`, Landlock is
usable (the filter lets its calls through), CLEAR is read-only and has no
socket, and the probe notices the inherited inet ban.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_systemd_e2e import box, staged  # noqa: F401 - module-scoped fixtures, one container

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).parent / "overlay_probes" / "probe.py"
# Directives of the unit that fence what the daemon and its children may do.
FENCES = {"NoNewPrivileges", "CapabilityBoundingSet", "RestrictSUIDSGID", "LockPersonality",
          "RestrictRealtime", "RestrictNamespaces", "MemoryDenyWriteExecute", "SystemCallArchitectures",
          "SystemCallFilter", "SystemCallErrorNumber", "ProtectSystem", "ProtectHome", "PrivateTmp",
          "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectHostname",
          "PrivateNetwork", "RestrictAddressFamilies", "UMask", "ReadWritePaths", "Group"}
WORK = "/srv/ovtest"

DRIVER = r"""
import asyncio, json, os, sys
from aal_core.config import OverlaysConfig
from aal_core.overlays import sandbox as sb
cfg = OverlaysConfig()
m = sb.probe(cfg)
out = {"mech": m.to_dict(cfg), "runs": {}}
async def go():
    for phase, cls in (("CLEAR", "analysis"), ("ASCEND", "exec")):
        conf = sb.plan(phase, cls, mechanisms=m, config=cfg)
        arg = {"dirs": {"parent": f"{W}/{phase}/parent", "child": f"{W}/{phase}/child"}, "port": 9,
               "signal_pid": os.getpid(), "probe_paths": ["/var/lib/aal-core"]}
        p = await sb.spawn(["/usr/bin/python3", f"{W}/probe.py", json.dumps(arg)], conf,
                           env={"PATH": "/usr/bin"}, cwd="{W}")
        o, e = await p.communicate()
        assert p.returncode == 0, e
        out["runs"][phase] = json.loads(o)
        out["runs"][phase]["enforced"] = list(conf.enforced)
        out["runs"][phase]["cleaned"] = conf.cleanup()
asyncio.run(go())
print(json.dumps(out))
""".replace("{W}", WORK)

SETUP = f"""set -e
rm -rf {WORK}; mkdir -p {WORK}; chmod 755 {WORK}
for phase in CLEAR ASCEND; do for who in parent child; do
  d={WORK}/$phase/$who; mkdir -p $d/emptydir
  for f in write otrunc truncate delete rename chmod utime; do echo original > $d/$f.txt; done
done; done
chown -R aal-overlay:aal-overlay {WORK}/CLEAR {WORK}/ASCEND
"""


def _fence_properties() -> list[str]:
    props = []
    for raw in (REPO / "systemd" / "aal-core.service").read_text().splitlines():
        line = raw.strip()
        key, sep, value = line.partition("=")
        if sep and key in FENCES:
            props += ["-p", f"{key}={value}"]
    return props + ["-p", f"ReadWritePaths={WORK}"]


def test_confinement_holds_inside_the_units_fences(box):  # noqa: F811 - the fixture
    box.run("sh", "-c", SETUP)
    box.write(f"{WORK}/probe.py", PROBE.read_text())
    box.write(f"{WORK}/driver.py", DRIVER)
    uid = int(box.run("id", "-u", "aal-overlay").stdout)
    r = box.run("systemd-run", "--quiet", "--wait", "--pipe", "--collect", *_fence_properties(),
                "/opt/aal-core/bin/python", f"{WORK}/driver.py", timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    mech = out["mech"]
    assert mech["identity"].startswith(f"aal-overlay (uid {uid},"), mech
    assert mech["clear"].startswith("landlock-abi") and mech["clear"].endswith("+seccomp"), mech
    assert mech["inet_denied_by_service"] is True, mech
    clear, ascend = out["runs"]["CLEAR"], out["runs"]["ASCEND"]
    for run in (clear, ascend):
        assert (run["uid"], run["groups"]) == (uid, []) and run["cleaned"] is True
        assert run["reads"] == {"/var/lib/aal-core": "EACCES"}
        assert run["signal"] == "EPERM"
    for who in ("parent", "child"):
        got = clear[who]
        assert got["scratch"] == "ok"
        assert all(got[op] in ("EACCES", "EPERM", "EXDEV") for op in got if op != "scratch"), got
        # ASCEND writes; the unit's RestrictAddressFamilies= still allows no inet socket.
        got = ascend[who]
        assert all(got[op] == "ok" for op in got if op not in ("tcp", "udp")), got
        assert got["tcp"] == got["udp"] == "EAFNOSUPPORT", got
    assert any("inherited" in e for e in ascend["enforced"])
    # Nothing of CLEAR's victims changed.
    listing = box.run("sh", "-c", f"cd {WORK}/CLEAR && find . | sort && cat */*.txt").stdout
    assert "new.txt" not in listing and "renamed" not in listing and "changed" not in listing
    assert listing.count("original") == 14
