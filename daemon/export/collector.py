"""The scrape-time collector: every scrape asks the daemon for one
system.metrics snapshot (bounded by metrics.scrape_timeout_s) and yields its
families; nothing is kept between scrapes, nothing is computed per sample.

The exporter's own figures come with it: whether the daemon answered, the
scrape's duration, the fleet publisher's buffer and losses.
"""
from __future__ import annotations

import threading
import time

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..client import Client, ConnectError, RpcCallError
from .families import convert


class DaemonCollector:
    def __init__(self, socket_path: str, timeout_s: float, fleet=None):
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self.fleet = fleet                # fleet.FleetState or None
        self.scrapes = 0
        self.failures = 0
        self.skipped = 0
        self.last_error = ""
        self.daemon_up = False
        self._lock = threading.Lock()     # one system.metrics at a time, whatever the scrapers

    def snapshot(self) -> dict | None:
        """system.metrics, or None (last_error says why) within timeout_s."""
        try:
            with Client(self.socket_path, timeout=self.timeout_s) as c:
                snap = c.call("system.metrics")
            self.daemon_up = True
            return snap
        except (ConnectError, RpcCallError, OSError, ValueError) as exc:
            self.failures += 1
            self.daemon_up = False
            self.last_error = str(exc) or type(exc).__name__
            return None

    def probe(self) -> bool:
        """system.health within timeout_s (for /status between scrapes)."""
        try:
            with Client(self.socket_path, timeout=self.timeout_s) as c:
                c.call("system.health")
            self.daemon_up = True
        except (ConnectError, RpcCallError, OSError, ValueError) as exc:
            self.daemon_up = False
            self.last_error = str(exc) or type(exc).__name__
        return self.daemon_up

    def collect(self):
        t0 = time.perf_counter()
        with self._lock:
            self.scrapes += 1
            snap = self.snapshot()
            metrics, skipped = convert(snap["families"]) if snap else ([], [])
            self.skipped += len(skipped)
        yield from metrics
        yield from self.own(time.perf_counter() - t0)

    def own(self, seconds: float):
        yield GaugeMetricFamily("aal_core_daemon_up", "1 when the daemon answered system.metrics for this scrape.",
                                value=1.0 if self.daemon_up else 0.0)
        yield GaugeMetricFamily("aal_core_exporter_scrape_duration_seconds",
                                "Time this scrape took (system.metrics and conversion).", value=seconds)
        yield CounterMetricFamily("aal_core_exporter_scrapes", "Scrapes served.", value=float(self.scrapes))
        yield CounterMetricFamily("aal_core_exporter_daemon_failures",
                                  "Scrapes for which the daemon did not answer in time.", value=float(self.failures))
        yield CounterMetricFamily("aal_core_exporter_skipped_families",
                                  "Malformed families from the daemon left out of the exposition.",
                                  value=float(self.skipped))
        if self.fleet is not None:
            yield from self.fleet.families()
