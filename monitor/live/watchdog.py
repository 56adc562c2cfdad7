"""The per-stream watchdog, as pure functions of (state, now).

What Frigate's CameraWatchdog does in a thread with sleeps, written so that it can be
tested: the stream runner reports what happened (``on_connected``, ``on_frame``,
``on_end``, ``on_restart``) and asks ``decide(state, now, settings)`` once a tick what
to do. Phases:

- ``connecting``: a source is being opened; too long -> stop it (then ``down``).
- ``live``: frames arrive; no frame for ``stall_after_s`` -> stop it (then ``down``).
- ``down``: the source ended or failed; restart after an exponential backoff, unless
  ``max_restarts`` restarts already happened within ``restart_window_s`` -> ``failed``.
- ``ended``: a finite source (a file) reached its end and is not restarted.
- ``failed``: given up; nothing more happens until an operator re-adds the stream.

Push sources (WHIP) cannot be restarted from here: for them ``decide`` only reports.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

Phase = Literal["connecting", "live", "down", "ended", "failed"]


@dataclass(frozen=True)
class WatchdogSettings:
    stall_after_s: float = 5.0  # live with no frame this long -> restart
    open_timeout_s: float = 15.0  # connecting this long without a frame -> restart
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    max_restarts: int = 10  # within restart_window_s; one more -> failed
    restart_window_s: float = 600.0
    stable_after_s: float = 30.0  # live this long: the backoff starts again from the initial delay
    restart_on_end: bool = True  # network sources: an end is a failure; False for files
    loop: bool = False  # files played in a loop: an end restarts at once, not counted as a failure
    can_restart: bool = True  # False for push sources (WHIP): nothing to reconnect to

    def __post_init__(self) -> None:
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if self.max_restarts < 0:
            raise ValueError("max_restarts must be >= 0")


@dataclass(frozen=True)
class WatchdogState:
    phase: Phase
    since: float  # when this phase began
    last_frame_at: float | None = None
    live_since: float | None = None
    failures: int = 0  # consecutive failed connections (drives the backoff)
    restarts: tuple[float, ...] = ()  # times of restarts within the window
    reason: str = ""  # why the stream is down / failed
    planned: bool = False  # down because a looped file ended: restart at once, not a failure

    @property
    def reconnects(self) -> int:
        return len(self.restarts)


class Action(Enum):
    NONE = "none"
    STOP = "stop"  # the current source is stuck: stop it, then report on_end(error=reason)
    RESTART = "restart"  # open a new source, then report on_restart
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


def start(now: float) -> WatchdogState:
    return WatchdogState(phase="connecting", since=now)


def on_frame(state: WatchdogState, now: float, settings: WatchdogSettings) -> WatchdogState:
    if state.phase in ("connecting", "down"):
        return replace(state, phase="live", since=now, last_frame_at=now, live_since=now, reason="")
    if state.phase == "live":
        failures = state.failures
        if state.live_since is not None and now - state.live_since >= settings.stable_after_s:
            failures = 0
        return replace(state, last_frame_at=now, failures=failures)
    return state


def on_end(state: WatchdogState, now: float, settings: WatchdogSettings, error: str = "") -> WatchdogState:
    """The source stopped (end of media, or ``error``)."""
    if state.phase in ("ended", "failed"):
        return state
    if not error and settings.loop:
        return replace(state, phase="down", since=now, reason="end of media, looping", planned=True)
    if not error and not settings.restart_on_end:
        return replace(state, phase="ended", since=now, reason="end of media")
    return replace(state, phase="down", since=now, failures=state.failures + 1,
                   reason=error or "source ended")


def on_restart(state: WatchdogState, now: float, settings: WatchdogSettings) -> WatchdogState:
    recent = tuple(t for t in state.restarts if now - t < settings.restart_window_s)
    if not state.planned:
        recent += (now,)
    return replace(state, phase="connecting", since=now, restarts=recent, live_since=None, planned=False)


def backoff(failures: int, settings: WatchdogSettings) -> float:
    """Delay before reconnect attempt number ``failures`` (1, 2, 4, ... s, capped)."""
    return min(settings.backoff_max_s, settings.backoff_initial_s * 2 ** max(0, failures - 1))


def decide(state: WatchdogState, now: float, settings: WatchdogSettings) -> Decision:
    if state.phase in ("ended", "failed"):
        return Decision(Action.NONE)
    if state.phase == "live":
        age = now - (state.last_frame_at if state.last_frame_at is not None else state.since)
        if age >= settings.stall_after_s and settings.can_restart:
            return Decision(Action.STOP, f"no frame for {age:.1f} s")
        return Decision(Action.NONE)
    if state.phase == "connecting":
        if now - state.since >= settings.open_timeout_s and settings.can_restart:
            return Decision(Action.STOP, f"no frame {now - state.since:.1f} s after connecting")
        return Decision(Action.NONE)
    # down
    if not settings.can_restart:
        return Decision(Action.NONE)
    if state.planned:
        return Decision(Action.RESTART, state.reason)
    recent = [t for t in state.restarts if now - t < settings.restart_window_s]
    if len(recent) >= settings.max_restarts:
        return Decision(Action.GIVE_UP, f"{len(recent)} restarts within {settings.restart_window_s:.0f} s "
                                        f"(last: {state.reason})")
    if now - state.since >= backoff(state.failures, settings):
        return Decision(Action.RESTART, state.reason)
    return Decision(Action.NONE)


def give_up(state: WatchdogState, now: float, reason: str) -> WatchdogState:
    return replace(state, phase="failed", since=now, reason=reason)


def stalled(state: WatchdogState, now: float, settings: WatchdogSettings) -> bool:
    """Live but without a frame for ``stall_after_s`` (what health shows for push sources)."""
    last = state.last_frame_at if state.last_frame_at is not None else state.since
    return state.phase == "live" and now - last >= settings.stall_after_s
