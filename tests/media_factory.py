"""Small real media files for tests, written with PyAV and real codecs (no mocks).

Every helper writes into a caller-given path (a pytest ``tmp_path``) and returns it.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def truncated_copy(src: Path, dest: Path, fraction: float) -> Path:
    """The first ``fraction`` of ``src``'s bytes: what an interrupted download leaves."""
    data = Path(src).read_bytes()
    dest.write_bytes(data[: max(1, int(len(data) * fraction))])
    return dest


def video_only_remux(src: Path, dest: Path, seconds: float = 2.0) -> Path:
    """Copy the first ``seconds`` of ``src``'s video stream (no re-encoding), no audio."""
    with av.open(str(src)) as inp, av.open(str(dest), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in inp.demux(vin):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            if packet.pts is not None and packet.time_base is not None and \
                    packet.pts * packet.time_base > seconds:
                break
            packet.stream = vout
            out.mux(packet)
    return dest


def audio_only_wav(src: Path, dest: Path, seconds: float = 2.0, rate: int = 16_000) -> Path:
    """Decode ``src``'s audio and write ``seconds`` of it as a 16-bit PCM wav (no video)."""
    with av.open(str(src)) as inp, av.open(str(dest), "w") as out:
        astream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        written = 0
        for frame in inp.decode(audio=0):
            for res in resampler.resample(frame):
                res.pts = None
                for packet in astream.encode(res):
                    out.mux(packet)
                written += res.samples
            if written >= seconds * rate:
                break
        for packet in astream.encode(None):
            out.mux(packet)
    return dest


def synthetic_av(
    dest: Path,
    seconds: float = 2.0,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
    tone_hz: float | None = 440.0,
    video_codec: str = "libx264",
    audio_codec: str = "aac",
    sample_rate: int = 44_100,
) -> Path:
    """A video of moving gradients and noise (no face) with a sine tone (or no audio).

    Deterministic: the same arguments give the same pictures and samples.
    """
    width, height = size
    rng = np.random.default_rng(0)
    n_frames = int(round(seconds * fps))
    with av.open(str(dest), "w") as out:
        vs = out.add_stream(video_codec, rate=fps)
        assert isinstance(vs, av.VideoStream), f"{video_codec} is not a video codec"
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        aus: av.AudioStream | None = None
        if tone_hz is not None:
            stream = out.add_stream(audio_codec, rate=sample_rate, layout="mono")
            assert isinstance(stream, av.AudioStream), f"{audio_codec} is not an audio codec"
            aus = stream
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        phases = (2 * np.pi * i / fps for i in range(n_frames))
        _encode_video(out, vs, (np.stack([
            127 + 120 * np.sin(xx / 23.0 + phase),
            127 + 120 * np.cos(yy / 17.0 - 0.7 * phase),
            rng.integers(0, 256, size=(height, width)),
        ], axis=-1).astype(np.uint8) for phase in phases), fps)
        if aus is not None:
            assert tone_hz is not None  # there is an audio stream only with a tone
            t = np.arange(int(seconds * sample_rate), dtype=np.float64) / sample_rate
            _encode_audio(out, aus, (0.3 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32), sample_rate)
    return dest


def faststart_remux(src: Path, dest: Path) -> Path:
    """Copy every stream of ``src`` into an mp4 whose index (moov) comes first, so that
    a truncated copy still opens and decodes up to the cut."""
    faststart = {"movflags": "faststart"}
    with av.open(str(src)) as inp, av.open(str(dest), "w", options=faststart) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams
                   if s.type in ("video", "audio")}
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.dts is None:
                continue
            packet.stream = streams[packet.stream.index]
            out.mux(packet)
    return dest


def dub_remux(video_src: Path, audio_src: Path, dest: Path, repeat: int = 1) -> Path:
    """``video_src``'s video with ``audio_src``'s audio (stream copies, no re-encoding), cut
    to the video's duration and played ``repeat`` times in a row with continuous
    timestamps: what a dubbing attack hands to a call."""
    with av.open(str(video_src)) as vin_c, av.open(str(audio_src)) as ain_c, av.open(str(dest), "w") as out:
        vin, ain = vin_c.streams.video[0], ain_c.streams.audio[0]
        assert vin.time_base is not None  # a demuxed stream has a time base
        vout, aout = out.add_stream_from_template(vin), out.add_stream_from_template(ain)
        span = float(vin.duration * vin.time_base) if vin.duration else float(vin_c.duration or 0) / 1e6
        end: dict[str, int] = {}  # per output stream: where the next pass starts (its time base)
        for _ in range(repeat):
            vin_c.seek(0)
            ain_c.seek(0)
            for container, stream, into, cut in ((vin_c, vin, vout, None), (ain_c, ain, aout, span)):
                tb, shift = stream.time_base, None
                assert tb is not None  # a demuxed stream has a time base
                for packet in container.demux(stream):
                    if packet.dts is None or packet.pts is None:
                        continue
                    if cut is not None and packet.pts * tb > cut:
                        break
                    if shift is None:  # each pass continues where the last one ended
                        shift = end.get(stream.type, packet.dts) - packet.dts
                    packet.pts += shift
                    packet.dts += shift
                    end[stream.type] = packet.dts + max(int(packet.duration or 0), 1)
                    packet.stream = into
                    out.mux(packet)
    return dest


def flash_click_av(dest: Path, events: list[float], seconds: float, fps: int = 25, size: tuple[int, int] = (320, 240),
                   sample_rate: int = 48_000) -> Path:
    """Black video with one white frame at each time in ``events`` and silent audio with a
    20 ms click at the same times: a clip whose audio/video alignment can be read off."""
    width, height = size
    with av.open(str(dest), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"g": str(fps)}
        aus = out.add_stream("aac", rate=sample_rate, layout="mono")
        flash = {int(round(t * fps)) for t in events}
        _encode_video(out, vs, (np.full((height, width, 3), 255 if i in flash else 0, np.uint8)
                                for i in range(int(round(seconds * fps)))), fps)
        wave = np.zeros(int(seconds * sample_rate), np.float32)
        rng = np.random.default_rng(0)
        for t in events:
            s = int(round(t * sample_rate))
            wave[s : s + sample_rate // 50] = 0.8 * rng.uniform(-1, 1, size=len(wave[s : s + sample_rate // 50]))
        _encode_audio(out, aus, wave, sample_rate)
    return dest


def _encode_audio(out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, wave: np.ndarray,
                  sample_rate: int) -> None:
    """Encode mono float samples into ``stream`` in 1024-sample frames, then flush it."""
    for start in range(0, len(wave), 1024):
        frame = av.AudioFrame.from_ndarray(wave[None, start : start + 1024], format="fltp", layout="mono")
        frame.sample_rate = sample_rate
        frame.pts, frame.time_base = start, Fraction(1, sample_rate)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def _encode_video(out: av.container.OutputContainer, stream: av.video.stream.VideoStream,
                  images: Iterable[np.ndarray], fps: int) -> None:
    """Encode RGB images into ``stream`` at ``fps``, then flush it."""
    for i, img in enumerate(images):
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        frame.pts, frame.time_base = i, Fraction(1, fps)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def face_swapped(target: Path, donor: Path, dest: Path, face_model: Path, seconds: float) -> Path:
    """The first ``seconds`` of ``target`` with ``donor``'s face swapped in by the dev
    evaluation's landmark swap (bench/face_swap.py: triangle warp, Lab colour match, Poisson
    blend), ``target``'s audio kept: a face-swap impersonation by the person in ``target``."""
    import subprocess
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from face_swap import swap_video

    def ffmpeg(*args: str | Path) -> None:
        subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True, timeout=120)

    cut, silent = dest.with_name(dest.stem + ".cut.mp4"), dest.with_name(dest.stem + ".video.mp4")
    ffmpeg("-i", target, "-t", f"{seconds}", "-c", "copy", cut)  # stream copies: no extra generation
    if swap_video(cut, donor, silent, face_model) == 0:
        raise RuntimeError(f"no face swapped into {target}")
    ffmpeg("-i", silent, "-i", cut, "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "copy", "-shortest", dest)
    return dest
