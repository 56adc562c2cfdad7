"""Scoring whole clips (FeatureTracks) against profiles: what `expose score` and
`expose eval` share with the dev benchmark."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.alerts import AlertPolicy, PolicyState, StreamState
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
    return ScoreSettings(w_identity=float(w.get("identity", 1.0)), w_sync=float(w.get("sync", 1.0)),
                         w_fit=float(w.get("fit", 0.0)))


@dataclass(frozen=True)
class ClipResult:
    scores: list[Score]
    clip_score: float | None  # mean normalised distance; None when no window was scored
    over_threshold: float  # fraction of scored windows over the profile's one-window threshold
    states: list[StreamState]  # the live AlertPolicy's state after each window
    alert_at: float | None  # stream time at which the policy opened an alert (None: never)

    @property
    def verdict(self) -> str:
        """What the live monitor would have said: an alert, or not."""
        if self.clip_score is None:
            return "insufficient"
        return "suspect" if self.alert_at is not None else "authentic"


def score_track(track: FeatureTrack, profile: Profile, scorer: Scorer, hop: int = DEFAULT_HOP,
                batch: int = 16, policy: AlertPolicy | None = None) -> ClipResult:
    """Score every window, then replay the live AlertPolicy (the default one unless given) over
    them with the profile's thresholds, so a file gets the verdict a live stream would."""
    windows = windows_of(track, scorer.model.cfg.window, hop)
    scores = scorer.score_batched(windows, [profile.tokens] * len(windows), [profile.name] * len(windows), batch)
    dists = [s.distance for s in scores if s.distance is not None]
    over = float(np.mean([d > profile.calibration.threshold for d in dists])) if dists else 0.0
    policy = policy or AlertPolicy()
    st, states, alert_at = PolicyState(), [], None
    for sc in scores:
        step = policy.step(st, sc, profile.calibration.alert_threshold, 0.0)
        st = step.state
        states.append(st.state)
        if step.change == "opened" and alert_at is None:
            alert_at = sc.t1
    return ClipResult(scores, clip_score(scores, profile), over, states, alert_at)


_MARK = {"authentic": ".", "suspect": "~", "alert": "!", "insufficient": "?"}


def timeline(result: ClipResult) -> str:
    """One character per window, the policy's state after it: '.' authentic, '~' suspect
    (smoothed distance over the threshold), '!' alert, '?' insufficient."""
    return "".join(_MARK[st] for st in result.states)
