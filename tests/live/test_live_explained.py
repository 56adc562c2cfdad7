"""Explained scores through the live path: with a decision, the monitor's streams compute face
descriptors and voice embeddings, so each score event carries the face and voice terms that
offline scoring of the same file gives, the standardised terms, the driver and its
explanation; an alert counts its windows' drivers. Without a decision none of it is computed.

The decision is made up (conftest ``explained``): this checks the plumbing, not detection
(test_live_verification.py does that with the shipped decision).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import SPEECH_CLIP, collect_events, live_config, running_server

from expose.monitor.config import STARTER_MODEL
from expose.monitor.evaluation.clips import score_track
from expose.monitor.model.exam import load_model
from expose.monitor.model.scorer import Scorer
from expose.monitor.model.verification import EXPLANATIONS
from expose.profiles.store import ProfileStore

if TYPE_CHECKING:
    from conftest import Explained

    from tests.conftest import Clip, Extract

pytestmark = pytest.mark.timeout(300)


def _ended(ms: list[dict[str, Any]]) -> bool:
    return any(m["type"] == "stream" and m.get("phase") in ("ended", "failed") for m in ms)


def _scored(msgs: list[dict[str, Any]], stream: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "score" and m["stream"] == stream and m["status"] == "scored"]


def _same(a: float | None, b: float | None) -> bool:
    return a is None and b is None or a is not None and b is not None and a == pytest.approx(b, rel=1e-5)


def test_live_scores_carry_the_offline_face_and_voice_terms_and_alerts_their_reasons(
        explained: Explained, clip: Clip, extract: Extract, tmp_path: Path) -> None:
    path = clip(SPEECH_CLIP)
    cfg = live_config(tmp_path, model={"decision": str(explained.decision)},
                      streams=[{"name": "cam", "url": str(path), "profile": "always", "realtime": False}])
    with running_server(cfg, STARTER_MODEL, explained.profiles) as srv:
        assert srv.service.monitor.identity  # a decision: the streams compute the embeddings
        msgs = asyncio.run(collect_events(srv.ws_url, _ended, since=0, timeout=180))
    scores = _scored(msgs, "cam")
    assert len(scores) >= 7, [m.get("reason") for m in msgs if m["type"] == "score"]

    base = load_model(STARTER_MODEL, explained.decision)
    offline = {round(s.t0, 3): s for s in score_track(extract(path), ProfileStore(explained.profiles).load("always"),
                                                      Scorer.of(base)).scores}
    for m in scores:
        o = offline[round(m["t0"], 3)]
        # the same frames and samples give the same descriptors and embeddings as offline
        assert _same(m["face"], o.face) and _same(m["voice"], o.voice), (m, o)
        assert m["face"] is not None  # one face a second: two or more per 2.56 s window
        assert set(m["terms"]) >= {"identity", "sync", "fit", "face"} and m["driver"] in m["terms"]
        assert m["driver"] == max(m["terms"], key=lambda k: (m["terms"][k], k))
        assert m["explanation"] == EXPLANATIONS[m["driver"]]
    assert any(m["voice"] is not None for m in scores)

    alerts = [m["alert"] for m in msgs if m["type"] == "alert" and m["stream"] == "cam"]
    assert alerts, "the always profile's threshold puts every window over it"
    last = alerts[-1]
    assert sum(last["reasons"].values()) == last["n_windows"]
    top = max(last["reasons"], key=last["reasons"].__getitem__)
    assert last["explanation"] == EXPLANATIONS[top]


def test_without_a_decision_no_embedding_is_computed(tiny_model: Path, profiles_dir: Path, clip: Clip,
                                                     tmp_path: Path) -> None:
    cfg = live_config(tmp_path, streams=[{"name": "cam", "url": str(clip(SPEECH_CLIP)), "profile": "always",
                                          "realtime": False}])
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        assert not srv.service.monitor.identity
        msgs = asyncio.run(collect_events(srv.ws_url, _ended, since=0, timeout=180))
    scores = _scored(msgs, "cam")
    assert scores and all(m["face"] is None and m["voice"] is None and m["terms"] == {} and m["driver"] is None
                          and m["explanation"] == "" for m in scores)
    alert = next(m["alert"] for m in msgs if m["type"] == "alert")
    assert alert["reasons"] == {} and alert["explanation"] == ""
