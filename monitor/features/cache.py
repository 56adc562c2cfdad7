"""Feature cache keyed by the media file's content hash and the extractor's version,
so training and evaluation never extract the same file twice."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import FeatureFileError
from expose.monitor.features.extract import Progress, extract_track, extractor_version
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.track import FeatureTrack

log = logging.getLogger(__name__)


class FeatureCache:
    def __init__(self, root: Path, cfg: FeatureConfig, model_path: Path) -> None:
        self.root = Path(root) / "features"
        self.cfg = cfg
        self.model_path = model_path
        self.version = extractor_version(cfg, model_path)

    def entry_path(self, media_sha256: str) -> Path:
        key = hashlib.sha256(f"{media_sha256}:{self.version}".encode()).hexdigest()
        return self.root / key[:2] / f"{key}.npz"

    def get(self, media: Path, *, require_audio: bool = True, refresh: bool = False,
            progress: Progress | None = None) -> tuple[FeatureTrack, bool]:
        """Return (track, was_cached). Extracts and stores on a miss (or with ``refresh``)."""
        media = Path(media)
        digest = sha256_file(media) if media.is_file() else ""
        if digest:
            entry = self.entry_path(digest)
            if entry.is_file() and not refresh:
                try:
                    track = FeatureTrack.load(entry)
                    if require_audio and not track.has_audio:
                        pass  # fall through: extraction raises the proper MediaError
                    else:
                        # identical bytes may live under several names: report this one
                        return dataclasses.replace(track, source=str(media)), True
                except FeatureFileError as err:
                    log.warning("ignoring damaged cache entry %s (%s)", entry, err)
        track = extract_track(media, self.cfg, self.model_path, require_audio=require_audio,
                              media_sha256=digest, progress=progress)
        if digest:
            track.save(self.entry_path(digest))
        return track, False


def cached_entries(cache_dir: Path, media_sha256: set[str]) -> list[Path]:
    """The cache files (any extractor version) holding the features of these media files: what
    `expose profiles delete` erases with a profile's reference media (the tracks carry face
    descriptors and voice embeddings of the enrolled person). Reads only each entry's small
    ``meta`` member; an unreadable entry is skipped."""
    import json

    import numpy as np

    found: list[Path] = []
    root = Path(cache_dir) / "features"
    if not media_sha256 or not root.is_dir():
        return found
    for entry in sorted(root.glob("*/*.npz")):
        try:
            with np.load(entry, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
        except Exception:  # noqa: BLE001 - a damaged entry is not ours to judge here
            continue
        if meta.get("media_sha256") in media_sha256:
            found.append(entry)
    return found
