"""Errors that cross a boundary (file, network, subprocess) and reach a user.

Each carries a one-line, actionable message; the CLI prints it and exits non-zero
instead of showing a traceback.
"""


class ExposeError(Exception):
    """Base class: `str(err)` is a complete one-line message for the user."""


class MediaError(ExposeError):
    """A media file or URL cannot be opened or decoded, or lacks a needed stream."""


class AssetError(ExposeError):
    """A model asset (e.g. the face landmarker bundle) is missing or corrupt."""


class FeatureFileError(ExposeError):
    """A saved FeatureTrack is unreadable, corrupt or of an unsupported format version."""


class ConfigError(ExposeError):
    """The configuration file or an environment override is invalid."""


class ModelFileError(ExposeError):
    """A model file (EXAM checkpoint, decision file) is missing, unreadable or of the wrong kind."""
