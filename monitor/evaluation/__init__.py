"""Scoring whole clips against profiles with the live policy replayed (``clips``) and the
CASES.csv format and report of ``expose eval`` (``cases``).

May import: features, model, alerts, profiles
"""
