"""`aal-core export` against a real Prometheus (Debian's `prometheus`) and
promtool: the scrape, content negotiation, the textfile, a daemon that is
down or stalled, bad configuration."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_parse
from prometheus_client.parser import text_string_to_metric_families

from export_helpers import AAL_CORE, free_port, http_get, start_exporter, start_prometheus
from helpers import short_tmpdir, wait_for
from test_metrics_daemon import static_proc


@pytest.fixture
def steady(daemon_factory):
    base = short_tmpdir()
    return daemon_factory("--proc-root", static_proc(base), base=base, tegrastats="replay")


@pytest.fixture
def servers():
    started = []
    yield started
    for p in reversed(started):
        p.stop()


def sample_values(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


@pytest.mark.slow
def test_prometheus_scrapes_the_exporter_and_sees_stress_get(steady, servers):
    ex = start_exporter(steady)
    servers.append(ex)
    prom = start_prometheus(steady.base, [f"127.0.0.1:{ex.port}"])
    servers.append(prom)

    def scraped():
        r = prom.query("aal_core_ram_stress")
        return r if r else None
    result = wait_for(scraped, timeout=30, what="aal_core_ram_stress in Prometheus")
    assert float(result[0]["value"][1]) == steady.call("stress.get")["stress"]
    assert result[0]["metric"]["job"] == "aal-core"
    up = prom.query('up{job="aal-core"}')
    assert float(up[0]["value"][1]) == 1.0
    assert float(prom.query("aal_core_daemon_up")[0]["value"][1]) == 1.0
    # Families of every capability reached Prometheus, histograms included.
    for expr in ("aal_core_ledger_entries", "aal_core_jobs", "aal_core_venom_beats_total",
                 "aal_core_rpc_request_duration_seconds_bucket", "aal_core_exporter_process_resident_memory_bytes",
                 'aal_core_stress_band{band="LOW"}'):
        assert wait_for(lambda: prom.query(expr), timeout=10, what=expr)
    targets = prom.targets()
    assert targets and targets[0]["health"] == "up", targets


def test_promtool_check_metrics_passes_on_the_exposition(steady, servers):
    ex = start_exporter(steady)
    servers.append(ex)
    text = ex.metrics_text()
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", "promtool lint findings: " + r.stdout + r.stderr
    # promtool is not a rubber stamp: a badly named counter is reported.
    bad = "# HELP x_bytes a\n# TYPE x_bytes counter\nx_bytes 1\n"
    r = subprocess.run(["promtool", "check", "metrics"], input=bad, capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 or r.stdout + r.stderr


def test_text_format_and_openmetrics_on_content_negotiation(steady, servers):
    ex = start_exporter(steady)
    servers.append(ex)
    ctype, body = http_get(ex.url())
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    vals = sample_values(body.decode())
    assert vals[("aal_core_ram_stress", ())] == steady.call("stress.get")["stress"]
    ctype, body = http_get(ex.url(), {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert ctype.startswith("application/openmetrics-text")
    text = body.decode()
    assert text.rstrip().endswith("# EOF")
    names = {s.name for f in om_parse(text) for s in f.samples}
    assert {"aal_core_ram_stress", "aal_core_ledger_appends_total",
            "aal_core_ledger_append_latency_seconds_bucket"} <= names


def test_textfile_is_replaced_atomically_and_parses(steady, servers):
    path = os.path.join(steady.base, "textfile", "aal_core.prom")
    os.makedirs(os.path.dirname(path))
    ex = start_exporter(steady, f'textfile = "{path}"\ntextfile_interval_s = 0.2\n')
    servers.append(ex)
    wait_for(lambda: os.path.exists(path), what="the textfile")
    first = os.stat(path).st_ino
    wait_for(lambda: os.stat(path).st_ino != first, what="the textfile rewritten")
    with open(path) as fh:
        text = fh.read()
    assert ("aal_core_ram_stress", ()) in sample_values(text)
    # Renamed into place: only the .prom file is left in the directory (a
    # temporary name may exist for an instant while the next one is written).
    leftovers = [n for n in os.listdir(os.path.dirname(path)) if n != "aal_core.prom"]
    assert len(leftovers) <= 1
    r = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_stalled_daemon_costs_the_scrape_at_most_the_timeout(steady, servers):
    """SIGSTOP: the socket accepts (the kernel's backlog) but nothing answers."""
    ex = start_exporter(steady, "scrape_timeout_s = 0.5\n")
    servers.append(ex)
    steady.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        text = ex.metrics_text()
        took = time.monotonic() - t0
        st = ex.status()            # probes the daemon, bounded the same way
    finally:
        steady.signal(signal.SIGCONT)
    vals = sample_values(text)
    assert vals[("aal_core_daemon_up", ())] == 0.0
    assert ("aal_core_ram_stress", ()) not in vals
    assert took < 5.0, took          # bounded by scrape_timeout_s, not by the daemon
    assert st["daemon_up"] is False and st["daemon_error"]
    # And back once the daemon answers again.
    wait_for(lambda: sample_values(ex.metrics_text())[("aal_core_daemon_up", ())] == 1.0, what="daemon_up again")


def test_exporter_without_a_daemon_serves_its_own_metrics(servers, tmp_path):
    class Absent:
        base = str(tmp_path)
        socket = str(tmp_path / "nobody.sock")
    ex = start_exporter(Absent())
    servers.append(ex)
    vals = sample_values(ex.metrics_text())
    assert vals[("aal_core_daemon_up", ())] == 0.0
    assert "no aal-core is listening" in ex.status()["daemon_error"]


def test_listen_off_serves_nothing_and_bad_listen_is_a_config_error(steady, tmp_path):
    port = free_port()
    cfg = tmp_path / "off.toml"
    path = tmp_path / "m.prom"
    cfg.write_text(f'[metrics]\nlisten = "off"\ntextfile = "{path}"\ntextfile_interval_s = 0.2\n')
    p = subprocess.Popen([AAL_CORE, "export", "--config", str(cfg), "--socket", steady.socket],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: path.exists(), what="the textfile with listen off")
        with pytest.raises(OSError):
            http_get(f"http://127.0.0.1:{port}/metrics", timeout=1)
    finally:
        p.terminate()
        assert p.wait(10) == 0
    for bad, why in (('listen = "9469"', "host:port"), ('listen = "127.0.0.1:99999"', "host:port"),
                     ('scrape_timeout_s = 0.0', "scrape_timeout_s")):
        cfg.write_text(f"[metrics]\n{bad}\n")
        r = subprocess.run([AAL_CORE, "export", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 2 and why in r.stderr, r.stderr
    cfg.write_text('[fleet]\nredis_url = "http://x"\n')
    r = subprocess.run([AAL_CORE, "export", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "redis://" in r.stderr
    # A port in use: exit 3, said once.
    busy = tmp_path / "busy.toml"
    import socket as _s
    with _s.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy.write_text(f'[metrics]\nlisten = "127.0.0.1:{s.getsockname()[1]}"\n')
        r = subprocess.run([AAL_CORE, "export", "--config", str(busy), "--socket", steady.socket],
                           capture_output=True, text=True, timeout=30)
    assert r.returncode == 3 and "cannot_listen" in r.stderr
