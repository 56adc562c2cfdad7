"""WHIP (RFC 9725) sessions with aiortc: an SDP offer in, an SDP answer out, tracks to a Source.

No STUN / TURN server is configured (aiortc would otherwise ask a public STUN server):
the monitor is the answering side of an ingest, reached at the address the client
already uses; the answer carries host candidates.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from expose.monitor.errors import ExposeError
from expose.monitor.media.webrtc import WebRTCSource

log = logging.getLogger(__name__)


class SdpError(ExposeError):
    """The WHIP offer is not a usable SDP offer (HTTP 400)."""


def limit_host_candidates(addresses: list[str] | None) -> None:
    """Gather WebRTC host candidates on these local addresses only (None: aioice's default,
    every non-loopback interface). aiortc has no option for it, so aioice's enumeration
    is replaced process-wide; loopback-only deployments and tests need it."""
    if addresses is None:
        return
    fixed = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in fixed if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses  # type: ignore[assignment]


def check_offer(sdp: str) -> None:
    """Refuse what cannot be a publisher's offer before aiortc sees it (its parser is lenient)."""
    if not sdp.lstrip().startswith("v=0"):
        raise SdpError("malformed SDP offer: it must start with 'v=0'")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as err:  # aiortc raises several types on bad lines
        raise SdpError(f"malformed SDP offer: {err}") from None
    kinds = [m.kind for m in desc.media]
    if "video" not in kinds:
        raise SdpError("the SDP offer has no video: the monitor needs the face (and the voice)")


@dataclass
class WhipSession:
    id: str
    stream: str
    profile: str
    pc: RTCPeerConnection
    source: WebRTCSource
    answer: str = field(repr=False)

    async def close(self) -> None:
        self.source.stop()
        await self.pc.close()


async def open_session(stream: str, profile: str, offer: str, *, max_side: int, queue_items: int) -> WhipSession:
    """Answer ``offer``; the publisher's tracks feed the returned session's source."""
    check_offer(offer)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    source = WebRTCSource(f"whip:{stream}", max_side=max_side, queue_items=queue_items)

    @pc.on("track")
    def on_track(track) -> None:  # type: ignore[no-untyped-def]
        receiver = next((t.receiver for t in pc.getTransceivers() if t.receiver.track is track), None)
        source.add_track(track, receiver)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        log.info("whip %s: connection %s", stream, pc.connectionState)
        if pc.connectionState in ("failed", "closed"):
            source.stop()

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as err:  # aiortc: ValueError / InternalError on offers it cannot answer
        await pc.close()
        why = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SdpError(f"cannot answer the SDP offer: {why}") from None
    return WhipSession(secrets.token_hex(8), stream, profile, pc, source, pc.localDescription.sdp)
