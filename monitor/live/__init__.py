"""The running monitor: per-stream watchdog as pure functions (``watchdog``), one stream's
source -> features -> windows runner (``runner``), the scoring loop batched across streams
(``scoring``), the SQLite event and alert store (``store``), the Prometheus metrics
(``telemetry``), and the LiveMonitor that wires them (``monitor``).

May import: media, features, model, alerts, profiles, exporters
"""
