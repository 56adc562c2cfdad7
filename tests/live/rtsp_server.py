"""A real RTSP server for the tests: GStreamer's gst-rtsp-server serving one MP4 (H.264 +
AAC, no re-encoding) at rtsp://127.0.0.1:PORT/clip, in real time.

Run with Debian's python3 (python3-gi, gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-
good / -bad): ``/usr/bin/python3 tests/live/rtsp_server.py CLIP PORT``. Prints ``READY`` when
it listens; exits on SIGTERM.
"""

import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    clip, port = sys.argv[1], sys.argv[2]
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(
        f'( filesrc location="{clip}" ! qtdemux name=d '
        "d.video_0 ! queue ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 "
        "d.audio_0 ! queue ! aacparse ! rtpmp4gpay name=pay1 pt=97 )"
    )
    factory.set_shared(True)
    server.get_mount_points().add_factory("/clip", factory)
    if server.attach(None) == 0:
        print("FAILED to listen", flush=True)
        sys.exit(1)
    loop = GLib.MainLoop()
    signal.signal(signal.SIGTERM, lambda *_: loop.quit())
    print("READY", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
