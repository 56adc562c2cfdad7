"""The watchdog's decisions as pure functions of (state, now): stall, backoff, cap, end."""

from __future__ import annotations

from expose.monitor.live import watchdog as wd
from expose.monitor.live.watchdog import Action

S = wd.WatchdogSettings(stall_after_s=5, open_timeout_s=10, backoff_initial_s=1, backoff_max_s=8,
                        max_restarts=3, restart_window_s=100, stable_after_s=30)


def test_live_stream_is_left_alone_until_it_stalls() -> None:
    st = wd.on_frame(wd.start(0.0), 1.0, S)
    assert st.phase == "live"
    assert wd.decide(st, 5.9, S).action is Action.NONE
    d = wd.decide(st, 6.0, S)
    assert d.action is Action.STOP and "no frame for 5.0 s" in d.reason


def test_connecting_too_long_is_stopped() -> None:
    st = wd.start(0.0)
    assert wd.decide(st, 9.9, S).action is Action.NONE
    assert wd.decide(st, 10.0, S).action is Action.STOP


def test_backoff_doubles_and_is_capped() -> None:
    assert [wd.backoff(n, S) for n in range(1, 7)] == [1, 2, 4, 8, 8, 8]


def test_reconnect_sequence_with_backoff_then_give_up() -> None:
    st = wd.on_frame(wd.start(0.0), 0.5, S)
    now = 1.0
    restarts = 0
    actions = []
    while now < 200:
        d = wd.decide(st, now, S)
        actions.append(d.action)
        if d.action is Action.GIVE_UP:
            st = wd.give_up(st, now, d.reason)
            break
        if d.action is Action.RESTART:
            st = wd.on_restart(st, now, S)
            restarts += 1
        elif st.phase in ("live", "connecting"):
            st = wd.on_end(st, now, S, "connection refused")  # every attempt fails at once
        now += 0.25
    assert st.phase == "failed" and "3 restarts" in st.reason and "connection refused" in st.reason
    assert restarts == 3 and st.reconnects == 3
    assert wd.decide(st, now + 1000, S).action is Action.NONE  # failed stays failed


def test_restart_waits_for_the_backoff() -> None:
    st = wd.on_end(wd.on_frame(wd.start(0.0), 0.0, S), 10.0, S, "eof")
    assert st.phase == "down" and st.failures == 1
    assert wd.decide(st, 10.9, S).action is Action.NONE
    assert wd.decide(st, 11.0, S).action is Action.RESTART
    st = wd.on_end(wd.on_restart(st, 11.0, S), 11.5, S, "eof")
    assert st.failures == 2
    assert wd.decide(st, 13.4, S).action is Action.NONE
    assert wd.decide(st, 13.5, S).action is Action.RESTART


def test_a_stable_connection_resets_the_backoff() -> None:
    st = wd.WatchdogState(phase="down", since=0.0, failures=4)
    st = wd.on_frame(wd.on_restart(st, 0.0, S), 1.0, S)
    st = wd.on_frame(st, 31.0, S)  # live for 30 s
    assert st.failures == 0


def test_old_restarts_leave_the_window() -> None:
    st = wd.WatchdogState(phase="down", since=500.0, failures=1, restarts=(1.0, 2.0, 3.0))
    assert wd.decide(st, 501.0, S).action is Action.RESTART  # those three are > 100 s old


def test_files_end_and_push_sources_are_never_restarted() -> None:
    once = wd.WatchdogSettings(restart_on_end=False)
    st = wd.on_end(wd.on_frame(wd.start(0.0), 1.0, once), 2.0, once)
    assert st.phase == "ended" and wd.decide(st, 100.0, once).action is Action.NONE
    # a file that cannot be read is a failure, not an end
    assert wd.on_end(wd.start(0.0), 1.0, once, "no such file").phase == "down"

    push = wd.WatchdogSettings(can_restart=False, stall_after_s=5)
    st = wd.on_frame(wd.start(0.0), 0.0, push)
    assert wd.decide(st, 60.0, push).action is Action.NONE
    assert wd.stalled(st, 60.0, push) and not wd.stalled(st, 1.0, push)


def test_a_looped_file_restarts_at_once_and_never_fails() -> None:
    loop = wd.WatchdogSettings(restart_on_end=False, loop=True, max_restarts=2, backoff_initial_s=5)
    st = wd.on_frame(wd.start(0.0), 0.0, loop)
    for k in range(10):  # ten plays of the file
        st = wd.on_end(st, 10.0 * k + 6, loop)
        d = wd.decide(st, 10.0 * k + 6, loop)
        assert d.action is Action.RESTART
        st = wd.on_frame(wd.on_restart(st, 10.0 * k + 6, loop), 10.0 * k + 6.1, loop)
    assert st.phase == "live" and st.reconnects == 0 and st.failures == 0
    # a real failure of a looped file still counts
    st = wd.on_end(st, 200.0, loop, "cannot decode")
    assert not st.planned and st.failures == 1 and wd.decide(st, 200.0, loop).action is Action.NONE


def test_a_stream_is_behind_while_media_was_lost_recently() -> None:
    from expose.monitor.live.runner import LossTracker

    t = LossTracker(window_s=10.0)
    t.update(0, 1.0)
    assert not t.behind(1.0)  # nothing lost yet
    t.update(3, 2.0)  # 3 frames dropped by now
    assert t.behind(2.0) and t.behind(12.0)
    t.update(3, 11.0)  # no new loss: the totals only say what happened before
    assert not t.behind(12.1)
    t.update(4, 20.0)
    assert t.behind(25.0) and not t.behind(30.5)
