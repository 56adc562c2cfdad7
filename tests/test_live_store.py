"""The monitor's SQLite store on a real file: seq order, replay, alerts, registry, restart,
and the explained alerts and score events reading back (also those stored before)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from expose.monitor.alerts.events import EVENTS, AlertDetail, AlertSummary, ScoreData, ScoreEvent
from expose.monitor.alerts.policy import Alert
from expose.monitor.live.store import LiveStore, StoreError


def _alert(i: str, stream: str = "cam", opened: float = 1.0) -> Alert:
    return Alert(id=i, stream=stream, profile="alice", threshold=1.0, opened_at=opened, t_start=0.0, t_end=None,
                 ended_at=None, peak_distance=2.0, mean_distance=1.5, n_windows=1, scores=((2.56, 2.0),))


def test_events_alerts_and_streams_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "m.sqlite3"
    s = LiveStore(db)
    seqs = [s.append_event("score", "cam", {"distance": float(i)}).seq for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    s.put_alert(_alert("a"))
    s.put_alert(_alert("b", stream="other", opened=2.0))
    s.put_alert(dataclasses.replace(_alert("a"), status="acknowledged", acknowledged_by="ana"))
    s.put_stream("cam", {"name": "cam", "url": "rtsp://127.0.0.1/x"})
    s.close()

    s = LiveStore(db)
    assert [e.seq for e in s.events_since(seqs[1])] == seqs[2:]
    assert s.events_since(seqs[1])[0].data == {"distance": 2.0}
    alert = s.get_alert("a")
    assert alert is not None  # it was stored before the reopen
    assert alert.status == "acknowledged"
    assert [a.id for a in s.list_alerts()] == ["b", "a"]  # newest first
    assert [a.id for a in s.list_alerts(status="acknowledged")] == ["a"]
    assert [a.id for a in s.list_alerts(stream="other")] == ["b"]
    assert s.list_streams() == {"cam": {"name": "cam", "url": "rtsp://127.0.0.1/x"}}
    assert s.delete_stream("cam") and not s.delete_stream("cam")
    # seq never goes back, even after pruning everything but one event
    assert s.prune_events(keep=1) == 4
    nxt = s.append_event("alert", "cam", {}).seq
    assert nxt > seqs[-1] and s.last_seq() == nxt
    s.close()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "m.sqlite3"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="cannot open the monitor database"):
        LiveStore(bad)


def test_an_explained_alert_and_score_event_read_back_the_same(tmp_path: Path) -> None:
    s = LiveStore(tmp_path / "m.sqlite3")
    a = dataclasses.replace(_alert("a"), reasons={"face": 3, "voice": 1}, n_windows=4)
    s.put_alert(a)
    back = s.get_alert("a")
    assert back == a and back.explanation == "face does not match the enrolled person"
    assert AlertDetail.of(back).model_dump() == {**a.to_dict(), "scores": [(2.56, 2.0)]}
    assert AlertSummary.of(back).reasons == {"face": 3, "voice": 1}

    data = ScoreData(profile="alice", t0=0.0, t1=2.56, status="scored", distance=2.5, smoothed=2.0, threshold=1.0,
                     z=3.0, identity=0.1, sync=0.2, fit=-1.0, face=4.5, voice=None,
                     terms={"identity": 0.3, "sync": 0.1, "fit": -0.2, "face": 2.5}, driver="face",
                     explanation="face does not match the enrolled person", face_ratio=1.0, speech_ratio=0.9,
                     reason="", state="suspect", latency_s=0.05, alert_id=None)
    stored = s.append_event("score", "cam", data.model_dump(mode="json"))
    event = s.events_since(stored.seq - 1)[0].event()
    assert isinstance(event, ScoreEvent)
    assert ScoreData.model_validate(event.data) == data
    assert EVENTS.validate_json(event.to_json()) == event
    # a score event stored before the face and voice terms existed still reads back
    old = {k: v for k, v in data.model_dump(mode="json").items()
           if k not in ("face", "voice", "terms", "driver", "explanation")}
    replayed = s.events_since(s.append_event("score", "cam", old).seq - 1)[0].event()
    assert isinstance(replayed, ScoreEvent) and replayed.driver is None and replayed.terms == {}
    s.close()


def test_followed_events_keep_their_origin_and_since_maps_onto_it(tmp_path: Path) -> None:
    """A cluster console's store: each followed event carries the Redis entry id it came from,
    and an id maps onto the last event stored at or before it (ids compare as MS then N)."""
    from expose.monitor.live.store import CLUSTER_CURSOR

    store = LiveStore(tmp_path / "m.sqlite3")
    data = {"action": "phase", "phase": "live", "reason": "", "reconnects": 0}
    seqs = [store.append_followed("stream", "cam", data, 1.0, CLUSTER_CURSOR, origin).seq
            for origin in ("1000-0", "1000-1", "1000-10", "1002-0")]
    assert store.meta(CLUSTER_CURSOR) == "1002-0"
    assert [e.origin for e in store.events_since(0)] == ["1000-0", "1000-1", "1000-10", "1002-0"]
    assert store.events_since(0)[2].event().origin == "1000-10"
    assert store.seq_at_origin("999-5") == 0
    assert store.seq_at_origin("1000-2") == seqs[1]  # 1000-10 is after 1000-2 (not as strings)
    assert store.seq_at_origin("1001-0") == seqs[2]
    assert store.seq_at_origin("99999-0") == seqs[3]
    local = store.append_event("stream", "cam", data)
    assert store.events_since(seqs[3])[0].origin is None and local.seq > seqs[3]
    with pytest.raises(ValueError, match="not a Redis entry id"):
        store.seq_at_origin("12-x")
    with pytest.raises(ValueError, match="not a Redis entry id"):
        store.append_followed("stream", "cam", data, 1.0, CLUSTER_CURSOR, "nope")
    assert len(store.events_since(0)) == 5  # the refused one left nothing behind
