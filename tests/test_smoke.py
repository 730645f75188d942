"""The daemon starts, answers, and stops cleanly on SIGTERM."""
from aal_core import __version__


def test_status_and_clean_stop(daemon):
    st = daemon.call("system.status")
    assert st["version"] == __version__
    assert st["socket"] == daemon.socket
    assert daemon.call("system.health")["ok"] is True
    assert daemon.stop() == 0
    assert "event=stopped" in daemon.log()
