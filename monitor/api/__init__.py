"""HTTP face of the live monitor: the FastAPI app with WHIP, REST, websocket and the
dashboard (``app``, ``static/``), the pydantic models of its requests and responses
(``schemas``), the generator of docs/live.md's field tables (``reference``), and the
composition root of ``expose serve`` (``serve``).

May import: media, features, model, alerts, live, profiles, exporters
"""
