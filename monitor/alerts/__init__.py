"""What a console is told: the Alert value type and the AlertPolicy that turns a stream's
Scores into alerts (``policy``: a pure function, no torch), and the typed messages that
carry scores, alerts and stream changes to consoles (``events``: pydantic models).

May import: model
"""
