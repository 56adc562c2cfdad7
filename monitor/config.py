"""The one typed configuration tree, loaded once at the composition root.

Sources, in increasing priority: embedded defaults, a TOML file, then ``EXPOSE_*``
environment variables for the values people set per machine (paths, secrets).
Every default works on one machine out of the box.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.errors import ConfigError

APP_NAME = "expose"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureConfig(_Strict):
    face_model: Path | None = Field(
        None,
        description="Path to MediaPipe's face_landmarker.task. Unset: env EXPOSE_FACE_MODEL, "
        "then the user cache, then a verified download from the official URL.",
    )
    max_side: int = Field(
        640, ge=128, le=4096,
        description="Frames are downscaled so that their longer side is at most this many "
        "pixels before landmarking (speed; faces in talking-head footage stay large enough).",
    )
    num_faces: int = Field(
        3, ge=1, le=8, description="Faces the landmarker looks for; the primary one is kept."
    )
    min_face_confidence: float = Field(
        0.5, gt=0.0, lt=1.0, description="Face detection / presence confidence threshold."
    )


STARTER_MODEL = Path(__file__).parent / "assets" / "exam-small.safetensors"


class ModelSection(_Strict):
    path: Path = Field(
        STARTER_MODEL,
        description="EXAM base model checkpoint (env EXPOSE_MODEL); default: the starter model "
        "shipped with expose (see monitor/assets/MODEL_CARD.md).",
    )
    device: str = Field("auto", description="auto (GPU when present), cpu, or cuda[:N].")


class Config(_Strict):
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelSection = Field(default_factory=ModelSection)
    cache_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_cache_dir(APP_NAME)),
        description="Feature cache and downloaded assets (env EXPOSE_CACHE).",
    )
    profiles_dir: Path = Field(
        default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)) / "profiles",
        description="Profile store (env EXPOSE_PROFILES).",
    )


def load_config(path: Path | None = None) -> Config:
    """Read the TOML file (if any), then apply environment overrides."""
    data: dict = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from None
    if cache := os.environ.get("EXPOSE_CACHE"):
        data["cache_dir"] = cache
    if profiles := os.environ.get("EXPOSE_PROFILES"):
        data["profiles_dir"] = profiles
    if model := os.environ.get("EXPOSE_MODEL"):
        data.setdefault("model", {})["path"] = model
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"invalid config value {where}: {first['msg']}") from None
