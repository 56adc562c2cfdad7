"""The running monitor: per-stream watchdog as pure functions (``watchdog``), one stream's
source -> features -> windows runner (``runner``), the scoring loop batched across streams
(``scoring``), the SQLite event and alert store (``store``), the Prometheus metrics
(``telemetry``), and the LiveMonitor that wires them (``monitor``); pulled streams in
worker processes (``workers``); many nodes over Redis Streams: the wire format and keys
(``bus``), ingest nodes, scorer nodes and the console's ClusterMonitor (``cluster``).

May import: media, features, model, alerts, profiles, exporters
"""
