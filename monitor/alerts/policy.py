"""Alerts and the AlertPolicy that turns a stream's Scores into them.

The policy is a pure function of (state, score): smoothing over the last few scored
windows, the threshold from the claimed profile, hysteresis (raise after ``raise_k``
of the last ``raise_n`` smoothed windows are over the threshold, end the episode after
``clear_m`` consecutive ones under it). An insufficient window (no face, no speech, no
profile) neither raises nor clears: "no signal" is never read as "genuine".

Per-stream states: ``authentic`` (scored, under the threshold), ``suspect`` (over it,
not yet k of n), ``alert`` (an episode is on), ``insufficient`` (the last window could
not be scored and no episode is on).

An Alert's lifecycle is separate from its episode: the episode ends (``t_end``) when
the scores clear; the operator acknowledges and closes it (open -> acknowledged ->
closed, with who, when and why).

Why: each scored window names the term that drove its distance (``Score.driver``, with a
decision: model/verification.py); an alert counts them over its episode's windows
(``reasons``) and its ``explanation`` is the most frequent one in an analyst's words.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from expose.monitor.config import AlertSection
from expose.monitor.model.score import Score
from expose.monitor.model.verification import explain

StreamState = Literal["authentic", "suspect", "alert", "insufficient"]
AlertStatus = Literal["open", "acknowledged", "closed"]
Change = Literal["opened", "updated", "ended"]
MAX_EVIDENCE = 600  # score points kept in an alert (10 min at one window per second)


class AlertLifecycleError(ValueError):
    """An acknowledge / close that the alert's status does not allow."""


@dataclass(frozen=True)
class Alert:
    id: str
    stream: str
    profile: str
    threshold: float
    opened_at: float  # wall clock (epoch seconds)
    t_start: float  # stream seconds: start of the first window over the threshold
    t_end: float | None  # stream seconds when the episode cleared; None while it lasts
    ended_at: float | None
    peak_distance: float
    mean_distance: float
    n_windows: int  # scored windows in the episode
    scores: tuple[tuple[float, float], ...] = field(repr=False)  # (stream t1, distance) evidence
    thumbnail_jpeg: str | None = field(default=None, repr=False)  # base64 JPEG of the face
    # term -> how many of the episode's scored windows it drove (windows without a driver,
    # scored without a decision, are not counted)
    reasons: dict[str, int] = field(default_factory=dict)
    status: AlertStatus = "open"
    acknowledged_by: str | None = None
    acknowledged_at: float | None = None
    closed_by: str | None = None
    closed_at: float | None = None
    close_reason: str | None = None

    def __post_init__(self) -> None:
        if self.n_windows < 1:
            raise ValueError("an alert needs at least one scored window")
        if self.status not in ("open", "acknowledged", "closed"):
            raise ValueError(f"unknown alert status {self.status!r}")

    @property
    def active(self) -> bool:
        return self.t_end is None

    @property
    def driver(self) -> str | None:
        """The term that drove most of the episode's windows (the earliest one on a tie)."""
        return top_driver(self.reasons)

    @property
    def explanation(self) -> str:
        return explain(self.driver)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scores"] = [list(p) for p in self.scores]
        d["active"] = self.active
        d["explanation"] = self.explanation
        return d

    def summary(self) -> dict[str, Any]:
        """to_dict() without the evidence (score series, thumbnail): for per-window updates."""
        d = self.to_dict()
        del d["scores"], d["thumbnail_jpeg"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Alert:
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        d["scores"] = tuple((float(a), float(b)) for a, b in d.get("scores", ()))
        d["reasons"] = {str(k): int(v) for k, v in (d.get("reasons") or {}).items()}  # none in older alerts
        return cls(**d)


def acknowledge(alert: Alert, who: str, when: float) -> Alert:
    if alert.status != "open":
        raise AlertLifecycleError(f"alert {alert.id} is {alert.status}; only an open alert can be acknowledged")
    return replace(alert, status="acknowledged", acknowledged_by=who, acknowledged_at=when)


def close(alert: Alert, who: str, when: float, reason: str) -> Alert:
    if alert.status == "closed":
        raise AlertLifecycleError(f"alert {alert.id} is already closed")
    if not reason.strip():
        raise AlertLifecycleError("closing an alert needs a reason")
    return replace(alert, status="closed", closed_by=who, closed_at=when, close_reason=reason)


@dataclass(frozen=True)
class PolicySettings:
    smoothing: int = 8  # scored windows averaged into the smoothed distance
    raise_k: int = 3
    raise_n: int = 5
    clear_m: int = 3
    end_after_insufficient: int = 30  # an episode with this many insufficient windows in a row ends

    def __post_init__(self) -> None:
        if not 1 <= self.raise_k <= self.raise_n:
            raise ValueError("need 1 <= raise_k <= raise_n")
        if self.smoothing < 1 or self.clear_m < 1 or self.end_after_insufficient < 1:
            raise ValueError("smoothing, clear_m and end_after_insufficient must be >= 1")

    @classmethod
    def from_config(cls, section: AlertSection) -> PolicySettings:
        return cls(smoothing=section.smoothing, raise_k=section.raise_k, raise_n=section.raise_n,
                   clear_m=section.clear_m)


@dataclass(frozen=True)
class PolicyState:
    state: StreamState = "insufficient"
    recent: tuple[float, ...] = ()  # last `smoothing` raw distances
    window: tuple[_Mark, ...] = ()  # last `raise_n` scored windows since the last episode
    under_run: int = 0  # consecutive smoothed windows under the threshold
    insufficient_run: int = 0
    alert: Alert | None = None  # the episode in progress

    def to_dict(self) -> dict[str, Any]:
        """JSON values: the state kept outside the process (live.cluster: in Redis, shared by
        the scorer nodes)."""
        return {"state": self.state, "recent": list(self.recent),
                "window": [dataclasses.asdict(m) for m in self.window], "under_run": self.under_run,
                "insufficient_run": self.insufficient_run,
                "alert": self.alert.to_dict() if self.alert is not None else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyState:
        alert = d.get("alert")
        return cls(state=d["state"], recent=tuple(float(x) for x in d["recent"]),
                   window=tuple(_Mark(**m) for m in d["window"]), under_run=int(d["under_run"]),
                   insufficient_run=int(d["insufficient_run"]),
                   alert=Alert.from_dict(alert) if alert is not None else None)


@dataclass(frozen=True)
class _Mark:
    t0: float
    t1: float
    distance: float
    over: bool  # smoothed distance over the threshold
    driver: str | None  # the term that drove the window's distance (None: no decision)


@dataclass(frozen=True)
class PolicyStep:
    state: PolicyState
    smoothed: float | None  # None for an insufficient window
    alert: Alert | None = None  # the alert this step opened, updated or ended
    change: Change | None = None


def _new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass(frozen=True)
class AlertPolicy:
    settings: PolicySettings = PolicySettings()

    def step(self, st: PolicyState, score: Score, threshold: float | Callable[[int], float], now: float,
             thumbnail: Callable[[], str | None] = lambda: None,
             new_id: Callable[[], str] = _new_id) -> PolicyStep:
        """Advance one window. ``threshold`` is a number, or a function of how many windows the
        smoothed distance averages (fewer at the start of a stream: a noisier mean needs a
        higher threshold). ``thumbnail`` is only called when an alert opens."""
        s = self.settings
        if score.distance is None:
            return self._insufficient(st, now)
        recent = (st.recent + (score.distance,))[-s.smoothing:]
        smoothed = sum(recent) / len(recent)
        thr = threshold(len(recent)) if callable(threshold) else threshold
        is_over = smoothed > thr
        marks = (st.window + (_Mark(score.t0, score.t1, score.distance, is_over, score.driver),))[-s.raise_n:]
        under_run = 0 if is_over else st.under_run + 1
        point = (score.t1, score.distance)
        base = replace(st, recent=recent, window=marks, under_run=under_run, insufficient_run=0)
        alert = st.alert
        if alert is not None:
            alert = _extend(alert, point, score.driver)
            if under_run >= s.clear_m:
                ended = replace(alert, t_end=score.t1, ended_at=now)
                return PolicyStep(replace(base, state="authentic", alert=None, window=()), smoothed, ended, "ended")
            return PolicyStep(replace(base, state="alert", alert=alert), smoothed, alert, "updated")
        if sum(m.over for m in marks) >= s.raise_k:
            first = next(i for i, m in enumerate(marks) if m.over)  # the episode starts at the first one over
            ep = marks[first:]
            dists = [m.distance for m in ep]
            opened = Alert(
                id=new_id(), stream=score.stream, profile=score.profile, threshold=thr, opened_at=now,
                t_start=ep[0].t0, t_end=None, ended_at=None, peak_distance=max(dists),
                mean_distance=sum(dists) / len(dists), n_windows=len(dists),
                scores=tuple((m.t1, m.distance) for m in ep), thumbnail_jpeg=thumbnail(),
                reasons=count_drivers(m.driver for m in ep),
            )
            return PolicyStep(replace(base, state="alert", alert=opened), smoothed, opened, "opened")
        return PolicyStep(replace(base, state="suspect" if is_over else "authentic"), smoothed)

    def _insufficient(self, st: PolicyState, now: float) -> PolicyStep:
        run = st.insufficient_run + 1
        if st.alert is not None:
            if run >= self.settings.end_after_insufficient:
                last_t = st.alert.scores[-1][0] if st.alert.scores else st.alert.t_start
                ended = replace(st.alert, t_end=last_t, ended_at=now)
                return PolicyStep(replace(st, state="insufficient", alert=None, insufficient_run=run, window=()),
                                  None, ended, "ended")
            return PolicyStep(replace(st, insufficient_run=run), None)
        return PolicyStep(replace(st, state="insufficient", insufficient_run=run), None)


def count_drivers(drivers: Iterable[str | None]) -> dict[str, int]:
    """How many windows each term drove, in order of first appearance (None: no driver, not counted)."""
    out: dict[str, int] = {}
    for d in drivers:
        if d is not None:
            out[d] = out.get(d, 0) + 1
    return out


def top_driver(counts: dict[str, int]) -> str | None:
    """The term that drove the most windows, the earliest one on a tie; None when none did."""
    return max(counts, key=counts.__getitem__) if counts else None


def _extend(alert: Alert, point: tuple[float, float], driver: str | None) -> Alert:
    n = alert.n_windows + 1
    reasons = alert.reasons if driver is None else {**alert.reasons, driver: alert.reasons.get(driver, 0) + 1}
    return replace(
        alert, scores=(alert.scores + (point,))[-MAX_EVIDENCE:], n_windows=n,
        peak_distance=max(alert.peak_distance, point[1]),
        mean_distance=alert.mean_distance + (point[1] - alert.mean_distance) / n, reasons=reasons,
    )
