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


def pytest_collection_modifyitems(config, items):
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (cgroups / nspawn / second user)")
        for item in items:
            if "root" in item.keywords:
                item.add_marker(skip)
