"""expose: live-call impersonation monitor (ingest, features, scoring, alerts, server, CLI)."""

__version__ = "0.1.0"
