"""DiffFake's differential anomaly model: how unusual is the difference between an enrolled
reference face and a live face, in the appearance embedding (features/appearance.py)?

A pair (A, B) of embeddings of the same person becomes the element-wise squared difference
(A - B)^2, L2-normalised (the form the paper found best; ``normalise=False`` keeps the raw
one). A Gaussian mixture (k = 3, diagonal covariances, scikit-learn) is fitted on pairs of
*pristine* faces only: two real faces of the same identity. A pair whose feature the mixture
finds unlikely (a high negative log-likelihood) has a face that differs from the reference in
an unusual way: the manipulation the embedding was trained to expose.

``PairModel`` is fitted once, on the training identities' real faces, and stored beside the
embedding's weights (tensors ``pair.*`` in the same file); a profile's references are its
enrolled faces' embeddings. Torch-free.

``HeadScore`` is the other way to read the same embedding: the network's own real-vs-blended
logit (its linear head, ``head.*`` in the weights file), the self-blended-image detector
DiffFake builds on. ``head`` needs no reference; ``head_centred`` subtracts the mean logit of
the enrolled faces, so a person or a recording whose real faces the head finds a little odd
starts from zero (DiffFake's differential idea applied to the detector). Which of the three
scores a decision uses is chosen on validation attacks (bench/fit_decision.py), and named in
its spec (``DecisionSpec.appearance_score``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from expose.monitor.errors import ModelFileError


def pair_features(refs: np.ndarray, probes: np.ndarray, normalise: bool = True) -> np.ndarray:
    """(M, D) references, (N, D) probes -> (N, M, D) float64 pair features (a - b)^2."""
    if refs.ndim != 2 or probes.ndim != 2 or refs.shape[1] != probes.shape[1]:
        raise ValueError(f"need (M, D) references and (N, D) probes, got {refs.shape} and {probes.shape}")
    d = (probes.astype(np.float64)[:, None, :] - refs.astype(np.float64)[None, :, :]) ** 2
    if normalise:
        d /= np.maximum(np.linalg.norm(d, axis=-1, keepdims=True), 1e-12)
    return d


@dataclass(frozen=True)
class PairModel:
    """A diagonal Gaussian mixture over pair features."""

    weights: np.ndarray = field(repr=False)  # (K,)
    means: np.ndarray = field(repr=False)  # (K, D)
    variances: np.ndarray = field(repr=False)  # (K, D)
    normalise: bool = True

    kind: Literal["pair"] = "pair"

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    @classmethod
    def fit(cls, pristine: np.ndarray, k: int = 3, normalise: bool = True, seed: int = 0) -> PairModel:
        """Fit on (P, D) pair features of pristine faces only (``pair_features`` output, flattened)."""
        from sklearn.mixture import GaussianMixture

        if pristine.ndim != 2 or len(pristine) < 10 * k:
            raise ValueError(f"need (P, D) pristine pair features with P >= {10 * k}, got {pristine.shape}")
        gmm = GaussianMixture(n_components=k, covariance_type="diag", reg_covar=1e-6, random_state=seed,
                              max_iter=500, n_init=2).fit(pristine)
        return cls(gmm.weights_.astype(np.float64), gmm.means_.astype(np.float64),
                   gmm.covariances_.astype(np.float64), normalise)

    def nll(self, features: np.ndarray) -> np.ndarray:
        """(..., D) pair features -> (...) negative log-likelihood under the mixture (higher = odder)."""
        x = features[..., None, :]  # (..., 1, D)
        log_det = np.log(self.variances).sum(-1)  # (K,)
        maha = ((x - self.means) ** 2 / self.variances).sum(-1)  # (..., K)
        d = self.means.shape[1]
        log_comp = np.log(self.weights) - 0.5 * (maha + log_det + d * np.log(2 * np.pi))
        top = log_comp.max(-1, keepdims=True)
        return -(top[..., 0] + np.log(np.exp(log_comp - top).sum(-1)))

    def distance(self, refs: np.ndarray, probes: np.ndarray) -> np.ndarray:
        """(N,) per probe: the mean over the references of the pair's negative log-likelihood."""
        return self.nll(pair_features(refs, probes, self.normalise)).mean(axis=1)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"pair.weights": self.weights.astype(np.float32), "pair.means": self.means.astype(np.float32),
                "pair.variances": self.variances.astype(np.float32),
                "pair.normalise": np.array([1.0 if self.normalise else 0.0], dtype=np.float32)}

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray]) -> PairModel:
        try:
            return cls(t["pair.weights"].astype(np.float64), t["pair.means"].astype(np.float64),
                       t["pair.variances"].astype(np.float64), bool(t["pair.normalise"][0] > 0.5))
        except KeyError as err:
            raise ModelFileError(f"the appearance weights hold no pair model ({err.args[0]} missing)") from None


@dataclass(frozen=True)
class HeadScore:
    """The embedding network's real-vs-blended logit w.e + b per face (> 0: looks blended),
    optionally minus the mean logit of the references (``centred``)."""

    weight: np.ndarray = field(repr=False)  # (D,)
    bias: float = 0.0
    centred: bool = False

    @property
    def dim(self) -> int:
        return len(self.weight)

    @property
    def kind(self) -> Literal["head", "head_centred"]:
        return "head_centred" if self.centred else "head"

    def logits(self, x: np.ndarray) -> np.ndarray:
        if x.ndim != 2 or x.shape[1] != len(self.weight):
            raise ValueError(f"need (N, {len(self.weight)}) embeddings, got {x.shape}")
        return x.astype(np.float64) @ self.weight + self.bias

    def distance(self, refs: np.ndarray, probes: np.ndarray) -> np.ndarray:
        """(N,) per probe: its logit, less the references' mean logit when centred."""
        out = self.logits(probes)
        return out - float(self.logits(refs).mean()) if self.centred else out

    def tensors(self) -> dict[str, np.ndarray]:
        return {"head.weight": self.weight.astype(np.float32)[None, :],
                "head.bias": np.array([self.bias], dtype=np.float32),
                "head.centred": np.array([1.0 if self.centred else 0.0], dtype=np.float32)}

    @classmethod
    def from_tensors(cls, t: dict[str, np.ndarray], centred: bool | None = None) -> HeadScore:
        """From a weights file's ``head.*`` (``centred`` given) or a decision's (stored)."""
        try:
            w, b = t["head.weight"].astype(np.float64), t["head.bias"].astype(np.float64)
            flag = bool(t["head.centred"][0] > 0.5) if centred is None else centred
        except KeyError as err:
            raise ModelFileError(f"the appearance weights hold no head ({err.args[0]} missing)") from None
        if w.ndim != 2 or w.shape[0] != 1 or b.shape != (1,):
            raise ModelFileError(f"the appearance head must be (1, D) and (1,), got {w.shape} and {b.shape}")
        return cls(w[0], float(b[0]), flag)


AppearanceScore = PairModel | HeadScore
SCORE_KINDS = ("pair", "head", "head_centred")
ScoreKind = Literal["pair", "head", "head_centred"]


def appearance_score(kind: str, tensors: dict[str, np.ndarray]) -> AppearanceScore:
    """The named score from an appearance weights file's tensors (``load_score_tensors``)."""
    if kind == "pair":
        return PairModel.from_tensors(tensors)
    if kind in ("head", "head_centred"):
        return HeadScore.from_tensors(tensors, centred=kind == "head_centred")
    raise ValueError(f"unknown appearance score {kind!r}; known: {', '.join(SCORE_KINDS)}")


def same_identity_pairs(embeddings: np.ndarray, identities: list[str], per_face: int, seed: int,
                        normalise: bool = True) -> np.ndarray:
    """(P, D) pair features of up to ``per_face`` other faces of the same identity for each face."""
    rng = np.random.default_rng(seed)
    ids = np.array(identities)
    out = []
    for i in range(len(embeddings)):
        same = np.flatnonzero((ids == ids[i]) & (np.arange(len(ids)) != i))
        if len(same) == 0:
            continue
        pick = rng.choice(same, size=min(per_face, len(same)), replace=False)
        out.append(pair_features(embeddings[pick], embeddings[i:i + 1], normalise)[0])
    if not out:
        raise ValueError("no identity has two faces: no pristine pair")
    return np.concatenate(out)
