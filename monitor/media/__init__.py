"""Media in: PyAV decode of files and FFmpeg URLs (``reader``), live sources behind one
``recv()`` interface (``sources``), WebRTC / WHIP publishers through aiortc (``webrtc``,
``whip``), and JPEG thumbnails of frames (``thumbnails``). Produces VideoFrame and
AudioChunk values with their timestamps.

May import: (base modules only)
"""
