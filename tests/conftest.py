import os

import pytest

from helpers import cleanup, start_daemon


@pytest.fixture
def daemon():
    """A real aal-core on a private socket, tegrastats off; stopped after the test."""
    d = start_daemon()
    yield d
    cleanup(d)


@pytest.fixture
def daemon_factory():
    """Start daemons with custom args/config: daemon_factory('--model', 'classic', config=...)."""
    started = []

    def make(*args, **kw):
        d = start_daemon(*args, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        cleanup(d)


# The slow tests TOOLS/test.sh also runs under CPython 3.10 (its second pass
# is `-m "not slow or py310"`): the daemon-level system tests of the newer
# units (overlays, train, export/fleet, venom, govern; keys has no slow one).
# The rest of the slow ones (systemd, install matrix, the cgroup v2 guest,
# the ledger's OpenSSL 1.1.1 build, sensing) run under .venv's Python only,
# to keep CI's time down; test_install_matrix builds and serves on 3.10 itself.
PY310_SLOW = frozenset({
    "test_overlay_daemon.py", "test_overlay_sandbox.py", "test_overlay_sandbox_unit.py",
    "test_train_proof.py",
    "test_export_prometheus.py", "test_export_rules.py", "test_export_grafana.py", "test_fleet_redis.py",
    "test_venom_e2e.py", "test_venom_harm.py", "test_venom_cooperating.py",
    "test_govern_cgroup.py", "test_govern_e2e.py", "test_govern_rpc.py", "test_govern_jobsignal.py",
    "test_govern_example.py",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PY310_SLOW and "slow" in item.keywords:
            item.add_marker(pytest.mark.py310)
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (cgroups / nspawn / second user)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
