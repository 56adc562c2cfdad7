"""Alert sinks: where the monitor's events go besides its own database.

Each sink is one small module behind ``expose.exporters.base.AlertSink``; ``build_sinks``
picks them by the ``kind`` in the config (webhook, syslog/CEF and Prometheus plug in
the same way).

May import: monitor.alerts
"""
