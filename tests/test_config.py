"""Configuration: every mistake names the key and the file; the daemon
refuses to start on one (exit 2) and keeps its config on a bad reload."""
from __future__ import annotations

import os
import subprocess

import pytest

from aal_core import config as C
from aal_core.errors import ConfigError

from helpers import AAL_CORE, short_tmpdir


def _write(tmp_path, text: str | bytes) -> str:
    p = tmp_path / "aal-core.toml"
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def _err(tmp_path, text) -> str:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        C.load(path)
    msg = str(ei.value)
    assert msg.startswith(path + ": "), msg
    return msg


def test_defaults_and_a_valid_file(tmp_path):
    cfg = C.load(_write(tmp_path, '[rpc]\nmax_batch = 7\nidle_timeout_s = 3\n[daemon]\nlog_level = "debug"\n'))
    assert cfg.rpc.max_batch == 7 and cfg.rpc.idle_timeout_s == 3.0 and type(cfg.rpc.idle_timeout_s) is float
    assert cfg.daemon.log_level == "debug"
    assert cfg.rpc.max_frame_bytes == 1 << 20  # untouched keys keep their defaults
    assert C.load(None) == C.Config()


def _toml_value(v) -> str:
    if type(v) is bool:
        return "true" if v else "false"
    if type(v) is str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def test_every_default_is_accepted_from_a_file(tmp_path):
    """Each key of each section, written with its default value, passes the
    file's type, choice and range checks and loads back as the default."""
    defaults = C.Config()
    text = "".join(f"[{section}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in body.items())
                   for section, body in defaults.as_dict().items())
    assert C.load(_write(tmp_path, text)) == defaults


def test_unknown_section(tmp_path):
    msg = _err(tmp_path, "[nope]\na = 1\n")
    assert "unknown section [nope]" in msg and "rpc" in msg


def test_unknown_key(tmp_path):
    msg = _err(tmp_path, "[rpc]\nmax_batchh = 1\n")
    assert "unknown key rpc.max_batchh" in msg and "max_batch" in msg


@pytest.mark.parametrize("text,fragment", [
    ('[rpc]\nmax_batch = "7"\n', "rpc.max_batch must be an integer, got str '7'"),
    ("[rpc]\nmax_batch = 7.5\n", "rpc.max_batch must be an integer"),
    ("[rpc]\nmax_batch = true\n", "rpc.max_batch must be an integer, got bool"),
    ('[rpc]\nidle_timeout_s = "5"\n', "rpc.idle_timeout_s must be a number"),
    ("[rpc]\ngroup = 5\n", "rpc.group must be a string"),
    ("[venom]\nenabled = 1\n", "venom.enabled must be a boolean"),
    ("rpc = 5\n", "[rpc] must be a table"),
])
def test_wrong_types(tmp_path, text, fragment):
    assert fragment in _err(tmp_path, text)


@pytest.mark.parametrize("text,fragment", [
    ('[daemon]\nlog_level = "loud"\n', "daemon.log_level must be one of debug, info, warning, error, got 'loud'"),
    ("[rpc]\nmax_frame_bytes = 0\n", "rpc.max_frame_bytes must be between 64 and"),
    ("[rpc]\nmax_connections = -1\n", "rpc.max_connections must be between 1 and"),
    ("[rpc]\nidle_timeout_s = 0\n", "rpc.idle_timeout_s must be >= 0.1, got 0"),
    ("[rpc]\nheartbeat_interval_s = 0.0\n", "rpc.heartbeat_interval_s must be between"),
    # the exact re-read of long integers recurses once per level (limit 1000)
    ("[rpc]\nmax_depth = 513\n", "rpc.max_depth must be between 2 and 512, got 513"),
    # READY must come before the unit's TimeoutStartSec=30s.
    ("[daemon]\nready_timeout_s = 30\n", "daemon.ready_timeout_s must be between 0.0 and 25.0"),
    ("[sense]\nretry_max_s = 0.1\n", "sense.retry_max_s must be between 0.5 and 3600.0, got 0.1"),
])
def test_out_of_range_values(tmp_path, text, fragment):
    assert fragment in _err(tmp_path, text)


def test_bad_toml_says_where(tmp_path):
    msg = _err(tmp_path, "[rpc]\nmax_batch = = 3\n")
    assert "not valid TOML" in msg and "line 2" in msg


def test_not_utf8(tmp_path):
    assert "not UTF-8" in _err(tmp_path, b"[rpc]\ngroup = \"\xff\"\n")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        C.load(str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="is a directory"):
        C.load(str(tmp_path))


def test_diff_and_restart_keys():
    old = C.Config()
    new = old.with_overrides({"rpc": {"max_batch": 5, "group": "wheel"}, "daemon": {"socket": "/x"}})
    assert sorted(C.diff(old, new)) == [("daemon", "socket"), ("rpc", "group"), ("rpc", "max_batch")]
    live = C.keep_restart_keys(old, new)
    assert live.rpc.max_batch == 5 and live.rpc.group == old.rpc.group and live.daemon.socket == old.daemon.socket


def test_local_defaults_need_no_root():
    cfg = C.local_defaults("/tmp/x")
    assert cfg.daemon.socket == "/tmp/x/aal-core.sock" and cfg.daemon.state_dir == "/tmp/x/state"


# ------------------------------------------------------------ the daemon itself

@pytest.mark.parametrize("text,fragment", [
    ("[rpc]\nbogus = 1\n", "unknown key rpc.bogus"),
    ("[bogus]\n", "unknown section [bogus]"),
    ('[rpc]\nmax_batch = "x"\n', "rpc.max_batch must be an integer"),
    ("[rpc\n", "not valid TOML"),
])
def test_daemon_refuses_to_start_on_a_bad_config(text, fragment):
    base = short_tmpdir()
    path = os.path.join(base, "bad.toml")
    with open(path, "w") as fh:
        fh.write(text)
    p = subprocess.run([AAL_CORE, "run", "--local", base, "--tegrastats", "off", "--config", path],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stderr
    assert "event=config_error" in p.stderr and fragment in p.stderr and path in p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not os.path.exists(os.path.join(base, "aal-core.sock"))


def test_daemon_refuses_a_missing_config_file():
    base = short_tmpdir()
    p = subprocess.run([AAL_CORE, "run", "--local", base, "--config", os.path.join(base, "none.toml")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "none.toml: config file not found" in p.stderr


def test_usage_errors_exit_2():
    p = subprocess.run([AAL_CORE, "run", "--log-level", "loud"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "invalid choice" in p.stderr
