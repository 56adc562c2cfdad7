"""The ``expose`` command: the typer app and shared options (``app``), the offline jobs
(``main``: features, train, enroll, profiles, score, eval), the live ones (``live``: serve,
watch) and the demo (``demo``).

May import: media, features, model, training, alerts, evaluation, live, api, profiles, exporters
"""
