"""Audio/video alignment of a WHIP publisher's stream, read off a clip with a white
frame and an audio click at the same instants, published by a real aiortc peer and
received by the product's WHIP session (expose.monitor.media.whip.open_session -> WebRTCSource).

Anchoring each track at its first frame's arrival left the audio about 85 ms late
(aiortc's audio jitter buffer holds 4 packets); the source now places both tracks on
the sender's clock from its RTCP sender reports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from media_factory import flash_click_av

from expose.monitor.media.reader import AUDIO_RATE, VideoFrame
from expose.monitor.media.whip import limit_host_candidates, open_session

pytestmark = pytest.mark.timeout(120)
EVENTS = [1.0 + 0.8 * i for i in range(10)]


async def _publish_and_read(clip: Path, seconds: float) -> tuple[list[float], list[float]]:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    limit_host_candidates(["127.0.0.1"])
    player = MediaPlayer(str(clip))
    assert player.video is not None and player.audio is not None  # the clip has pictures and sound
    pub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    for track in (player.video, player.audio):
        pub.addTransceiver(track, direction="sendonly")
    await pub.setLocalDescription(await pub.createOffer())
    session = await open_session("sync", "nobody", pub.localDescription.sdp, max_side=320, queue_items=512)
    await pub.setRemoteDescription(RTCSessionDescription(sdp=session.answer, type="answer"))
    flashes: list[float] = []
    clicks: list[float] = []

    async def read() -> None:
        while True:
            item = await session.source.recv()
            if isinstance(item, VideoFrame):
                if item.image.mean() > 128:
                    flashes.append(item.time)
            else:
                loud = np.abs(item.samples) > 0.3
                if loud.any():
                    t = item.time + int(np.argmax(loud)) / AUDIO_RATE
                    if not clicks or t - clicks[-1] > 0.3:  # the onset of each click
                        clicks.append(t)

    reader = asyncio.create_task(read())
    await asyncio.sleep(seconds)
    reader.cancel()
    await pub.close()
    await session.close()
    player.video.stop()
    player.audio.stop()
    return flashes, clicks


def test_whip_audio_and_video_stay_aligned(tmp_path: Path) -> None:
    clip = flash_click_av(tmp_path / "flash_click.mp4", EVENTS, seconds=EVENTS[-1] + 1.5)
    flashes, clicks = asyncio.run(_publish_and_read(clip, EVENTS[-1] + 1.5))
    assert len(flashes) >= len(EVENTS) - 1 and len(clicks) >= len(EVENTS) - 1, (flashes, clicks)
    # the first sender reports come 0.5-1.5 s in; from then on the tracks share one clock
    later = [f for f in flashes if f > flashes[0] + 2.5]

    def nearest_click(f: float) -> float:
        return min(clicks, key=lambda c: abs(c - f))

    skew = [nearest_click(f) - f for f in later]
    assert len(skew) >= 5
    assert max(abs(s) for s in skew) <= 0.045, np.round(skew, 3)  # within one 25 fps frame
