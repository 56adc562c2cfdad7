"""The live monitor with the face model on onnxruntime (features.face_backend = "onnx"): two
pulled streams landmarked by the process's one SharedFaceModel (batched across them) are
scored with faces, as with MediaPipe."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from live_support import SPEECH_CLIP, collect_events, live_config, running_server

from expose.monitor.features import onnx_face

if TYPE_CHECKING:
    from tests.conftest import Clip

pytest.importorskip("tflite")
pytestmark = pytest.mark.timeout(300)


def _scores(msgs: list[dict[str, Any]], stream: str) -> list[dict[str, Any]]:
    return [m for m in msgs if m["type"] == "score" and m["stream"] == stream]


def test_two_streams_on_the_shared_onnx_face_model(tiny_model: Path, profiles_dir: Path, clip: Clip,
                                                   tmp_path: Path) -> None:
    media = str(clip(SPEECH_CLIP))
    cfg = live_config(tmp_path, features={"face_backend": "onnx"}, cache_dir=str(tmp_path / "cache"), streams=[
        {"name": "cam1", "url": media, "profile": "trump", "realtime": True},
        {"name": "cam2", "url": media, "profile": "trump", "realtime": True}])
    before = set(onnx_face._SHARED)
    with running_server(cfg, tiny_model, profiles_dir) as srv:
        got = asyncio.run(collect_events(
            srv.ws_url, lambda ms: len(_scores(ms, "cam1")) >= 3 and len(_scores(ms, "cam2")) >= 3, since=0,
            timeout=180))
    for stream in ("cam1", "cam2"):
        scores = _scores(got, stream)
        assert len(scores) >= 3, stream
        # the clip's face is in every frame of its first seconds (later it turns away: MediaPipe too)
        assert scores[0]["status"] == "scored" and scores[0]["face_ratio"] > 0.9, scores[0]
    new = [m for k, m in onnx_face._SHARED.items() if k not in before]
    assert len(new) == 1  # one model for both streams
    assert new[0].model.stats["frames"] >= 2 * 50 and new[0].batches >= 1
    assert not new[0].model._tracks  # both streams ended: their tracks were dropped
