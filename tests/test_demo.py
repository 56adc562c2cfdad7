"""`expose demo`, run as a user runs it: enroll the shipped sample speaker, serve the genuine
and the dubbed stream, and check the outcome the samples README promises."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from expose.monitor.cli.demo import DUBBED_STREAM, GENUINE, GENUINE_STREAM, VOICE, make_dub

if TYPE_CHECKING:
    from tests.conftest import RunCli

# the dub alerts at its third window, about 6 s of stream time after the streams open
# (assets/samples/README.md); 40 s is three loops of the 12 s genuine clip
SECONDS = 40


@pytest.mark.slow
def test_demo_dub_alerts_and_genuine_stays_authentic(face_model: Path, run_cli: RunCli, tmp_path: Path) -> None:
    proc = run_cli("demo", "--seconds", str(SECONDS), "--port", "0", "--json", "--profiles", tmp_path / "profiles",
                   timeout=SECONDS + 240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)  # --json: stdout is the one object (the banner goes to stderr)
    streams = summary["streams"]
    genuine, dubbed = streams[GENUINE_STREAM], streams[DUBBED_STREAM]
    assert dubbed["alerts"], f"the dub raised no alert: {dubbed}"
    assert dubbed["state"] == "alert"
    assert genuine["alerts"] == [], f"the genuine stream alerted: {genuine}"
    assert genuine["state"] == "authentic"
    assert genuine["windows"] >= 10 and dubbed["windows"] >= 10  # both streams played a loop at least
    assert summary["as_expected"] is True
    assert "dashboard: http://127.0.0.1:" in proc.stderr
    assert (tmp_path / "profiles" / "grid_s1" / "profile.json").is_file()


def test_dub_keeps_the_video_and_takes_the_voice(tmp_path: Path) -> None:
    import av

    dub = make_dub(GENUINE, VOICE, tmp_path / "dub.mp4")
    with av.open(str(GENUINE)) as src, av.open(str(dub)) as out:
        v_src, v_out = src.streams.video[0], out.streams.video[0]
        assert v_out.codec_context.name == v_src.codec_context.name
        assert v_out.frames == v_src.frames  # packets copied, not re-encoded or cut
        a_out = out.streams.audio[0]
        assert a_out.duration is not None and v_out.duration is not None
        assert a_out.time_base is not None and v_out.time_base is not None
        video_s = float(v_out.duration * v_out.time_base)
        audio_s = float(a_out.duration * a_out.time_base)
        assert abs(audio_s - video_s) < 0.1  # the 3 s voice repeated to the 12 s video
