"""Scoring whole clips (FeatureTracks) against profiles: what `expose score` and
`expose eval` share with the dev benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.evaluation import clip_score
from monitor.model import LoadedModel
from monitor.scorer import Score, Scorer, ScoreSettings
from monitor.track import FeatureTrack
from monitor.windows import windows_of
from profiles.store import Profile

DEFAULT_HOP = 25  # one window per second


def settings_for(base: LoadedModel) -> ScoreSettings:
    """Scorer settings, with the term weights chosen on validation when the model carries them."""
    w = base.meta.get("score_weights") or {}
    return ScoreSettings(w_identity=float(w.get("identity", 1.0)), w_sync=float(w.get("sync", 1.0)))


@dataclass(frozen=True)
class ClipResult:
    scores: list[Score]
    clip_score: float | None  # mean normalised distance; None when no window was scored
    over_threshold: float  # fraction of scored windows over the profile threshold

    @property
    def verdict(self) -> str:
        if self.clip_score is None:
            return "insufficient"
        return "suspect" if self.over_threshold >= 0.5 else "authentic"


def score_track(track: FeatureTrack, profile: Profile, scorer: Scorer, hop: int = DEFAULT_HOP,
                batch: int = 16) -> ClipResult:
    windows = windows_of(track, scorer.model.cfg.window, hop)
    scores: list[Score] = []
    for i in range(0, len(windows), batch):
        chunk = windows[i : i + batch]
        scores += scorer.score(chunk, [profile.tokens] * len(chunk), [profile.name] * len(chunk))
    dists = [s.distance for s in scores if s.distance is not None]
    over = float(np.mean([d > profile.calibration.threshold for d in dists])) if dists else 0.0
    return ClipResult(scores, clip_score(scores, profile), over)


def timeline(result: ClipResult, threshold: float) -> str:
    """One character per window: '.' under the threshold, '!' over it, '?' insufficient."""
    return "".join(
        "?" if s.distance is None else ("!" if s.distance > threshold else ".") for s in result.scores
    )
