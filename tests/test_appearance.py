"""The appearance embedding and its training on real corpus faces: faces are sampled and cached
per clip, validation identities never train, the best checkpoint is written and loads, the
embedding of a crop is deterministic and independent of its batch, resume continues the run
it left, the compression augmentation degrades both crops of a pair alike and reproducibly,
the occluders (glasses, hands) are drawn where they belong and on both crops of a pair, and
bad weights or arguments fail in one line. A tiny network and a few steps: the quality of the
shipped embedding is measured by the training run itself (model card)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from expose.monitor.errors import ModelFileError
from expose.monitor.features.appearance import (
    AppearanceConfig,
    AppearanceEmbedder,
    face_crop,
    load_appearance,
    load_score_tensors,
    to_input,
)
from expose.monitor.features.face_id import FaceSample
from expose.monitor.model.difffake import PairModel
from expose.monitor.training.appearance import (
    DEGRADE_QUALITY,
    DEGRADE_SCALE,
    REGION_PX,
    AppearanceTrainConfig,
    FaceRegion,
    Occluder,
    collect_faces,
    pair_batch,
    pair_degradation,
    pair_occluder,
    split_identities,
    train_appearance,
)
from expose.monitor.training.corpus import CorpusItem
from expose.monitor.training.sbi import SBIConfig, self_blend

if TYPE_CHECKING:
    from tests.conftest import Clip

CLIPS = {"acosta": "real/acosta/cnn_01.mp4", "macron": "real/macron/speech_01.mp4",
         "reagan": "real/reagan/reagan_clip1.mp4", "conan_obrien": "real/conan_obrien/conan_obrien.mp4"}
TINY = AppearanceConfig(size=48, widths=(8, 16, 32))


@pytest.fixture(scope="module")
def faces(clip: Clip, face_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[FaceRegion]:
    cache = tmp_path_factory.mktemp("appearance-cache")
    items = [CorpusItem(clip(rel), who) for who, rel in CLIPS.items()]
    first = collect_faces(items, face_model, per_clip=6, stride=7, cache_dir=cache)
    again = collect_faces(items, face_model, per_clip=6, stride=7, cache_dir=cache)  # from the cache
    assert len(list((cache / "appearance").glob("*.npz"))) == len(items)
    assert len(first) == len(again) == 6 * len(items)
    assert all(np.array_equal(a.image, b.image) and np.array_equal(a.landmarks, b.landmarks)
               for a, b in zip(first, again, strict=True))
    return first


def test_face_regions_hold_the_face_with_room_for_the_blend(faces: list[FaceRegion]) -> None:
    for f in faces:
        assert f.image.shape == (REGION_PX, REGION_PX, 3) and f.landmarks.shape == (478, 2)
        lo, hi = f.landmarks.min(axis=0), f.landmarks.max(axis=0)
        # the landmark box is half the region's side, centred
        assert np.all(lo > 0.2 * REGION_PX) and np.all(hi < 0.8 * REGION_PX)
        assert max(hi - lo) == pytest.approx(REGION_PX / 2, rel=0.02)


def test_validation_identities_never_train_and_the_best_checkpoint_loads(
        faces: list[FaceRegion], tmp_path: Path) -> None:
    out = tmp_path / "app.safetensors"
    cfg = AppearanceTrainConfig(steps=12, batch=6, eval_every=4, patience=10, device="cpu")
    res = train_appearance(faces, out, TINY, cfg, val_identities=["reagan"])
    assert res.val_identities == ["reagan"] and "reagan" not in res.train_identities
    assert len(res.history) == 3 and res.best_step in (4, 8, 12)
    assert res.best["val_auc"] == max(h["val_auc"] for h in res.history)
    net, meta = load_appearance(out)
    assert meta["step"] == res.best_step and meta["val_identities"] == ["reagan"]
    assert meta["faces"] == {"train": 18, "val": 6}
    assert meta["train"]["degrade"] == 0.5 and 0.0 <= meta["val"]["val_auc_degraded"] <= 1.0
    assert meta["train"]["occlude"] == 0.0 and 0.0 <= meta["val"]["val_auc_occluded"] <= 1.0  # always measured
    # the DiffFake pair model, fitted on the training identities' real pairs, is in the same file
    assert meta["pair_model"]["k"] == 3 and 0.0 <= meta["pair_model"]["val_pair_auc"] <= 1.0
    pair = PairModel.from_tensors(load_score_tensors(out))
    emb = AppearanceEmbedder(out).embed([FaceSample(f.image, f.landmarks) for f in faces[:4]])
    assert pair.distance(emb[:2], emb[2:]).shape == (2,)
    # every validation point is a real crop and its pseudo-fake: an AUC exists
    assert 0.0 <= res.best["val_auc"] <= 1.0
    with pytest.raises(ValueError, match="validation identities without faces"):
        train_appearance(faces, tmp_path / "x.safetensors", TINY, cfg, val_identities=["nobody"])
    train, val = split_identities(["a", "b", "c", "d", "e"], 0.2, seed=3)
    assert len(val) == 1 and set(train) | set(val) == {"a", "b", "c", "d", "e"} and not set(train) & set(val)


def test_the_embedding_is_deterministic_and_independent_of_the_batch(
        faces: list[FaceRegion], tmp_path: Path) -> None:
    out = tmp_path / "app.safetensors"
    train_appearance(faces, out, TINY, AppearanceTrainConfig(steps=4, batch=4, eval_every=4, device="cpu"))
    emb = AppearanceEmbedder(out)
    samples = [FaceSample(f.image, f.landmarks) for f in faces[:5]]
    batch = emb.embed(samples)
    assert batch.shape == (5, TINY.dim) and batch.dtype == np.float32 and np.isfinite(batch).all()
    assert np.array_equal(emb.embed(samples), batch)
    alone = emb.embed(samples[2:3])
    assert np.allclose(alone[0], batch[2], atol=1e-5)  # eval mode: batch norm does not mix the batch
    assert not np.allclose(batch[0], batch[3])


def test_resume_continues_where_the_run_stopped(faces: list[FaceRegion], tmp_path: Path) -> None:
    out = tmp_path / "app.safetensors"
    first = train_appearance(faces, out, TINY, AppearanceTrainConfig(steps=8, batch=4, eval_every=4, device="cpu"))
    assert first.steps_run == 8
    more = train_appearance(faces, out, TINY, AppearanceTrainConfig(steps=12, batch=4, eval_every=4, device="cpu"),
                            resume=True)
    assert more.steps_run == 12 and [h["step"] for h in more.history] == [4, 8, 12]
    assert more.history[:2] == first.history  # the first run's record is kept, not redone


def test_degradation_is_the_same_for_both_crops_of_a_pair_and_reproducible(faces: list[FaceRegion]) -> None:
    sbi, seed, idx = SBIConfig(), 7, np.array([0, 7, 13, 22])
    plain, labels = pair_batch(faces, idx, seed, TINY, sbi)
    assert torch.equal(pair_batch(faces, idx, seed, TINY, sbi, degrade=0.0)[0], plain)
    degraded, dlabels = pair_batch(faces, idx, seed, TINY, sbi, degrade=1.0)
    assert torch.equal(pair_batch(faces, idx, seed, TINY, sbi, degrade=1.0)[0], degraded)  # from the seed alone
    assert torch.equal(dlabels, labels) and labels.tolist() == [0.0, 1.0] * len(idx)
    for j, i in enumerate(idx):
        f = faces[int(i)]
        real = face_crop(f.image, f.landmarks, TINY.size, TINY.margin)
        fake = face_crop(self_blend(f.image, f.landmarks, np.random.default_rng([seed, j]), sbi).image,
                         f.landmarks, TINY.size, TINY.margin)
        # degrade=0: the pairs are those of a run without the augmentation
        assert torch.equal(plain[2 * j], to_input(real[None])[0])
        assert torch.equal(plain[2 * j + 1], to_input(fake[None])[0])
        d = pair_degradation(seed, j, 1.0)
        assert d is not None and DEGRADE_SCALE[0] <= d.scale <= DEGRADE_SCALE[1]
        assert DEGRADE_QUALITY[0] <= d.quality <= DEGRADE_QUALITY[1]
        # both crops of the pair get this one degradation, and it changes them
        assert torch.equal(degraded[2 * j], to_input(d.apply(real)[None])[0])
        assert torch.equal(degraded[2 * j + 1], to_input(d.apply(fake)[None])[0])
        assert not torch.equal(degraded[2 * j], plain[2 * j])
        assert not torch.equal(degraded[2 * j + 1], plain[2 * j + 1])
    draws = [pair_degradation(seed, j, 1.0) for j in range(len(idx))]
    assert len(set(draws)) == len(draws)  # each pair draws its own
    kept = sum(pair_degradation(seed, j, 0.5) is None for j in range(400))
    assert 150 < kept < 250
    with pytest.raises(ValueError, match="degrade is a probability"):
        AppearanceTrainConfig(degrade=1.5)


def test_occluders_cover_the_eyes_or_the_lower_face_of_both_crops_of_a_pair(faces: list[FaceRegion]) -> None:
    f = faces[3]
    eyes = f.landmarks[[33, 133, 159, 145, 362, 263, 386, 374]]
    span = float(np.linalg.norm(eyes[4:].mean(axis=0) - eyes[:4].mean(axis=0)))
    for kind, near in (("glasses", eyes), ("blob", f.landmarks[[61, 291, 152]])):
        occ = Occluder(kind, (200, 30, 30), 1.0, 1.0, seed=5)
        out = occ.apply(f.image, f.landmarks)
        assert out.shape == f.image.shape and out.dtype == np.uint8
        changed = np.argwhere(np.abs(out.astype(int) - f.image.astype(int)).max(axis=2) > 0)[:, ::-1]  # (x, y)
        assert len(changed) > 0.05 * span**2, kind  # it covers something
        # every changed pixel lies near what it occludes: the eyes, or the mouth and chin
        dist = np.linalg.norm(changed[:, None, :] - near[None, :, :], axis=2).min(axis=1)
        assert dist.max() < 2.2 * span, (kind, dist.max() / span)
        assert np.array_equal(occ.apply(f.image, f.landmarks), out)  # deterministic
    sbi, seed, idx = SBIConfig(), 11, np.array([1, 9, 17])
    plain, _ = pair_batch(faces, idx, seed, TINY, sbi)
    assert torch.equal(pair_batch(faces, idx, seed, TINY, sbi, occlude=0.0)[0], plain)
    occluded, labels = pair_batch(faces, idx, seed, TINY, sbi, occlude=1.0)
    assert torch.equal(pair_batch(faces, idx, seed, TINY, sbi, occlude=1.0)[0], occluded)  # from the seed alone
    for j, i in enumerate(idx):
        g = faces[int(i)]
        o = pair_occluder(seed, j, 1.0)
        assert o is not None
        image = o.apply(g.image, g.landmarks)  # the pseudo-fake is made from the occluded face
        fake = self_blend(image, g.landmarks, np.random.default_rng([seed, j]), sbi).image
        assert torch.equal(occluded[2 * j], to_input(face_crop(image, g.landmarks, TINY.size, TINY.margin)[None])[0])
        assert torch.equal(occluded[2 * j + 1],
                           to_input(face_crop(fake, g.landmarks, TINY.size, TINY.margin)[None])[0])
        assert not torch.equal(occluded[2 * j], plain[2 * j]) and labels[2 * j] == 0 and labels[2 * j + 1] == 1
    kinds = [o.kind for j in range(300) if (o := pair_occluder(seed, j, 0.5)) is not None]
    assert 100 < len(kinds) < 200 and {"glasses", "blob"} == set(kinds)
    with pytest.raises(ValueError, match="occlude is a probability"):
        AppearanceTrainConfig(occlude=-0.1)


def test_bad_weights_and_arguments_fail_in_one_line(tmp_path: Path, clip: Clip) -> None:
    with pytest.raises(ModelFileError, match="not found"):
        load_appearance(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFileError, match="unreadable appearance weights") as err:
        load_appearance(junk)
    assert "\n" not in str(err.value)
    folder = clip(CLIPS["acosta"]).parent  # one identity's folder: nothing is decoded before the check
    proc = subprocess.run([str(Path(sys.executable).with_name("expose")), "train-appearance", str(folder),
                           "--out", str(tmp_path / "o.safetensors"), "--exclude", "nobody_here"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--exclude names identities not in the corpus: nobody_here" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
