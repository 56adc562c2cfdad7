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
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
