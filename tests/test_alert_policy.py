"""AlertPolicy as a pure function: smoothing, k-of-n raise, m-under clear, insufficient
windows that neither raise nor clear, the reasons an alert gives, and the alert lifecycle."""

from __future__ import annotations

import pytest

from expose.monitor.alerts.policy import (
    Alert,
    AlertLifecycleError,
    AlertPolicy,
    PolicySettings,
    PolicyState,
    PolicyStep,
    acknowledge,
    close,
)
from expose.monitor.model.score import Score

THR = 1.0


def _score(t: float, d: float | None, driver: str | None = None) -> Score:
    if d is None:
        return Score("cam", "alice", t, t + 2.56, "insufficient", 0.1, 0.0, reason="face on 10% of frames")
    return Score("cam", "alice", t, t + 2.56, "scored", 1.0, 0.8, distance=d, driver=driver)


def _run(policy: AlertPolicy, dists: list[float | None], drivers: list[str | None] | None = None,
         ) -> list[PolicyStep]:
    st, steps = PolicyState(), []
    for i, d in enumerate(dists):
        step = policy.step(st, _score(float(i), d, drivers[i] if drivers else None), THR, now=1000.0 + i,
                           thumbnail=lambda: "JPEG", new_id=lambda: "a1")
        steps.append(step)
        st = step.state
    return steps


def test_k_of_n_raises_and_m_under_clears() -> None:
    p = AlertPolicy(PolicySettings(smoothing=1, raise_k=2, raise_n=3, clear_m=2))
    steps = _run(p, [0.1, 2.0, 0.2, 3.0, 0.5, 0.4, 0.3])
    assert [s.state.state for s in steps] == ["authentic", "suspect", "authentic", "alert", "alert", "authentic",
                                              "authentic"]
    assert [s.change for s in steps] == [None, None, None, "opened", "updated", "ended", None]
    opened = steps[3].alert
    assert opened is not None  # the "opened" step carries its alert
    assert opened.id == "a1" and opened.thumbnail_jpeg == "JPEG" and opened.status == "open"
    assert opened.t_start == 1.0  # the first window over the threshold
    assert [(round(t, 6), d) for t, d in opened.scores] == [(3.56, 2.0), (4.56, 0.2), (5.56, 3.0)]
    assert opened.peak_distance == 3.0 and opened.mean_distance == pytest.approx(5.2 / 3)
    ended = steps[5].alert
    assert ended is not None  # the "ended" step carries its alert
    assert ended.t_end == pytest.approx(7.56) and ended.ended_at == 1005.0 and ended.n_windows == 5
    assert not ended.active and opened.active


def test_smoothing_ignores_a_single_spike() -> None:
    p = AlertPolicy(PolicySettings(smoothing=3, raise_k=1, raise_n=1, clear_m=1))
    steps = _run(p, [0.2, 0.2, 2.0, 0.2])  # (0.2 + 0.2 + 2.0) / 3 = 0.8 < 1
    assert all(s.change is None for s in steps)
    assert steps[2].smoothed == pytest.approx(0.8)


def test_insufficient_windows_neither_raise_nor_clear() -> None:
    p = AlertPolicy(PolicySettings(smoothing=1, raise_k=2, raise_n=2, clear_m=2, end_after_insufficient=3))
    steps = _run(p, [None, 5.0, 5.0, None, None, 0.1, 0.1])
    assert steps[0].state.state == "insufficient"  # no signal is not "authentic"
    assert steps[2].change == "opened"
    assert [s.state.state for s in steps[3:5]] == ["alert", "alert"]  # an episode survives a gap
    assert steps[6].change == "ended"
    # a long gap ends the episode without calling the stream authentic
    steps = _run(p, [5.0, 5.0, None, None, None])
    assert steps[4].change == "ended" and steps[4].state.state == "insufficient"


def test_an_alert_counts_the_terms_that_drove_its_windows() -> None:
    p = AlertPolicy(PolicySettings(smoothing=1, raise_k=2, raise_n=3, clear_m=2))
    steps = _run(p, [0.1, 2.0, 0.2, 3.0, None, 2.5, 0.5, 0.4],
                 ["sync", "face", "voice", "face", None, "voice", "identity", "sync"])
    opened, updated = steps[3].alert, steps[5].alert
    assert opened is not None and updated is not None
    # the episode's windows from the first one over the threshold; the window before it does not count
    assert opened.reasons == {"face": 2, "voice": 1}
    assert opened.driver == "face" and opened.explanation == "face does not match the enrolled person"
    # an insufficient window neither counts nor ends the episode; a tie goes to the earliest driver
    assert steps[4].alert is None and steps[4].state.alert == opened
    assert updated.reasons == {"face": 2, "voice": 2} and updated.driver == "face"
    ended = steps[7].alert
    assert ended is not None and steps[7].change == "ended"
    assert ended.reasons == {"face": 2, "voice": 2, "identity": 1, "sync": 1}
    assert sum(ended.reasons.values()) == ended.n_windows == 6
    d = ended.to_dict()
    assert d["reasons"] == ended.reasons and d["explanation"] == "face does not match the enrolled person"
    assert Alert.from_dict(d) == ended


def test_without_a_decision_an_alert_has_no_reason() -> None:
    p = AlertPolicy(PolicySettings(smoothing=1, raise_k=1, raise_n=1, clear_m=1))
    opened = _run(p, [2.0])[0].alert  # scores without a driver (the motion distance alone)
    assert opened is not None and opened.reasons == {} and opened.driver is None and opened.explanation == ""


def test_an_alert_stored_before_reasons_reads_back_without_them() -> None:
    a = Alert(id="x", stream="cam", profile="alice", threshold=1.0, opened_at=1.0, t_start=0.0, t_end=None,
              ended_at=None, peak_distance=2.0, mean_distance=1.5, n_windows=2, scores=((1.0, 1.0), (2.0, 2.0)))
    old = {k: v for k, v in a.to_dict().items() if k not in ("reasons", "explanation")}
    assert Alert.from_dict(old) == a and a.reasons == {} and a.explanation == ""


def test_lifecycle_open_acknowledged_closed() -> None:
    a = Alert(id="x", stream="cam", profile="alice", threshold=1.0, opened_at=1.0, t_start=0.0, t_end=None,
              ended_at=None, peak_distance=2.0, mean_distance=1.5, n_windows=2, scores=((1.0, 1.0), (2.0, 2.0)))
    b = acknowledge(a, "ana", 5.0)
    assert (b.status, b.acknowledged_by, b.acknowledged_at) == ("acknowledged", "ana", 5.0)
    with pytest.raises(AlertLifecycleError):
        acknowledge(b, "bob", 6.0)
    with pytest.raises(AlertLifecycleError, match="reason"):
        close(b, "ana", 7.0, " ")
    c = close(b, "ana", 7.0, "confirmed impostor")
    assert (c.status, c.closed_by, c.close_reason) == ("closed", "ana", "confirmed impostor")
    with pytest.raises(AlertLifecycleError):
        close(c, "ana", 8.0, "again")
    assert Alert.from_dict(c.to_dict()) == c  # what the store keeps reads back the same


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        PolicySettings(raise_k=4, raise_n=3)


def test_threshold_as_a_function_of_the_number_of_averaged_windows() -> None:
    """At the start of a stream the mean covers fewer windows; a callable threshold gets that
    count, so a noisy early mean is held to a higher bar than the full one."""
    p = AlertPolicy(PolicySettings(smoothing=4, raise_k=1, raise_n=1, clear_m=1))
    seen: list[int] = []

    def thr(n: int) -> float:
        seen.append(n)
        return 10.0 / n  # 10, 5, 3.33, 2.5

    st, states = PolicyState(), []
    for i, d in enumerate([4.0, 4.0, 4.0, 4.0]):
        step = p.step(st, _score(float(i), d), thr, now=float(i), new_id=lambda: "a1")
        st = step.state
        states.append(st.state)
    assert seen == [1, 2, 3, 4]
    assert states == ["authentic", "authentic", "alert", "alert"]  # 4 > 10/3 from the third window


def test_policy_state_survives_json_and_steps_on_the_same() -> None:
    """A cluster's scorers keep each stream's state in Redis as JSON (live.cluster): every state
    along an episode reads back equal, and the next step from the read-back state is the step
    from the original."""
    import json

    p = AlertPolicy(PolicySettings(smoothing=2, raise_k=2, raise_n=3, clear_m=2))
    steps = _run(p, [0.1, 2.0, 0.2, 3.0, None, 2.5, 0.5, 0.4], ["sync", "face", "voice", "face", None, "voice",
                                                                 "identity", "sync"])
    assert any(s.state.alert is not None for s in steps) and any(s.state.window for s in steps)
    for i, s in enumerate(steps):
        back = PolicyState.from_dict(json.loads(json.dumps(s.state.to_dict(), allow_nan=False)))
        assert back == s.state
        nxt = _score(100.0 + i, 2.2, "face")
        a = p.step(s.state, nxt, THR, now=2000.0, thumbnail=lambda: "JPEG", new_id=lambda: "b2")
        b = p.step(back, nxt, THR, now=2000.0, thumbnail=lambda: "JPEG", new_id=lambda: "b2")
        assert a == b
