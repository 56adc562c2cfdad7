"""Scoring whole clips (FeatureTracks) against profiles: what `expose score` and
`expose eval` share with the dev benchmark.

Clip aggregation: a clip's score is the mean of its scored windows' *normalised*
distances (z-scores against the claimed profile's genuine calibration windows), so
clips claimed as different people are comparable. A clip with no scored window has
no score (reported as insufficient, never as genuine).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from expose.monitor.alerts.policy import AlertPolicy, PolicyState, StreamState
from expose.monitor.features.track import FeatureTrack
from expose.monitor.features.windows import windows_of
from expose.monitor.model.score import Score
from expose.monitor.model.scorer import DEFAULT_HOP, Scorer
from expose.profiles.store import Profile


def clip_score(scores: list[Score], profile: Profile) -> float | None:
    z = [profile.normalized(s.distance) for s in scores if s.status == "scored" and s.distance is not None]
    return float(np.mean(z)) if z else None


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
    scores = scorer.score_batched(profile.requests(windows, scorer), batch)
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
