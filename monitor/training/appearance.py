"""Training the appearance embedding: real faces against their self-blended pseudo-fakes
(DiffFake's recipe; SBI in ``sbi``), validation on identities the network never trained on.

Material: faces sampled from real corpus videos (every ``stride``-th decoded frame, up to
``per_clip`` a clip, the primary face landmarked by MediaPipe). Each face is kept as a square
region around it (``REGION`` times the landmark box, ``REGION_PX`` pixels a side) with its
landmarks in that region's pixels: enough context for the blend boundary and the crop margin,
small enough to hold thousands in memory. Regions are cached per clip (npz, keyed by the
file's content hash and the sampling settings), so a second run does not decode again.

A batch pairs every real crop with a pseudo-fake of the same face (the pair differs only by
the blend), so the network cannot learn the person or the video. Pseudo-fakes are drawn anew
every step from a seeded generator (step, position): a run is reproducible from its seed.
Validation: the identities of ``val_identities`` (default: a seeded fifth of them), one fixed
pseudo-fake per face; the checkpoint kept is the one with the highest validation AUC, with
early stopping after ``patience`` validations without improvement, and ``resume`` continues
from the state saved at every validation. AUC, not loss: in the first corpus run the
validation loss rose from step 200 while the AUC kept rising (0.80 at 200, 0.83 at 400): the
head grows overconfident on unseen people, but what the embedding is for is the ranking.

Compression: a call reaches the monitor as H.264 at a few hundred lines (CRF 35 at 360p is the
bench's hard case), which smears exactly the blend boundary the network learns. With
probability ``degrade`` a pair's real crop and its pseudo-fake both get the same
``Degradation`` (a resolution drop and a JPEG re-encode), so the degradation never tells the
label and the network has to find the blend under it. The validation pairs are never degraded
(the AUC stays comparable across runs); ``val_auc_degraded`` is the same pairs, each degraded,
reported beside it.

Occluders: real faces wear glasses, tinted lenses, hold a hand or a microphone in front of the
mouth, and every such edge inside the face is a sharp boundary the network could take for a
blend (one dev recording with red-tinted sunglasses scored a mean logit of +10 against -0.5 for
the same man without them). With probability ``occlude`` an ``Occluder`` (sunglasses: two
tinted lenses with a frame and a bridge over the eyes; or a hand-sized blob over the mouth or
chin) is drawn on the face region *before* the pseudo-fake is made from it, so the real crop
and its pseudo-fake both carry it and only the blend tells them apart. ``val_auc_occluded``
is the validation pairs, each occluded, reported beside the others (the kept checkpoint is
still chosen on the plain AUC).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from expose.monitor.errors import MediaError
from expose.monitor.features.appearance import AppearanceConfig, AppearanceNet, face_crop, save_appearance, to_input
from expose.monitor.features.face_id import sample_faces
from expose.monitor.features.face_model import sha256_file
from expose.monitor.metrics import roc_auc
from expose.monitor.model.exam import pick_device
from expose.monitor.training.corpus import CorpusItem
from expose.monitor.training.sbi import SBIConfig, self_blend
from expose.monitor.training.train import EarlyStopping, resume_training, save_state, state_path

log = logging.getLogger(__name__)

REGION = 2.0  # region side / landmark box side
REGION_PX = 192
CACHE_VERSION = "faces-1"
DEGRADE_SCALE = (0.35, 1.0)  # resolution drop of a degraded pair (1 = none)
DEGRADE_QUALITY = (30, 90)  # its JPEG quality
DEGRADE_STREAM = 1  # third word of a pair's degradation seed: apart from its pseudo-fake's draws


@dataclass(frozen=True)
class FaceRegion:
    identity: str
    image: np.ndarray = field(repr=False)  # (REGION_PX, REGION_PX, 3) uint8
    landmarks: np.ndarray = field(repr=False)  # (478, 2) float32, pixels of ``image``


@dataclass(frozen=True)
class AppearanceTrainConfig:
    steps: int = 1500
    batch: int = 32  # real faces per step (as many pseudo-fakes join them)
    lr: float = 2e-3
    weight_decay: float = 1e-4
    eval_every: int = 100
    patience: int = 5
    seed: int = 0
    device: str = "auto"
    val_fraction: float = 0.2  # of the identities, when none are named
    degrade: float = 0.5  # probability that a training pair is degraded (both crops alike); 0 = never
    occlude: float = 0.0  # probability that a training face wears an occluder (real and pseudo-fake alike)

    def __post_init__(self) -> None:
        for name in ("degrade", "occlude"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability, got {getattr(self, name)}")


@dataclass(frozen=True)
class Degradation:
    """A resolution drop (INTER_AREA down by ``scale``, INTER_LINEAR back up) then a JPEG
    re-encode at ``quality``: what a low-bitrate stream does to a face, applied alike to both
    crops of a pair."""

    scale: float  # in DEGRADE_SCALE
    quality: int  # JPEG quality, in DEGRADE_QUALITY

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Degradation:
        return cls(float(rng.uniform(*DEGRADE_SCALE)), int(rng.integers(DEGRADE_QUALITY[0], DEGRADE_QUALITY[1] + 1)))

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the same size, degraded."""
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (max(1, round(w * self.scale)), max(1, round(h * self.scale))),
                           interpolation=cv2.INTER_AREA)
        up = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        # JPEG's colour transform assumes BGR: swapping keeps the chroma subsampling where a codec puts it
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(up, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        back = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else None
        if back is None:
            raise RuntimeError(f"JPEG round trip failed at quality {self.quality}")
        return cv2.cvtColor(back, cv2.COLOR_BGR2RGB)


OCCLUDE_STREAM = 2  # third word of a pair's occluder seed
# MediaPipe face-mesh indices: the eyes' corners and lids, the mouth's corners, the chin
_EYES = ((33, 133, 159, 145), (362, 263, 386, 374))
_MOUTH, _CHIN = (61, 291), 152


@dataclass(frozen=True)
class Occluder:
    """Something in front of a real face, drawn on its region: ``kind`` "glasses" (two tinted
    lenses over the eyes, a dark frame and a bridge) or "blob" (a hand-sized rounded polygon
    over the mouth or the chin), in ``colour`` at opacity ``alpha``; sizes relative to the
    eye distance; ``seed`` draws the blob's outline."""

    kind: str
    colour: tuple[int, int, int]
    alpha: float
    size: float
    seed: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Occluder:
        kind = "glasses" if rng.random() < 0.6 else "blob"
        if kind == "glasses":  # tinted: dark, red, blue, brown, mirrored grey
            c = rng.integers(0, 200, 3)
            return cls(kind, (int(c[0]), int(c[1]), int(c[2])), float(rng.uniform(0.45, 0.95)),
                       float(rng.uniform(0.85, 1.15)), int(rng.integers(2**31)))
        skin = rng.random() < 0.5  # a hand, or a microphone / cup / phone
        c = (np.array([rng.integers(150, 240), rng.integers(100, 190), rng.integers(70, 160)]) if skin
             else rng.integers(0, 90, 3))
        return cls(kind, (int(c[0]), int(c[1]), int(c[2])), 1.0, float(rng.uniform(0.7, 1.4)), int(rng.integers(2**31)))

    def apply(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB and its (478, 2) landmarks -> the same image with the occluder."""
        out = rgb.copy()
        eyes = [landmarks[list(e)].mean(axis=0) for e in _EYES]
        span = float(np.linalg.norm(eyes[1] - eyes[0]))
        if span < 2:
            return out
        layer, mask = out.copy(), np.zeros(rgb.shape[:2], np.uint8)
        if self.kind == "glasses":
            angle = float(np.degrees(np.arctan2(*(eyes[1] - eyes[0])[::-1])))
            axes = (max(2, round(0.5 * span * self.size)), max(2, round(0.36 * span * self.size)))
            centres = [(round(float(c[0])), round(float(c[1]))) for c in eyes]
            for centre in centres:
                cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1)
            layer[mask > 0] = self.colour
            frame = max(1, round(span * 0.04))
            inner = [e + (o - e) * 0.5 * self.size for e, o in ((eyes[0], eyes[1]), (eyes[1], eyes[0]))]
            bridge = [(round(float(v[0])), round(float(v[1]))) for v in inner]
            # the dark frame and bridge, on the picture and (opaque) in the mask
            for target, ink in ((layer, (20, 20, 20)), (mask, 255)):
                for centre in centres:
                    cv2.ellipse(target, centre, axes, angle, 0, 360, ink, frame)
                cv2.line(target, bridge[0], bridge[1], ink, frame)
        else:
            rng = np.random.default_rng(self.seed)
            anchor = landmarks[list(_MOUTH)].mean(axis=0) if rng.random() < 0.6 else landmarks[_CHIN]
            centre = anchor + rng.normal(0, 0.15 * span, 2)
            n = int(rng.integers(6, 11))
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = span * self.size * rng.uniform(0.5, 1.0, n)
            pts = np.stack([centre[0] + rad * np.cos(ang), centre[1] + rad * np.sin(ang)], axis=1)
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 255)
            layer[mask > 0] = self.colour
            shade = rng.uniform(0.75, 1.0)  # a little shading, not a flat sticker
            layer = np.where(mask[..., None] > 0, np.clip(layer * shade, 0, 255), layer).astype(np.uint8)
        a = (cv2.GaussianBlur(mask, (3, 3), 0).astype(np.float32) / 255.0 * self.alpha)[..., None]
        return (out * (1 - a) + layer * a).round().astype(np.uint8)


def pair_occluder(seed: int, j: int, p: float) -> Occluder | None:
    """The j-th pair's occluder (None: none), from a generator seeded with (seed, j,
    OCCLUDE_STREAM); with ``p`` = 0 nothing is drawn."""
    if p <= 0:
        return None
    rng = np.random.default_rng([seed, j, OCCLUDE_STREAM])
    return Occluder.draw(rng) if rng.random() < p else None


def pair_degradation(seed: int, j: int, p: float) -> Degradation | None:
    """The j-th pair's degradation (None: kept as it is), from a generator seeded with (seed, j,
    DEGRADE_STREAM): independent of how many draws the pseudo-fake took, and with ``p`` = 0
    nothing is drawn, so the pairs are those of a run without degradation."""
    if p <= 0:
        return None
    rng = np.random.default_rng([seed, j, DEGRADE_STREAM])
    return Degradation.draw(rng) if rng.random() < p else None


def _region(image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    side = max(float(x1 - x0), float(y1 - y0), 1.0) * REGION
    scale = REGION_PX / side
    tx, ty = REGION_PX / 2 - scale * float(x0 + x1) / 2, REGION_PX / 2 - scale * float(y0 + y1) / 2
    m = np.array([[scale, 0, tx], [0, scale, ty]], dtype=np.float32)
    out = cv2.warpAffine(image, m, (REGION_PX, REGION_PX), flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return out, (landmarks * scale + np.array([tx, ty])).astype(np.float32)


def clip_faces(item: CorpusItem, face_model: Path, per_clip: int, stride: int,
               cache_dir: Path | None) -> list[FaceRegion]:
    """Up to ``per_clip`` face regions of one clip, through the cache when one is given."""
    key = ""
    if cache_dir is not None:
        key = hashlib.sha256(f"{CACHE_VERSION}:{sha256_file(item.path)}:{sha256_file(face_model)}:"
                             f"{per_clip}:{stride}:{REGION}:{REGION_PX}".encode()).hexdigest()[:32]
        hit = Path(cache_dir) / "appearance" / f"{key}.npz"
        if hit.is_file():
            with np.load(hit) as z:
                return [FaceRegion(item.identity, im, lm) for im, lm in zip(z["images"], z["landmarks"], strict=True)]
    samples, _ = sample_faces(item.path, face_model, per_clip, stride, max_side=640)
    regions = [_region(f.image, f.landmarks) for f in samples]
    images, marks = [r[0] for r in regions], [r[1] for r in regions]
    if cache_dir is not None and images:
        out = Path(cache_dir) / "appearance" / f"{key}.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.stem + ".tmp.npz")
        np.savez(tmp, images=np.stack(images), landmarks=np.stack(marks))
        tmp.replace(out)
    return [FaceRegion(item.identity, im, lm) for im, lm in zip(images, marks, strict=True)]


def collect_faces(items: list[CorpusItem], face_model: Path, per_clip: int = 24, stride: int = 5,
                  cache_dir: Path | None = None, on_item: Callable[[CorpusItem], None] | None = None,
                  ) -> list[FaceRegion]:
    """Face regions of every item; unreadable media are skipped with a warning."""
    out: list[FaceRegion] = []
    for item in items:
        try:
            out += clip_faces(item, face_model, per_clip, stride, cache_dir)
        except MediaError as err:
            log.warning("skipping %s", err)
        if on_item is not None:
            on_item(item)
    return out


def split_identities(identities: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, validation) identities: a seeded ``fraction`` of them (at least one each)."""
    ids = sorted(set(identities))
    if len(ids) < 2:
        raise ValueError("training the appearance embedding needs faces of at least two identities")
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = min(len(ids) - 1, max(1, round(fraction * len(ids))))
    val = sorted(ids[i] for i in order[:n_val])
    return [i for i in ids if i not in val], val


def pair_batch(faces: list[FaceRegion], idx: np.ndarray, seed: int, net_cfg: AppearanceConfig,
               sbi: SBIConfig, degrade: float = 0.0, occlude: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Each face's real crop and a pseudo-fake crop of it (the j-th drawn from a generator seeded
    with (seed, j)), with probability ``occlude`` both made from the face with the same
    ``pair_occluder`` drawn on it, and with probability ``degrade`` both given the same
    ``pair_degradation``: ((2N, 3, S, S) inputs, (2N,) labels, 1 = pseudo-fake)."""
    crops, labels = [], []
    for j, i in enumerate(idx):
        f = faces[int(i)]
        image = f.image if (o := pair_occluder(seed, j, occlude)) is None else o.apply(f.image, f.landmarks)
        fake = self_blend(image, f.landmarks, np.random.default_rng([seed, j]), sbi)
        pair = [face_crop(image, f.landmarks, net_cfg.size, net_cfg.margin),
                face_crop(fake.image, f.landmarks, net_cfg.size, net_cfg.margin)]
        if (d := pair_degradation(seed, j, degrade)) is not None:
            pair = [d.apply(c) for c in pair]
        crops += pair
        labels += [0.0, 1.0]
    return to_input(np.stack(crops)), torch.tensor(labels)


def _logits(net: AppearanceNet, x: torch.Tensor, device: torch.device) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(x[a:a + 128].to(device))[1].float().cpu() for a in range(0, len(x), 128)])


def evaluate(net: AppearanceNet, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             x_degraded: torch.Tensor | None = None, x_occluded: torch.Tensor | None = None) -> dict[str, float]:
    """Loss, AUC and accuracy on the validation pairs; with ``x_degraded`` (the same pairs,
    degraded) also its AUC, ``val_auc_degraded``; with ``x_occluded`` (each occluded),
    ``val_auc_occluded`` and ``val_real_logit_occluded``, the mean logit of the occluded real
    faces (what a genuine face with glasses scores) beside ``val_real_logit``."""
    net.eval()
    z = _logits(net, x, device)
    zd = _logits(net, x_degraded, device) if x_degraded is not None else None
    zo = _logits(net, x_occluded, device) if x_occluded is not None else None
    net.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z, y).item()
    acc = float(((z > 0) == (y > 0.5)).float().mean())
    out = {"val_loss": loss, "val_auc": roc_auc(y.numpy(), z.numpy()), "val_acc": acc}
    if zd is not None:
        out["val_auc_degraded"] = roc_auc(y.numpy(), zd.numpy())
    if zo is not None:
        real = y.numpy() < 0.5
        out["val_auc_occluded"] = roc_auc(y.numpy(), zo.numpy())
        out["val_real_logit"] = float(z.numpy()[real].mean())
        out["val_real_logit_occluded"] = float(zo.numpy()[real].mean())
    return out


@dataclass
class AppearanceResult:
    best_step: int
    best: dict[str, float]
    steps_run: int
    seconds: float
    train_identities: list[str]
    val_identities: list[str]
    history: list[dict[str, float]]


def train_appearance(faces: list[FaceRegion], out: Path, net_cfg: AppearanceConfig, cfg: AppearanceTrainConfig,
                     sbi: SBIConfig | None = None, val_identities: list[str] | None = None, resume: bool = False,
                     on_step: Callable[[int, float, dict[str, float] | None], None] | None = None,
                     ) -> AppearanceResult:
    """Train and write the best checkpoint (highest validation AUC) to ``out``."""
    sbi = sbi or SBIConfig()
    ids = sorted({f.identity for f in faces})
    if val_identities:
        unknown = set(val_identities) - set(ids)
        if unknown:
            raise ValueError(f"validation identities without faces: {', '.join(sorted(unknown))}")
        val_ids, train_ids = sorted(val_identities), [i for i in ids if i not in set(val_identities)]
        if not train_ids:
            raise ValueError("no training identity left after the validation ones")
    else:
        train_ids, val_ids = split_identities(ids, cfg.val_fraction, cfg.seed)
    train_faces = [f for f in faces if f.identity in set(train_ids)]
    val_faces = [f for f in faces if f.identity in set(val_ids)]
    torch.manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    val_x, val_y = pair_batch(val_faces, np.arange(len(val_faces)), 2**31 - 1, net_cfg, sbi)
    val_xd, _ = pair_batch(val_faces, np.arange(len(val_faces)), 2**31 - 1, net_cfg, sbi, degrade=1.0)
    val_xo, _ = pair_batch(val_faces, np.arange(len(val_faces)), 2**31 - 1, net_cfg, sbi, occlude=1.0)
    net = AppearanceNet(net_cfg).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(s, cfg.steps) / cfg.steps)))
    step, stop = 0, EarlyStopping(cfg.patience, higher=True)
    history: list[dict[str, float]] = []
    state = state_path(out)
    if resume and state.is_file():
        step, history = resume_training(state, net, opt, sched, device, stop)
    t0 = time.perf_counter()
    while step < cfg.steps:
        # the faces and the pseudo-fakes of a step depend only on (seed, step): resuming replays them
        pick = np.random.default_rng([cfg.seed, step]).integers(0, len(train_faces), cfg.batch)
        x, y = pair_batch(train_faces, pick, cfg.seed * 1_000_003 + step, net_cfg, sbi, cfg.degrade, cfg.occlude)
        _, logit = net(x.to(device))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        evals = None
        if step % cfg.eval_every == 0 or step == cfg.steps:
            evals = {"step": step, "loss": loss.item(), **evaluate(net, val_x, val_y, device, val_xd, val_xo)}
            history.append(evals)
            if stop.improved(evals["val_auc"], step):
                save_appearance(net, out, {"train": asdict(cfg), "sbi": asdict(sbi), "step": step, "val": evals,
                                           "train_identities": train_ids, "val_identities": val_ids,
                                           "faces": {"train": len(train_faces), "val": len(val_faces)}})
            save_state(state, net, opt, step, stop.best, stop.best_step, history)
        if on_step:
            on_step(step, loss.item(), evals)
        if evals is not None and stop.exhausted:
            log.info("early stop at step %d (best %d)", step, stop.best_step)
            break
    best_evals: dict[str, float] = next((h for h in history if h.get("step") == stop.best_step), {})
    if stop.best_step > 0:
        best_evals = {**best_evals, **fit_pair_model(out, train_faces, val_faces, net_cfg, sbi, cfg.seed)}
    return AppearanceResult(stop.best_step, best_evals, step, time.perf_counter() - t0, train_ids, val_ids,
                            history)


def fit_pair_model(out: Path, train_faces: list[FaceRegion], val_faces: list[FaceRegion], net_cfg: AppearanceConfig,
                   sbi: SBIConfig, seed: int, per_face: int = 8, forms: tuple[bool, ...] = (True, False),
                   write: bool = True) -> dict[str, float]:
    """DiffFake's pair model on the best checkpoint: a mixture fitted on pairs of the training
    identities' real faces, in each pair-feature form of ``forms`` (L2-normalised: True, the
    paper's choice; raw: False); the form with the better validation AUC (pairs of a validation
    face with other real faces of the same person, against the same references with a
    pseudo-fake of the face) is stored in ``out``. In the first corpus run the raw form won by
    far (0.880 against 0.278: normalising throws away how *much* a face differs, which is what
    a pseudo-fake changes most). Returns both AUCs."""
    from expose.monitor.features.appearance import load_appearance
    from expose.monitor.model.difffake import PairModel, same_identity_pairs

    net, meta = load_appearance(out)

    def embed(crops: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([net.embed(to_input(np.stack(crops[a:a + 128]))).numpy()
                                   for a in range(0, len(crops), 128)])

    def crops_of(faces: list[FaceRegion]) -> list[np.ndarray]:
        return [face_crop(f.image, f.landmarks, net_cfg.size, net_cfg.margin) for f in faces]

    train_emb = embed(crops_of(train_faces))
    ids_train = [f.identity for f in train_faces]
    models = {norm: PairModel.fit(same_identity_pairs(train_emb, ids_train, per_face, seed, norm), seed=seed,
                                  normalise=norm) for norm in forms}
    result: dict[str, float] = {}
    if val_faces:
        real = embed(crops_of(val_faces))
        fakes = embed([face_crop(self_blend(f.image, f.landmarks, np.random.default_rng([2**31 - 1, j]), sbi).image,
                                 f.landmarks, net_cfg.size, net_cfg.margin) for j, f in enumerate(val_faces)])
        ids = np.array([f.identity for f in val_faces])
        rng = np.random.default_rng(seed)
        refs_of = {}
        for i in range(len(val_faces)):
            same = np.flatnonzero((ids == ids[i]) & (np.arange(len(ids)) != i))
            if len(same):
                refs_of[i] = rng.choice(same, size=min(per_face, len(same)), replace=False)
        for norm, model in models.items():
            gen = [float(model.distance(real[r], real[i:i + 1])[0]) for i, r in refs_of.items()]
            att = [float(model.distance(real[r], fakes[i:i + 1])[0]) for i, r in refs_of.items()]
            if gen:
                key = "val_pair_auc_" + ("normalised" if norm else "raw")
                result[key] = roc_auc(np.r_[np.zeros(len(gen)), np.ones(len(att))], np.array(gen + att))
    best = max(forms, key=lambda n: result.get("val_pair_auc_" + ("normalised" if n else "raw"), -1.0))
    model = models[best]
    result["val_pair_auc"] = result.get("val_pair_auc_" + ("normalised" if best else "raw"), float("nan"))
    if write:
        save_appearance(net, out, {**meta, "pair_model": {"k": len(model.weights), "covariance": "diag",
                                                           "normalise": model.normalise, "per_face": per_face,
                                                           **result}}, extra=model.tensors())
    return result
