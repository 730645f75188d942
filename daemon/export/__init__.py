"""`aal-core export`: the network-facing side, a separate unprivileged process.

The daemon keeps no network (PrivateNetwork=yes); this process reads it over
the Unix socket and serves Prometheus metrics and publishes to Redis:

    families.py   system.metrics families -> prometheus_client families (generic)
    collector.py  the scrape-time collector: one system.metrics per scrape, bounded in time
    fleet.py      Redis Streams publishing: bounded buffer, reconnect with backoff
    main.py       the command: config, the HTTP server, the textfile, the fleet loop

prometheus_client and redis are imported here only, never by the daemon.
"""
