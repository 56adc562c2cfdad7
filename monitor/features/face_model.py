"""Where the MediaPipe face landmarker bundle comes from.

Resolution order: the config value, env ``EXPOSE_FACE_MODEL``, the user cache
(``<cache_dir>/models/face_landmarker.task``), then a download from the official
URL verified against a pinned sha256. Machines without internet point the config or
the env var at a local copy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import urllib.request
from pathlib import Path

from expose.monitor.errors import AssetError

log = logging.getLogger(__name__)

FACE_MODEL_URL = (
    "https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/"
    "float16/latest/face_landmarker.task"
)
FACE_MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
FACE_MODEL_NAME = "face_landmarker.task"
ENV_VAR = "EXPOSE_FACE_MODEL"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_exists(path: Path, origin: str) -> Path:
    if not path.is_file():
        raise AssetError(f"face model from {origin} not found: {path}")
    return path


def resolve_face_model(configured: Path | None, cache_dir: Path, allow_download: bool = True) -> Path:
    """Return a path to face_landmarker.task, or raise AssetError saying how to provide one."""
    if configured is not None:
        return _check_exists(Path(configured).expanduser(), "config features.face_model")
    if env := os.environ.get(ENV_VAR):
        return _check_exists(Path(env).expanduser(), f"${ENV_VAR}")
    cached = cache_dir / "models" / FACE_MODEL_NAME
    if cached.is_file():
        return cached
    if allow_download:
        try:
            return _download(cached)
        except AssetError as err:
            raise AssetError(
                f"{err}; set {ENV_VAR}=/path/to/{FACE_MODEL_NAME} or features.face_model "
                f"in the config (official copy: {FACE_MODEL_URL})"
            ) from None
    raise AssetError(
        f"face model not found: set {ENV_VAR}=/path/to/{FACE_MODEL_NAME} or features.face_model "
        f"in the config, or place it at {cached} (official copy: {FACE_MODEL_URL})"
    )


def _download(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading the face model from %s", FACE_MODEL_URL)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with urllib.request.urlopen(FACE_MODEL_URL, timeout=30) as resp, open(tmp, "wb") as out:
            while block := resp.read(1 << 20):
                out.write(block)
        digest = sha256_file(tmp)
        if digest != FACE_MODEL_SHA256:
            raise AssetError(f"downloaded face model has sha256 {digest}, expected {FACE_MODEL_SHA256}")
        tmp.replace(dest)
        return dest
    except OSError as err:
        raise AssetError(f"cannot download the face model ({err})") from None
    finally:
        tmp.unlink(missing_ok=True)
