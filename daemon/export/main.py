"""`aal-core export [--config FILE] [--socket PATH]`: metrics and fleet publishing.

Reads the daemon's config file ([metrics], [fleet], daemon.socket).  Serves

    /metrics   the daemon's system.metrics at scrape time, Prometheus text
               format, or OpenMetrics when the scraper asks for it (Accept)
    /status    JSON: whether the daemon and Redis are reachable, the fleet
               buffer and its losses

on metrics.listen (unless "off"), rewrites metrics.textfile atomically every
metrics.textfile_interval_s (if set), and publishes to Redis when
fleet.redis_url is set.  Threads, not asyncio: the HTTP server's, the
textfile's, the fleet watcher's and publisher's; the main thread waits for
SIGTERM or SIGINT.  Exit codes: 0 stopped by a signal, 2 configuration
or usage error, 3 cannot listen.
"""
from __future__ import annotations

import json
import os
import signal
import threading
from http.server import ThreadingHTTPServer

from prometheus_client import CollectorRegistry, ProcessCollector, write_to_textfile
from prometheus_client.exposition import MetricsHandler

from .. import config as config_mod
from .. import log as log_mod
from ..config import parse_listen
from ..errors import ConfigError
from .collector import DaemonCollector

log = log_mod.get_logger("export")

EXIT_OK, EXIT_CONFIG, EXIT_LISTEN = 0, 2, 3


class Exporter:
    def __init__(self, cfg, socket_path: str):
        self.cfg = cfg
        self.socket_path = socket_path
        self.fleet_state = None
        self.buffer = None
        if cfg.fleet.redis_url:
            from .fleet import Buffer, FleetState
            self.fleet_state = FleetState(cfg.fleet)
            self.buffer = Buffer(self.fleet_state)
        self.collector = DaemonCollector(socket_path, cfg.metrics.scrape_timeout_s, self.fleet_state)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        ProcessCollector(namespace="aal_core_exporter", registry=self.registry)
        self.httpd: ThreadingHTTPServer | None = None

    def status(self) -> dict:
        out = {"socket": self.socket_path, "daemon_up": self.collector.probe(),
               "scrapes": self.collector.scrapes, "listen": self.cfg.metrics.listen,
               "textfile": self.cfg.metrics.textfile, "fleet": "off"}
        if not self.collector.daemon_up and self.collector.last_error:
            out["daemon_error"] = self.collector.last_error
        if self.fleet_state is not None:
            out["fleet"] = self.fleet_state.status()
            out["fleet"]["buffered"] = len(self.buffer)
            if self.fleet_state.daemon_up:
                out["daemon_up"] = True
        return out

    def serve_http(self) -> None:
        addr = parse_listen(self.cfg.metrics.listen)
        if addr is None:
            return
        base = MetricsHandler.factory(self.registry)
        exporter = self

        class Handler(base):
            def do_GET(self):
                if self.path.split("?")[0] == "/status":
                    body = json.dumps(exporter.status()).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                return super().do_GET()

            def log_message(self, format, *args):   # noqa: A002 - no line per scrape
                pass

        host, port = addr
        cls = ThreadingHTTPServer
        if ":" in host:
            import socket as _s

            class V6(ThreadingHTTPServer):
                address_family = _s.AF_INET6
            cls = V6
        cls.daemon_threads = True
        self.httpd = cls((host, port), Handler)
        threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True).start()
        log.info("serving", listen=f"{host}:{self.httpd.server_address[1]}", socket=self.socket_path)

    def textfile_loop(self, stop: threading.Event) -> None:
        path = self.cfg.metrics.textfile
        while not stop.is_set():
            try:
                # write_to_textfile writes a temporary file beside it and renames it over.
                write_to_textfile(path, self.registry)
            except OSError as exc:
                log.error("textfile_failed", path=path, error=str(exc))
            stop.wait(self.cfg.metrics.textfile_interval_s)

    def run(self, stop: threading.Event) -> None:
        threads = []
        if self.cfg.metrics.textfile:
            threads.append(threading.Thread(target=self.textfile_loop, args=(stop,), name="textfile"))
        if self.fleet_state is not None:
            from .fleet import Publisher, Watcher, _safe_url
            threads.append(threading.Thread(target=Publisher(self.fleet_state, self.buffer).run, args=(stop,),
                                            name="fleet-publisher"))
            threads.append(threading.Thread(target=Watcher(self.socket_path, self.fleet_state, self.buffer).run,
                                            args=(stop,), name="fleet-watcher"))
            log.info("fleet", redis=_safe_url(self.cfg.fleet.redis_url), node_id=self.fleet_state.node)
        for t in threads:
            t.daemon = True
            t.start()
        while not stop.wait(3600):
            pass
        for t in threads:
            t.join(timeout=5.0)
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def cmd_export(args) -> int:
    """Called by cli.cmd_export, which parsed args without importing prometheus_client."""
    log_mod.setup(args.log_level or "info")
    config_file = args.config
    if config_file is None and os.path.exists(config_mod.DEFAULT_CONFIG_FILE):
        config_file = config_mod.DEFAULT_CONFIG_FILE
    try:
        cfg = config_mod.load(config_file)
        if args.listen:
            parse_listen(args.listen, "--listen")
            cfg = cfg.with_overrides({"metrics": {"listen": args.listen}})
        if args.log_level is None:
            log_mod.setup(cfg.daemon.log_level)
    except ConfigError as exc:
        log.error("config_error", reason=str(exc), file=config_file or "-")
        return EXIT_CONFIG
    socket_path = os.path.abspath(args.socket) if args.socket else cfg.daemon.socket
    ex = Exporter(cfg, socket_path)
    try:
        ex.serve_http()
    except OSError as exc:
        log.error("cannot_listen", listen=cfg.metrics.listen, reason=exc.strerror or str(exc))
        return EXIT_LISTEN

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    ex.run(stop)
    log.info("stopped")
    return EXIT_OK
