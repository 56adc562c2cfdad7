"""Training material: which media belong to which identity, and their cached features
(``CorpusTrack``: a FeatureTrack with its identity).

Identity = the name of the folder holding the file; a folder named ``video``,
``videos`` or ``clips`` stands for its parent (the GRID layout ``s1/video/*.mpg``). A
CSV manifest with columns ``path,identity[,label]`` may be given instead; rows whose
label is not ``real`` are skipped (fakes never train the model of real motion).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from expose.monitor.errors import ExposeError, MediaError
from expose.monitor.features.cache import FeatureCache
from expose.monitor.features.track import FeatureTrack

log = logging.getLogger(__name__)

MEDIA_SUFFIXES = {".mp4", ".mpg", ".mpeg", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".flv", ".ts"}
_CONTAINER_DIRS = {"video", "videos", "clips"}


@dataclass(frozen=True)
class CorpusItem:
    path: Path
    identity: str


def _identity_of(path: Path) -> str:
    parent = path.parent
    return parent.parent.name if parent.name.lower() in _CONTAINER_DIRS else parent.name


def _from_manifest(csv_path: Path) -> list[CorpusItem]:
    items = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"path", "identity"} <= set(reader.fieldnames):
            raise ExposeError(f"{csv_path}: a manifest needs the columns path,identity[,label]")
        for row in reader:
            if row.get("label", "real").strip() not in ("", "real"):
                continue
            p = Path(row["path"])
            items.append(CorpusItem(p if p.is_absolute() else csv_path.parent / p, row["identity"]))
    return items


def discover(sources: Iterable[Path]) -> list[CorpusItem]:
    """Media files under folders (recursively) or listed in CSV manifests."""
    items: list[CorpusItem] = []
    for src in sources:
        src = Path(src)
        if src.is_file() and src.suffix.lower() == ".csv":
            items.extend(_from_manifest(src))
        elif src.is_dir():
            found = sorted(Path(root) / f for root, _, files in os.walk(src, followlinks=True) for f in files)
            items.extend(
                CorpusItem(p, _identity_of(p)) for p in found
                if p.suffix.lower() in MEDIA_SUFFIXES and "fake" not in p.relative_to(src).parts
            )
        elif src.is_file() and src.suffix.lower() in MEDIA_SUFFIXES:
            items.append(CorpusItem(src, _identity_of(src)))
        else:
            raise ExposeError(f"{src}: not a folder, a media file or a CSV manifest")
    if not items:
        raise ExposeError("no media found in " + ", ".join(str(s) for s in sources))
    return items


@dataclass(frozen=True)
class CorpusTrack:
    """The features of one corpus item and the identity they show."""

    identity: str
    track: FeatureTrack


def load_tracks(items: list[CorpusItem], cache: FeatureCache,
                on_item: Callable[[CorpusItem, bool], None] | None = None) -> list[CorpusTrack]:
    """Features of every item through the cache; unreadable media are skipped with a warning."""
    out = []
    for item in items:
        try:
            track, cached = cache.get(item.path, require_audio=True)
        except MediaError as err:
            log.warning("skipping %s", err)
            continue
        out.append(CorpusTrack(item.identity, track))
        if on_item is not None:
            on_item(item, cached)
    return out
