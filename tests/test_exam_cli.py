"""The model's command-line flow end to end on real clips, with the tiny preset:
train (and resume) -> enroll -> profiles -> score -> eval, and its clear errors."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from expose.monitor.features.cache import cached_entries
from expose.monitor.model.exam import load_model, save_model

if TYPE_CHECKING:
    from tests.conftest import RunCli

IDENTITIES = ["vox_00002", "vox_00010", "lrs2_00016", "lrs2_00019"]


@pytest.fixture(scope="module")
def tiny_corpus(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of identity folders (links to the shared corpus: nothing is copied)."""
    root = tmp_path_factory.mktemp("tiny-corpus")
    for name in IDENTITIES:
        (root / name).symlink_to(corpus / "real" / name, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: RunCli) -> Path:
    out = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    r = run_cli("train", tiny_corpus, "--out", out, "--preset", "tiny", "--steps", "20", "--eval-every", "10",
                "--holdout", "lrs2_00019", "--batch", "16", timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["identities"] == 3  # the held-out identity is not trained
    assert report["windows_train"] > 0
    return out


def test_train_writes_a_loadable_checkpoint_and_resumes(tiny_model: Path, tiny_corpus: Path, run_cli: RunCli) -> None:
    m = load_model(tiny_model)
    assert sorted(m.meta["identities"]) == sorted(set(IDENTITIES) - {"lrs2_00019"})
    assert m.model.cfg.d_model == 32
    assert "unseen_err_null" in m.meta["val"]  # validation on the held-out identity ran
    state = tiny_model.with_name("tiny.state.safetensors")
    assert state.is_file()
    r = run_cli("train", tiny_corpus, "--out", tiny_model, "--preset", "tiny", "--steps", "30",
                "--eval-every", "10", "--holdout", "lrs2_00019", "--batch", "16", "--resume", timeout=600)
    assert r.returncode == 0, r.stderr
    history = json.loads(r.stdout)["last"]
    assert history["step"] == 30  # continued from step 20, not from 0


def test_train_rejects_bad_corpus(tmp_path: Path, tiny_corpus: Path, run_cli: RunCli) -> None:
    r = run_cli("train", tmp_path / "nowhere", "--out", tmp_path / "m.safetensors")
    assert r.returncode == 2 and r.stderr.startswith("expose: error:") and "Traceback" not in r.stderr
    r = run_cli("train", tiny_corpus, "--out", tmp_path / "m.safetensors", "--holdout", "nobody")
    assert r.returncode == 2 and "nobody" in r.stderr


def test_enroll_score_eval_flow(tiny_model: Path, corpus: Path, tmp_path: Path, run_cli: RunCli) -> None:
    profiles = tmp_path / "profiles"
    common = ["--profiles", profiles, "--model", tiny_model]
    r = run_cli("enroll", "alice", corpus / "real/vox_00098/clip_01.mp4", "--steps", "20", *common)
    assert r.returncode == 0, r.stderr
    assert "calibration" in r.stdout
    enroll_stderr = r.stderr
    r = run_cli("enroll", "alice", corpus / "real/vox_00098/clip_01.mp4", *common)
    assert r.returncode == 2 and "already exists" in r.stderr

    r = run_cli("profiles", "list", "--json", "--profiles", profiles)
    assert [p["name"] for p in json.loads(r.stdout)] == ["alice"]
    # a profile of an older format is listed as unusable, without hiding the others
    old = profiles / "oldbob"
    old.mkdir()
    (old / "profile.json").write_text(json.dumps({"format": 1, "name": "oldbob"}))
    r = run_cli("profiles", "list", "--profiles", profiles)
    assert r.returncode == 0 and "alice" in r.stdout and "oldbob" in r.stdout and "re-enroll" in r.stdout
    r = run_cli("profiles", "delete", "oldbob", "--profiles", profiles)
    assert r.returncode == 0, r.stderr
    r = run_cli("profiles", "show", "alice", "--profiles", profiles)
    meta = json.loads(r.stdout)
    assert meta["references"][0]["sha256"] and meta["calibration"]["threshold"] is not None
    # a reference too short to hold calibration windows out is said to be, not silently used
    assert meta["enroll"]["calibration_source"] == "held-out tail of each reference"
    assert "too short" not in enroll_stderr
    # 6 s cannot hold calibration windows out: enrolled, but with a warning
    r = run_cli("enroll", "shorty", corpus / "real/news_anchor_zh/original.mp4", "--steps", "5", *common)
    assert r.returncode == 0, r.stderr
    assert "too short to hold out" in " ".join(r.stderr.split()) and "reference windows" in r.stdout
    # deleting a profile also erases the cached features of its reference media (face and voice
    # embeddings of the person), not those of other media
    shorty_sha = json.loads(run_cli("profiles", "show", "shorty", "--profiles", profiles).stdout)["references"][0]
    alice_sha = meta["references"][0]["sha256"]
    cache = Path(os.environ["EXPOSE_CACHE"])
    assert cached_entries(cache, {shorty_sha["sha256"]}) and cached_entries(cache, {alice_sha})
    r = run_cli("profiles", "delete", "shorty", "--profiles", profiles)
    assert r.returncode == 0, r.stderr
    assert "cached feature file" in r.stdout
    assert not cached_entries(cache, {shorty_sha["sha256"]}) and cached_entries(cache, {alice_sha})

    r = run_cli("score", corpus / "real/vox_00098/clip_01.mp4", "--as", "alice", "--json", *common)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    windows = out["windows"]
    scored = [w for w in windows if w["status"] == "scored"]
    # a scored window carries its distance as the weighted sum of its terms; an insufficient one
    # carries a reason and no distance (never a number that could read as genuine)
    assert scored and all(isinstance(w["distance"], float) and w["identity"] is not None for w in scored)
    assert all(w["distance"] is None and w["reason"] for w in windows if w["status"] == "insufficient")
    # the verdict is what the replayed live policy did: suspect exactly when a window was in alert
    alerted = [w for w in windows if w["state"] == "alert"]
    assert out["verdict"] == ("suspect" if alerted else "authentic")
    assert (out["alert_at"] is not None) == bool(alerted)
    if alerted:
        assert out["alert_at"] == alerted[0]["t1"]
    # clip score = mean z of the scored windows
    assert out["clip_score"] == pytest.approx(sum(w["z"] for w in scored) / len(scored))

    r = run_cli("score", corpus / "real/vox_00098/clip_01.mp4", "--as", "bob", *common)
    assert r.returncode == 2 and "unknown profile 'bob'" in r.stderr

    cases = tmp_path / "cases.csv"
    cases.write_text(
        "path,claimed,label\n"
        f"{corpus / 'real/vox_00098/clip_01.mp4'},alice,real\n"
        f"{corpus / 'real/vox_00015/clip_01.mp4'},alice,fake:impostor\n"
        f"{corpus / 'real/lrs2_00024/00024.mp4'},alice,real\n"
        f"{corpus / 'real/vox_00086/clip_01.mp4'},alice,fake\n"
    )
    r = run_cli("eval", cases, "--json", *common, timeout=300)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert {"auc", "eer", "tpr_at_1pct_fpr", "by_claimed", "by_method", "clips"} <= rep.keys()
    assert len(rep["clips"]) == 4 and {c["label"] for c in rep["clips"]} == {"real", "fake:impostor", "fake"}
    # the AUC is the fraction of (fake, real) clip pairs ranked fake-higher (ties half)
    reals = [c["score"] for c in rep["clips"] if c["label"] == "real"]
    fakes = [c["score"] for c in rep["clips"] if c["label"] != "real"]
    pairs = [(f > r) + 0.5 * (f == r) for f in fakes for r in reals]
    assert rep["auc"] == pytest.approx(sum(pairs) / len(pairs))
    assert rep["by_method"]["impostor"]["n"] == 3  # one impostor clip against the two real ones
    assert set(rep["by_method"]) == {"impostor", "fake"}


def test_profile_of_another_base_model_is_refused(tiny_model: Path, corpus: Path, tmp_path: Path,
                                                   run_cli: RunCli) -> None:
    profiles = tmp_path / "profiles"
    r = run_cli("enroll", "carol", corpus / "real/vox_00098/clip_01.mp4", "--steps", "5",
                "--profiles", profiles, "--model", tiny_model)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other.safetensors"
    base = load_model(tiny_model)
    with torch.no_grad():
        base.model.out.bias.add_(0.01)  # a different base model (e.g. retrained)
    save_model(base.model, other, base.meta)
    r = run_cli("score", corpus / "real/vox_00098/clip_01.mp4", "--as", "carol", "--profiles", profiles,
                "--model", other)
    assert r.returncode == 2 and "re-enroll" in r.stderr and "Traceback" not in r.stderr


def test_eval_rejects_bad_cases_file(tmp_path: Path, tiny_model: Path, run_cli: RunCli) -> None:
    bad = tmp_path / "cases.csv"
    bad.write_text("file,who\nx.mp4,alice\n")
    r = run_cli("eval", bad, "--model", tiny_model, "--profiles", tmp_path)
    assert r.returncode == 2 and "path,claimed,label" in r.stderr
