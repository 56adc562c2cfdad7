#!/usr/bin/env python3
"""Build the dev evaluation's attack families as real muxed media files.

Every feature (voice embeddings included) can then be extracted from real audio and
video instead of being faked on feature arrays. Test identities are those of DEV_SPLIT
other than news_anchor_zh; an identity's test clip is its held-out clip, or, for a
one-recording identity, a cut of its clip from SPLIT x duration to the end (libx264 crf 18).

  genuine  the test clip itself (orig quality: the corpus file or the cut).
  dub      the test clip's video with the next test identity's (cyclic) test-clip audio,
           looped/trimmed to the video's length; video copied (re-encoded crf 18 if it cannot be).
  desync   the test clip with its own audio 0.48 s late (-itsoffset on a second input;
           the gap at the start is filled with silence so the audio stream starts at 0).
  tts      the test clip's video with espeak-ng reading a fixed neutral paragraph (English
           voice varied per identity, 150 wpm), muxed as dub. Skipped if espeak-ng is missing.
  lipsync  the corpus lip-sync fakes of news_anchor_zh, claimed as news_anchor_zh.
  swap     the test clip with the next test identity's face (its test clip's frames, cycled)
           warped onto every frame along the landmarks, colour-matched and Poisson-blended
           (bench/face_swap.py; frames at most 640 px a side); the test clip's audio kept.
  reenact  the test clip with its own face made to follow the next test identity's (cyclic)
           facial motion: one frame of the target's face warped along the driver's landmark
           displacements, placed at the target's head position, feather-pasted (bench/reenact.py;
           frames at most 640 px a side); the test clip's audio kept.

Each family at quality ``orig`` and ``crf35_360p`` (scale=-2:360, libx264 crf 35, aac 64k,
made from the same inputs in one encode). Files go to ``~/.cache/expose/attacks`` (--out)
with a manifest.json of {family, claimed, path, desc, quality}; existing non-empty files
are kept (--force rebuilds).

    .venv/bin/python bench/make_attacks.py [--out DIR] [--families dub,tts] [--qualities orig] [--force]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
DEV_SPLIT: dict[str, tuple[list[str], list[str]]] = {
    "news_anchor_zh": (["real/news_anchor_zh/original.mp4"], []),
    "ocasio_cortez": (["real/ocasio_cortez/hdtf_000.mp4", "real/ocasio_cortez/clip_03.mp4"], ["real/ocasio_cortez/clip_02.mp4"]),  # noqa: E501
    "feifeili": (["real/feifeili/feifeili_clip1.mp4", "real/feifeili/feifeili_clip3.mp4"], ["real/feifeili/feifeili_clip2_short.mp4"]),  # noqa: E501
    "trump": (["real/trump/speech_01.mp4"], ["real/trump/clip_02.mp4"]),
    "vox_7414": (["real/vox_7414/clip_01.mp4"], ["real/vox_7414/clip_02.mp4"]),
    "macron": (["real/macron/speech_01.mp4"], []),
    "kristinoem": (["real/kristinoem/KristiNoem.mp4"], []),
    "tedlieu": (["real/tedlieu/speech_01.mp4"], []),
}
SPLIT = 0.6
LIPSYNC = ["face_dain_50fps", "lip_dain_50fps", "none_dain_50fps", "retalking", "sadtalker", "sync_none", "wav2lip"]
FAMILIES = ["genuine", "dub", "desync", "tts", "lipsync", "swap", "reenact"]
FACE_MODEL = CORPUS.parent / "models" / "face_landmarker.task"
QUALITIES = ["orig", "crf35_360p"]
DESYNC_S = 0.48
VOICES = ["en-us", "en", "en-us+f3", "en+m3"]
TTS_TEXT = (
    "Good afternoon, everyone. Thank you for joining the quarterly budget meeting. Today we will "
    "review spending for the last three months, compare it with the plan we agreed in January, "
    "and look at the forecast for next quarter. Most departments stayed close to their targets. "
    "Travel costs were a little higher than expected, while software licences came in lower. "
    "Please send any questions to the finance team before Friday."
)
FFMPEG, FFPROBE, ESPEAK = "ffmpeg", "ffprobe", "espeak-ng"
X264_18 = ["-c:v", "libx264", "-crf", "18", "-preset", "veryfast"]
AAC_128 = ["-c:a", "aac", "-b:a", "128k"]
LOW = ["-vf", "scale=-2:360", "-c:v", "libx264", "-crf", "35", "-preset", "veryfast", "-c:a", "aac", "-b:a", "64k"]


class ToolError(SystemExit):
    """A failed external command; a SystemExit so that, uncaught, it ends the run with its message."""


@dataclass
class Step:
    path: Path
    make: Callable[[Path], None] | None  # writes the file; None: an existing corpus file
    entry: dict[str, str] | None = None  # its manifest object; None: an intermediate file


def _run(cmd: list[str], what: str) -> str:
    try:
        return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise SystemExit(f"{cmd[0]} not found: apt-get install ffmpeg espeak-ng") from None
    except subprocess.CalledProcessError as err:
        last = (err.stderr or "").strip().splitlines()[-1:] or [f"exit {err.returncode}"]
        raise ToolError(f"{what} failed: {last[0]}") from None


def duration(path: Path) -> float:
    """The video stream's duration (the container's when the stream has none)."""
    cmd = [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries",
           "stream=duration:format=duration", "-of", "json", str(path)]
    info = json.loads(_run(cmd, f"ffprobe {path}"))
    streams = info.get("streams") or [{}]
    return float(streams[0].get("duration") or info["format"]["duration"])


def ffmpeg(args: list[str], out: Path) -> None:
    # write under a temporary name so that an interrupted encode never passes for a finished file
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    _run([FFMPEG, "-hide_banner", "-nostdin", "-y", "-loglevel", "error", *args, str(tmp)], f"ffmpeg -> {out.name}")
    tmp.replace(out)


def encode(video: Path, audio: Path | None, quality: str, delay: float = 0.0) -> Callable[[Path], None]:
    """A maker: ``video`` with its own audio (``audio`` None, ``delay`` s late) or with ``audio``
    looped/trimmed to the video's length; its arguments are built when it runs, after its sources exist."""

    def make(out: Path) -> None:
        v = str(video)
        if audio is not None:
            args = ["-i", v, "-stream_loop", "-1", "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0", "-shortest"]
        elif delay:  # aresample pads the gap before the late audio with silence, so the stream starts at 0
            args = ["-i", v, "-itsoffset", str(delay), "-i", v, "-map", "0:v:0", "-map", "1:a:0"]
            args += ["-af", "aresample=async=1:first_pts=0"]
        else:
            args = ["-i", v, "-map", "0:v:0", "-map", "0:a:0"]
        args += ["-t", f"{duration(video):.3f}"]
        if quality != "orig":
            ffmpeg(args + LOW, out)
            return
        try:  # keep the original video bit-exact where the container allows it
            ffmpeg(args + ["-c:v", "copy"] + AAC_128, out)
        except ToolError:
            ffmpeg(args + X264_18 + AAC_128, out)

    return make


def cut_tail(src: Path) -> Callable[[Path], None]:
    def make(out: Path) -> None:
        start = f"{SPLIT * duration(src):.3f}"
        ffmpeg(["-ss", start, "-i", str(src), "-map", "0:v:0", "-map", "0:a:0"] + X264_18 + AAC_128, out)

    return make


def speak(voice: str) -> Callable[[Path], None]:
    def make(out: Path) -> None:
        tmp = out.with_name(out.stem + ".part" + out.suffix)
        _run([ESPEAK, "-v", voice, "-s", "150", "-w", str(tmp), TTS_TEXT], f"espeak-ng -v {voice}")
        tmp.replace(out)

    return make


def _with_own_audio(target: Path, other: Path, module: str, function: str) -> Callable[[Path], None]:
    """A maker: ``bench/<module>.py``'s ``function(target, other, silent_out, FACE_MODEL)`` writes
    the video, then ``target``'s audio is muxed in."""

    def make(out: Path) -> None:
        import importlib
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        write_video = getattr(importlib.import_module(module), function)
        silent = out.with_name(out.stem + ".video.mp4")
        write_video(target, other, silent, FACE_MODEL)
        ffmpeg(["-i", str(silent), "-i", str(target), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy",
                *AAC_128, "-shortest"], out)
        silent.unlink()

    return make


def face_swap(target: Path, donor: Path) -> Callable[[Path], None]:
    """A maker: ``target`` with ``donor``'s face (bench/face_swap.py) and ``target``'s audio."""
    return _with_own_audio(target, donor, "face_swap", "swap_video")


def face_reenact(target: Path, driver: Path) -> Callable[[Path], None]:
    """A maker: ``target`` with its face following ``driver``'s motion (bench/reenact.py), ``target``'s audio."""
    return _with_own_audio(target, driver, "reenact", "reenact_video")


def plan(out: Path, families: list[str], qualities: list[str]) -> list[Step]:
    idents = [name for name in DEV_SPLIT if name != "news_anchor_zh"]
    steps: list[Step] = []
    test: dict[str, Path] = {}
    for name in idents:
        enrol, held_out = DEV_SPLIT[name]
        if held_out:
            test[name] = CORPUS / held_out[0]
        else:
            test[name] = out / "cuts" / f"{name}_test.mp4"
            if set(families) - {"lipsync"}:
                steps.append(Step(test[name], cut_tail(CORPUS / enrol[0])))
    wav = {name: out / "tts" / f"{name}.wav" for name in idents}
    if "tts" in families:
        steps += [Step(wav[n], speak(VOICES[i % len(VOICES)])) for i, n in enumerate(idents)]

    def add(family: str, claimed: str, name: str, desc: str, video: Path, audio: Path | None = None,
            delay: float = 0.0, as_is: bool = False) -> None:
        for q in qualities:
            if q == "orig" and as_is:  # nothing to build: the source file itself
                path, make = video, None
            else:
                path, make = out / q / family / f"{name}.mp4", encode(video, audio, q, delay)
            d = desc if q == "orig" else f"{desc}; re-encoded 360p libx264 crf 35, aac 64k"
            steps.append(Step(path, make, dict(family=family, claimed=claimed, path=str(path), desc=d, quality=q)))

    for i, name in enumerate(idents):
        donor, voice = idents[(i + 1) % len(idents)], VOICES[i % len(VOICES)]
        if "genuine" in families:
            add("genuine", name, name, f"{name} test clip", test[name], as_is=True)
        if "dub" in families:
            add("dub", name, name, f"{name} test video + {donor}'s test audio, looped/trimmed", test[name], test[donor])
        if "desync" in families:
            add("desync", name, name, f"{name} test clip, audio {DESYNC_S} s late", test[name], delay=DESYNC_S)
        if "tts" in families:
            desc = f"{name} test video + espeak-ng ({voice}) speech, looped/trimmed"
            add("tts", name, name, desc, test[name], wav[name])
        if "swap" in families:
            swapped = out / "swaps" / f"{name}_{donor}.mp4"
            steps.append(Step(swapped, face_swap(test[name], test[donor])))
            add("swap", name, name, f"{name} test clip with {donor}'s face swapped in (landmark warp, Poisson "
                "blend), its own audio", swapped, as_is=True)
        if "reenact" in families:
            driven = out / "reenactments" / f"{name}_{donor}.mp4"
            steps.append(Step(driven, face_reenact(test[name], test[donor])))
            add("reenact", name, name, f"{name} test clip, its face warped to follow {donor}'s facial motion "
                "(landmark reenactment, feathered paste), its own audio", driven, as_is=True)
    if "lipsync" in families:
        for stem in LIPSYNC:
            src = CORPUS / "fake" / "news_anchor_zh" / f"{stem}.mp4"
            add("lipsync", "news_anchor_zh", stem, f"corpus lip-sync fake {stem}", src, as_is=True)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--out", type=Path, default=Path("~/.cache/expose/attacks"), help="output folder, outside the repo")
    ap.add_argument("--families", default=",".join(FAMILIES), help="comma list of " + ",".join(FAMILIES))
    ap.add_argument("--qualities", default=",".join(QUALITIES), help="comma list of " + ",".join(QUALITIES))
    ap.add_argument("--force", action="store_true", help="rebuild files that already exist")
    args = ap.parse_args()
    out = args.out.expanduser().resolve()
    if out.is_relative_to(Path(__file__).resolve().parents[1]):
        raise SystemExit(f"--out {out} is inside the repository; media must live outside it")
    families = [f for f in args.families.split(",") if f]
    qualities = [q for q in args.qualities.split(",") if q]
    if bad := sorted(set(families) - set(FAMILIES)) + sorted(set(qualities) - set(QUALITIES)):
        raise SystemExit(f"unknown family or quality: {', '.join(bad)}")
    for tool in (FFMPEG, FFPROBE):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found on PATH: apt-get install ffmpeg")
    if "tts" in families and shutil.which(ESPEAK) is None:
        print("warning: espeak-ng not found (apt-get install espeak-ng): skipping the tts family")
        families.remove("tts")
    if not CORPUS.is_dir():
        raise SystemExit(f"corpus not found: {CORPUS}")

    steps = plan(out, families, qualities)
    t0, made = time.monotonic(), 0
    for k, step in enumerate(steps, 1):
        if step.make is None or (step.path.is_file() and step.path.stat().st_size > 0 and not args.force):
            continue
        step.path.parent.mkdir(parents=True, exist_ok=True)
        t = time.monotonic()
        step.make(step.path)
        made += 1
        print(f"[{k}/{len(steps)}] made {step.path} ({time.monotonic() - t:.1f} s)", flush=True)
    entries = [s.entry for s in steps if s.entry is not None]
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "manifest.json"
    if manifest.is_file():  # a partial run (--families/--qualities) keeps the other families' entries
        old = json.loads(manifest.read_text())
        entries += [e for e in old if not (e["family"] in families and e["quality"] in qualities)]
    manifest.write_text(json.dumps(entries, indent=1) + "\n")
    print(f"{made} made, {len(steps) - made} already there or corpus files, {len(entries)} manifest entries "
          f"in {time.monotonic() - t0:.0f} s -> {manifest}")


if __name__ == "__main__":
    main()
