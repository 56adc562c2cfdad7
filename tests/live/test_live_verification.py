"""Face and voice verification end to end, live: the starter model with its shipped decision
(``model.decision = "auto"``, opt-in this release), trump enrolled from one recording
(speech_01.mp4), calls published by a real aiortc peer over WHIP, the default AlertPolicy and
the profile's own thresholds; nothing is forced.

(a) another person (tedlieu) claiming to be trump raises an alert whose most frequent
    driver is the face term;
(b) trump's own video from another recording (farewell_address.mp4) with another person's
    voice (vox_7414, stream copies, played twice) raises one driven by the voice or the
    lip-sync term;
(c) trump in another recording than the enrolled one (farewell_address.mp4) raises none.

An alert's reasons are read once its episode has EPISODE (live_support) windows (or ended): at opening it
has only a few (raise_k of raise_n), and which term drives a single window varies. In (b)
trump's own face from this recording sits ~1.7 spreads above the face term's genuine mean,
level with the other voice on the voice term: by the largest standardised term the face
drove as many windows as the voice (the test failed until 2026-12-02). The shipped decision
names the term with the most evidence of an attack instead (DecisionSpec.evidence, chosen on
validation): his face 1.7 spreads up is still far below where impostor faces sit.

Skipped without the decision file: without it the score is the motion distance alone and
has no driver (test_live_detection.py covers that path). When a check fails, the message
lists every scored window (live_support.scored_windows).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import (
    SPEECH_CLIP,
    RunningServer,
    alert_of,
    call_as,
    enroll_into,
    genuine_call,
    live_config,
    running_server,
    scored_windows,
    until_episode,
)
from media_factory import dub_remux

from expose.monitor.config import STARTER_MODEL, AlertSection
from expose.monitor.model.exam import load_model
from expose.monitor.model.verification import STARTER_DECISION

if TYPE_CHECKING:
    from tests.conftest import Clip, Extract

pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(not STARTER_DECISION.is_file(),
                       reason=f"no decision file ({STARTER_DECISION.name}): the score has no face or voice term"),
]

IMPOSTOR = "real/tedlieu/speech_01.mp4"
OTHER_VOICE = "real/vox_7414/clip_02.mp4"
GENUINE = "real/trump/farewell_address.mp4"  # 20 s
GENUINE_S = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, extract: Extract, clip: Clip) -> Iterator[RunningServer]:
    """One monitor for the module with the shipped decision (``model.decision = "auto"``; not the
    default this release); trump enrolled from speech_01.mp4 with it and the default EnrollConfig."""
    base = load_model(STARTER_MODEL, "auto")
    if base.decision is None:
        pytest.skip(f"{STARTER_DECISION.name} was made for another model than {STARTER_MODEL.name}")
    root = tmp_path_factory.mktemp("verification")
    path = clip(SPEECH_CLIP)
    profile = enroll_into(root / "profiles", "trump", base, path, extract(path))
    assert profile.decision_sha256 is not None, "enrolled without the decision"
    assert len(profile.identity.face) and len(profile.identity.voice), "nothing enrolled for the face / voice terms"
    cfg = live_config(root, model={"decision": "auto"}, alerts=AlertSection().model_dump())  # the default policy
    with running_server(cfg, STARTER_MODEL, root / "profiles") as srv:
        yield srv


def _alert(msgs: list[dict[str, Any]], stream: str) -> dict[str, Any]:
    return alert_of(msgs, stream, "trump")


def _top(reasons: dict[str, int]) -> str:
    return max(reasons, key=reasons.__getitem__)  # the earliest on a tie, as Alert.driver


def test_an_impostor_claiming_the_profile_raises_a_face_alert(server: RunningServer, clip: Clip) -> None:
    msgs = call_as(server, "impostor", "trump", clip(IMPOSTOR), until_episode("impostor"), seconds=60)
    alert = _alert(msgs, "impostor")
    assert _top(alert["reasons"]) == "face", (alert["reasons"], scored_windows(msgs, "impostor"))
    assert alert["explanation"] == "face does not match the enrolled person"


def test_the_persons_video_with_another_voice_raises_a_voice_or_sync_alert(
        server: RunningServer, clip: Clip, tmp_path: Path) -> None:
    dubbed = dub_remux(clip(GENUINE), clip(OTHER_VOICE), tmp_path / "trump_with_another_voice.mp4", repeat=2)
    msgs = call_as(server, "dubbed", "trump", dubbed, until_episode("dubbed"), seconds=90)
    alert = _alert(msgs, "dubbed")
    assert _top(alert["reasons"]) in ("voice", "sync"), (alert["reasons"], scored_windows(msgs, "dubbed"))
    assert alert["explanation"] in ("voice does not match the enrolled person", "mouth does not follow the audio")


def test_the_person_in_another_recording_stays_authentic(server: RunningServer, clip: Clip) -> None:
    genuine_call(server, "genuine", "trump", clip(GENUINE), GENUINE_S)
