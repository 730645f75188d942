"""systemd/aal-core-export.service: valid, unprivileged, localhost-only network,
installed by TOOLS/install_systemd.sh beside the daemon's units."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_systemd_units import INSTALL, SYSTEMD, parse_unit

BIN = Path(sys.executable).parent
UNIT = SYSTEMD / "aal-core-export.service"


@pytest.fixture
def unit(tmp_path) -> Path:
    p = tmp_path / "aal-core-export.service"
    p.write_text(UNIT.read_text().replace("/opt/aal-core/bin/", f"{BIN}/"))
    return p


def test_verify_and_exposure(unit):
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for aal-core-export.service: ([\d.]+)", r.stdout + r.stderr)
    assert m and float(m.group(1)) <= 2.0, r.stdout     # 1.1 when written


def test_unprivileged_with_only_the_network_it_needs():
    svc = parse_unit(UNIT)["Service"]
    assert svc["User"] == ["aal-core"] and svc["Group"] == ["aal"]
    assert svc["CapabilityBoundingSet"] == [""] and svc["NoNewPrivileges"] == ["yes"]
    assert svc["IPAddressDeny"] == ["any"] and svc["IPAddressAllow"] == ["localhost"]
    assert "PrivateNetwork" not in svc
    assert svc["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert svc["ExecStart"] == ["/opt/aal-core/bin/aal-core export --config /etc/aal-core/aal-core.toml"]
    # The daemon's unit keeps no network at all.
    daemon = parse_unit(SYSTEMD / "aal-core.service")["Service"]
    assert daemon["PrivateNetwork"] == ["yes"] and daemon["RestrictAddressFamilies"] == ["AF_UNIX"]


def test_installed_with_the_other_units(tmp_path):
    r = subprocess.run([str(INSTALL), "--root", str(tmp_path), "--no-venv"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "etc/systemd/system/aal-core-export.service").read_text() == UNIT.read_text()
