"""How the score's three terms are fused: weights chosen on validation windows.

``distance = w_identity * identity + w_sync * sync + w_fit * fit`` (monitor/scorer.py).
The weights are fitted at the end of pre-training on the validation windows (held-out
tails of training recordings, each with its own identity's tokens), never on the dev
identities or on any fake. Attacks are made from those same windows:

- impostor: the window scored with another training identity's tokens;
- dub: the window with another validation window's audio;
- transplant: the window whose mouth and jaw channels, and audio, come from another
  window: a perfectly synchronised real mouth that is not this person's, over this
  person's upper face and head (an ideal lip-sync generator). Reported, not optimised:
  no term separates it well (window AUC 0.65-0.75), so chasing it only moves weight
  around by noise.

Each term is divided by its spread on the genuine windows; the direction in the positive
octant that maximises the worse of the impostor and dub window AUCs is kept. The fit term
gets weight only as far as it helps those two; what it adds against generated mouths
(jitter, implausible shapes) cannot be simulated here and is measured by bench/dev_eval.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from expose.monitor.features.expressions import MOUTH_CHANNELS as MOUTH
from expose.monitor.features.windows import Window
from expose.monitor.metrics import roc_auc
from expose.monitor.model.exam import Exam
from expose.monitor.model.score import FusionWeights
from expose.monitor.model.scorer import Scorer, ScoreRequest, ScoreSettings

TERMS = ("identity", "sync", "fit")
CHOSEN_ON = ("impostor", "dub")


def transplant(w: Window, donor: Window) -> Window:
    """``w`` with ``donor``'s mouth and jaw channels, audio and speech activity."""
    expr = w.expression.copy()
    expr[:, MOUTH] = donor.expression[:, MOUTH]
    return dataclasses.replace(w, expression=expr, audio=donor.audio, speech=donor.speech,
                               face_mask=w.face_mask & donor.face_mask, observed=w.observed & donor.observed)


def term_matrix(scorer: Scorer, windows: list[Window], tokens: list[torch.Tensor]) -> np.ndarray:
    """(N, 3) identity, sync and fit terms of each window (NaN rows where not scored)."""
    nan = float("nan")
    scores = scorer.score_batched([ScoreRequest(w, t, "val") for w, t in zip(windows, tokens, strict=True)])
    return np.array([(s.identity, s.sync, s.fit) if s.distance is not None else (nan, nan, nan) for s in scores],
                    dtype=np.float64)


def _auc(genuine: np.ndarray, attack: np.ndarray) -> float:
    ok_g, ok_a = genuine[np.isfinite(genuine)], attack[np.isfinite(attack)]
    return roc_auc(np.r_[np.zeros(len(ok_g)), np.ones(len(ok_a))], np.r_[ok_g, ok_a])


def validation_families(model: Exam, windows: list[tuple[Window, int]]) -> dict[str, np.ndarray]:
    """Term matrices of the genuine validation windows and of each attack made from them."""
    scorer = Scorer(model, ScoreSettings(min_face=0.0, min_speech=0.0))
    ws = [w for w, _ in windows]
    ids = [k for _, k in windows]
    n_id = model.id_tokens.shape[0]
    own = [model.id_tokens[k].detach() for k in ids]
    other = [model.id_tokens[(k + 1 + j % max(n_id - 1, 1)) % n_id].detach() for j, k in enumerate(ids)]
    donor = [ws[(j + len(ws) // 2) % len(ws)] for j in range(len(ws))]
    return {
        "genuine": term_matrix(scorer, ws, own),
        "impostor": term_matrix(scorer, ws, other),
        "dub": term_matrix(scorer, [dataclasses.replace(w, audio=d.audio) for w, d in zip(ws, donor, strict=True)],
                           own),
        "transplant": term_matrix(scorer, [transplant(w, d) for w, d in zip(ws, donor, strict=True)], own),
    }


CENTRED = np.array([t in ("identity", "fit") for t in TERMS])  # the terms profiles centre on themselves


def centred_spread(gen: np.ndarray, w: np.ndarray, groups: np.ndarray) -> float | None:
    """The spread of the fused distance that a profile sees: the identity and fit terms
    centred per identity (profiles centre them on their own calibration windows, which
    removes how predictable each person is), the sync term not. Identities with one
    window are left out; each group's deviations get the n/(n-1) correction. None when no
    identity has two windows."""
    parts = []
    for g in np.unique(groups):
        x = gen[groups == g]
        x = x[np.isfinite(x).all(axis=1)]
        if len(x) < 2:
            continue
        x[:, CENTRED] -= x[:, CENTRED].mean(axis=0)
        fused = x @ w
        # within-identity deviations, plus where the uncentred sync term puts this identity
        parts.append((fused - fused.mean()) * np.sqrt(len(x) / (len(x) - 1)) + fused.mean())
    return float(np.concatenate(parts).std()) if parts else None


def choose_weights(families: dict[str, np.ndarray], groups: np.ndarray | None = None,
                   steps: int = 24) -> FusionWeights:
    """Unit-spread terms, then the direction in the positive octant with the best worst AUC
    over CHOSEN_ON (ties: the better mean over them).

    ``genuine_std`` (the floor of every profile's spread, and the unit of normalised
    distances) is the fused spread with the per-profile terms centred per identity
    (``groups``: the identity of each genuine window), else the plain spread. Across the
    66 training identities most of the identity and fit terms' spread is between people,
    which calibration removes; a floor that kept it put the live threshold out of reach
    of every attack (model card)."""
    gen = families["genuine"]
    sd = np.maximum(np.nanstd(gen, axis=0), 1e-4)
    best: tuple[float, float, np.ndarray, dict[str, float]] | None = None
    for a in np.linspace(0.0, np.pi / 2, steps + 1):
        for b in np.linspace(0.0, np.pi / 2, steps + 1):
            w = np.array([np.cos(a) * np.cos(b), np.sin(a) * np.cos(b), np.sin(b)]) / sd
            aucs = {f: _auc(gen @ w, x @ w) for f, x in families.items() if f != "genuine"}
            key = (min(aucs[f] for f in CHOSEN_ON), float(np.mean([aucs[f] for f in CHOSEN_ON])))
            if best is None or key > best[:2]:
                best = (*key, w, aucs)
    assert best is not None
    w = best[2]
    fused = gen @ w
    plain = float(np.nanstd(fused))
    centred = centred_spread(gen, w, groups) if groups is not None else None
    return FusionWeights(
        identity=float(w[0]), sync=float(w[1]), fit=float(w[2]),
        genuine_std=centred if centred is not None else plain, genuine_std_uncentred=plain,
        n_windows=int(np.isfinite(fused).sum()), val_worst_auc=best[0],
        val_auc={f: round(v, 4) for f, v in best[3].items()},
        identity_sd=float(sd[0]), sync_sd=float(sd[1]), fit_sd=float(sd[2]))
