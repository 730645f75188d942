import os
import sys

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
# units (overlays, export/fleet, venom, govern; keys and train have none that
# is slow but these: train's cgroup proof, ~60 s, and the overlay sandbox in
# the nspawn container, ~90 s, whose Python is the container's /usr/bin one,
# stay on .venv's Python).  So do the other slow ones (systemd, install
# matrix, which builds and serves on a real 3.10 itself, the cgroup v2
# guest, the ledger on OpenSSL 1.1.1, sensing and server system tests), to
# keep CI's time down.
PY310_SLOW = frozenset({
    "test_overlay_daemon.py", "test_overlay_sandbox.py",
    "test_export_prometheus.py", "test_export_rules.py", "test_export_grafana.py", "test_fleet_redis.py",
    "test_venom_e2e.py", "test_venom_harm.py", "test_venom_cooperating.py",
    "test_govern_cgroup.py", "test_govern_e2e.py", "test_govern_rpc.py", "test_govern_jobsignal.py",
    "test_govern_example.py",
})
# Tests that run this interpreter as a second, unprivileged user.
AS_OTHER_USER = frozenset({"test_a_non_root_daemon_still_confines_clear",
                           # test_overlay_reads.py: its daemon runs as an ordinary user
                           "test_clear_cannot_read_the_daemons_state_or_key_even_as_its_own_uid",
                           "test_io_uring_is_refused_in_every_phase"})


def others_can_load_this_python() -> bool:
    """Whether another user can load this interpreter's libpython: a pyenv
    Python under /root (0700) cannot be (3.11 gets by on the system's own
    libpython3.11; there is no system 3.10).  A board's /usr/bin/python3.10
    can."""
    import sysconfig
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir:
        return True
    d = os.path.realpath(libdir)
    while True:
        if not os.stat(d).st_mode & 0o001:
            return os.path.exists(os.path.join("/usr/lib", sysconfig.get_config_var("MULTIARCH") or "",
                                               sysconfig.get_config_var("INSTSONAME") or "-"))
        if d == "/":
            return True
        d = os.path.dirname(d)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in PY310_SLOW and "slow" in item.keywords:
            item.add_marker(pytest.mark.py310)
    if any(item.name in AS_OTHER_USER for item in items) and not others_can_load_this_python():
        skip = pytest.mark.skip(reason=f"another user cannot load this Python's libpython ({sys.executable}: "
                                       "pyenv's under /root, 0700); a system Python runs it")
        for item in items:
            if item.name in AS_OTHER_USER:
                item.add_marker(skip)
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (cgroups / nspawn / second user)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
