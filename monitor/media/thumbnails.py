"""Small JPEG thumbnails of video frames (alert evidence), encoded with PyAV's MJPEG encoder."""

from __future__ import annotations

import base64
from fractions import Fraction

import av
import numpy as np


def jpeg_thumbnail(image: np.ndarray, max_side: int = 160) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes, the longer side at most ``max_side`` pixels
    (a few kB at the encoder's default quality)."""
    h, w = image.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    tw, th = max(2, int(w * scale) // 2 * 2), max(2, int(h * scale) // 2 * 2)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    frame = frame.reformat(width=tw, height=th, format="yuvj420p")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = tw, th, "yuvj420p"
    codec.time_base = Fraction(1, 25)
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(p) for p in packets)


def jpeg_base64(image: np.ndarray, max_side: int = 160) -> str:
    return base64.b64encode(jpeg_thumbnail(image, max_side)).decode("ascii")
