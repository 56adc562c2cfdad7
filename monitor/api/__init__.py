"""HTTP face of the live monitor: the FastAPI app with WHIP, REST, websocket and the
dashboard (``app``, ``static/``), and the composition root of ``expose serve`` (``serve``).

May import: media, features, model, alerts, live, profiles, exporters
"""
