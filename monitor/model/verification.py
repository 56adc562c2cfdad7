"""Face and voice verification terms, cohort normalisation, and the one fused decision.

Torch-free: the alert policy, the store and the exporters read what this module names.

Terms (each in the Score, higher = less like the claimed person):
- ``identity``: the motion model's identity term, T-normalised against the base model's
  nearest training-identity token sets (``Score.identity_tnorm``, model/scorer.py);
- ``sync``: mouth against the audio (model/scorer.py), natural zero, no cohort;
- ``face``: distance of the window's face descriptors to the enrolled references' mean,
  T-normalised against a cohort of other people's descriptor means;
- ``voice``: cosine distance of the window's voice embedding to the enrolled voice,
  T-normalised against a cohort of other people's voices;
- ``appearance`` (DiffFake, model/difffake.py): by the decision's ``appearance_score``, how
  unlikely the differences between the window's appearance embeddings and the enrolled ones
  are under the pair model fitted on pristine same-person pairs (``pair``: mean negative
  log-likelihood), or the embedding network's real-vs-blended logit on the window's faces
  (``head``; ``head_centred``: less the enrolled faces' mean logit). Population models
  already, so no cohort: the decision standardises the term like the others. It answers "is
  the face real?", not "whose face?": a fake made from the person's own footage is its target.

T-norm (as in speaker verification): ``(d(x, ref) - mean_c d(x, c)) / sd_c d(x, c)`` over
the cohort members c. Genuine footage from a new recording is far from everyone, the
enrolled person included; relative to the cohort it stays near the person.

Fusion: every term is standardised by its mean and spread on genuine *cross-recording*
validation windows (another recording than the one enrolled), then combined by a rule
chosen on validation attacks (bench/fit_decision.py): ``max`` or ``mean`` of the
standardised terms, or ``channels``: the mean within each channel, then the largest channel.
The starter channels are what is seen (face, identity: whose face and motion) and what is
heard (voice, sync, fit: whose voice, and whether the mouth follows it). A mean over all five
lets the three unchanged terms of a dub or a desync outvote the one or two that moved; the
maximum over single terms lets any one noisy term raise a genuine window; a mean per channel
averages noise within a channel while an attack on one channel still decides. The window's
``driver`` (which names the explanation) is the term with the largest standardised value,
within the deciding channel for ``channels``; or, when the decision holds ``evidence``, the
term with the most evidence of an attack: each term's log-likelihood ratio (attack against
genuine, equal priors) as a line in its standardised value, fitted on validation windows
(bench/fit_decision.py). Why: standardised values are not comparable evidence. Trump's own
face in a new recording sits 1.7 spreads above the face term's genuine mean, level with
another person's voice on the voice term, whose genuine spread is wide; but impostor faces sit
4 spreads up, so that face is still far more likely genuine than not, while that voice is
not. The evidence only names the driver; the distance stays the rule's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from expose.monitor.config import FeatureConfig
from expose.monitor.errors import ConfigError, ModelFileError
from expose.monitor.features.face_model import sha256_file
from expose.monitor.features.windows import Window
from expose.monitor.model.difffake import AppearanceScore, ScoreKind, appearance_score

TERMS = ("identity", "sync", "fit", "face", "voice", "appearance")
Term = Literal["identity", "sync", "fit", "face", "voice", "appearance"]
DECISION_FORMAT = "expose-decision-1"
# what is seen (whose face and motion) and what is heard (whose voice, does the mouth follow it)
STARTER_CHANNELS: tuple[tuple[Term, ...], ...] = (("face", "identity"), ("voice", "sync", "fit"))
STARTER_DECISION = Path(__file__).resolve().parents[1] / "assets" / "decision-small.safetensors"
# the same, fitted with DiffFake's appearance term on the shipped appearance weights; ``auto``
# takes it when features.appearance_model gives those weights (bench/fit_decision.py --appearance)
STARTER_APPEARANCE_DECISION = STARTER_DECISION.with_name("decision-appearance-small.safetensors")

# what an analyst reads when a term drives a window (and an alert) over the threshold
EXPLANATIONS: dict[str, str] = {
    "identity": "moves unlike this person",
    "sync": "mouth does not follow the audio",
    "fit": "mouth moves unlike anyone the model knows",
    "face": "face does not match the enrolled person",
    "voice": "voice does not match the enrolled person",
    "appearance": "face looks manipulated",
}


def explain(driver: str | None) -> str:
    return EXPLANATIONS.get(driver or "", "")


@dataclass(frozen=True)
class IdentityReferences:
    """A profile's enrolled face descriptors (M, 128), voice embeddings (V, 256) and appearance
    embeddings (R, Da); any may be empty (no faces sampled, too little speech at enrollment,
    appearance off): that term is then not used."""

    face: np.ndarray = field(repr=False)
    voice: np.ndarray = field(repr=False)
    appearance: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32), repr=False)

    def __post_init__(self) -> None:
        if self.face.ndim != 2 or self.voice.ndim != 2 or self.appearance.ndim != 2:
            raise ValueError("face, voice and appearance references must be (N, D)")
        if not (np.isfinite(self.face).all() and np.isfinite(self.voice).all()
                and np.isfinite(self.appearance).all()):
            raise ValueError("references must be finite")

    @cached_property
    def face_centroid(self) -> np.ndarray | None:
        return self.face.astype(np.float64).mean(axis=0) if len(self.face) else None

    @cached_property
    def voice_centroid(self) -> np.ndarray | None:
        return _unit(self.voice.astype(np.float64).mean(axis=0)) if len(self.voice) else None


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


@dataclass(frozen=True)
class VerificationTerm:
    raw: float  # distance to the enrolled reference
    tnorm: float  # the same relative to the cohort


def _tnorm(raw: float, cohort: np.ndarray) -> float:
    return float((raw - cohort.mean()) / max(float(cohort.std()), 1e-4))


def face_term(window: Window, refs: IdentityReferences, cohort: np.ndarray, min_faces: int = 2,
              ) -> VerificationTerm | None:
    """Mean L2 distance of the window's face descriptors to the references' mean, and its
    T-norm against the cohort's means (C, 128). None: fewer than ``min_faces`` faces."""
    centre = refs.face_centroid
    if centre is None or len(window.face_ids) < max(min_faces, 1):
        return None
    x = window.face_ids.astype(np.float64)
    raw = float(np.linalg.norm(x - centre, axis=1).mean())
    others = np.linalg.norm(x[:, None, :] - cohort.astype(np.float64)[None], axis=2).mean(axis=0)  # (C,)
    return VerificationTerm(raw, _tnorm(raw, others))


def voice_term(window: Window, refs: IdentityReferences, cohort: np.ndarray) -> VerificationTerm | None:
    """Cosine distance of the window's voice embedding to the enrolled voice, and its T-norm
    against the cohort's voices (C, 256). None: too little speech, or no voice enrolled."""
    centre = refs.voice_centroid
    if centre is None or not window.has_voice_id:
        return None
    assert window.voice_id is not None
    v = _unit(window.voice_id.astype(np.float64))
    raw = 1.0 - float(v @ centre)
    c = cohort.astype(np.float64)
    others = 1.0 - (c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)) @ v
    return VerificationTerm(raw, _tnorm(raw, others))


def appearance_term(window: Window, refs: IdentityReferences, score: AppearanceScore,
                    min_faces: int = 2) -> float | None:
    """The mean over the window's faces of the appearance score against the enrolled
    references (DiffFake's pair model: each face's mean negative log-likelihood over the
    references; the head: each face's logit). None: fewer than ``min_faces`` faces with an
    appearance embedding, no appearance enrolled, or embeddings of another size."""
    x, r = window.appearance, refs.appearance
    if len(r) == 0 or x.shape[1] == 0 or len(x) < max(min_faces, 1) or x.shape[1] != r.shape[1] \
            or r.shape[1] != score.dim:
        return None
    return float(score.distance(r, x).mean())


class TermStats(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    mean: float
    sd: float = Field(gt=0)


class DecisionSpec(BaseModel):
    """How the terms become one distance; stored as JSON in the decision file's header."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_model_sha256: str = Field(description="The EXAM checkpoint the motion statistics were measured with.")
    motion_cohort: int = Field(ge=2, description="Nearest training-identity token sets the identity term is "
                               "T-normalised against.")
    min_faces: int = Field(2, ge=1, description="Face descriptors a window needs for a face term.")
    rule: Literal["max", "mean", "channels"] = Field(description="How the standardised terms are combined.")
    channels: list[list[Term]] = Field(
        default_factory=lambda: [list(c) for c in STARTER_CHANNELS],
        description="For rule 'channels': groups of terms; the fused distance is the largest group mean.")
    terms: dict[Term, TermStats] = Field(description="The fused terms and their genuine cross-recording "
                                         "mean and spread (validation).")
    genuine_mean: float = Field(description="Fused distance on genuine cross-recording validation windows.")
    genuine_std: float = Field(gt=0, description="Its spread.")
    smoothing_sd_ratio: list[float] = Field(description="sd(mean of n consecutive windows) / sd(one), n = 1, 2, ...")
    cohort_identities: list[str] = Field(description="Corpus identities whose face and voice form the cohort.")
    appearance_sha256: str | None = Field(
        None, description="With the appearance term: the appearance weights (features.appearance_model) its "
        "embeddings must come from; the file holds the score's tensors (pair model or head).")
    appearance_score: ScoreKind = Field(
        "pair", description="With the appearance term: pair (DiffFake's pair model), head (the network's "
        "real-vs-blended logit) or head_centred (less the enrolled faces' mean logit).")
    evidence: dict[Term, tuple[float, float]] = Field(
        default_factory=dict, description="Per term, the slope (> 0) and intercept of its attack-vs-genuine "
        "log-likelihood ratio in its standardised value; the driver is the term with the largest. Empty: the "
        "term with the largest standardised value.")
    validation: dict[str, object] = Field(default_factory=dict, description="What the choice was measured on.")

    @model_validator(mode="after")
    def _evidence_covers_the_terms(self) -> DecisionSpec:
        if self.evidence and set(self.evidence) != set(self.terms):
            raise ValueError(f"evidence must cover the terms {sorted(self.terms)}, not {sorted(self.evidence)}")
        if any(not (a > 0 and np.isfinite(a) and np.isfinite(b)) for a, b in self.evidence.values()):
            raise ValueError("evidence slopes must be finite and > 0, intercepts finite")
        return self


@dataclass(frozen=True)
class Fused:
    distance: float
    z: dict[str, float]  # each used term, standardised
    driver: str  # the term with the most evidence (DecisionSpec.evidence), else the largest standardised one


@dataclass(frozen=True)
class Decision:
    spec: DecisionSpec
    face_cohort: np.ndarray = field(repr=False)  # (C, 128) descriptor means of cohort identities
    voice_cohort: np.ndarray = field(repr=False)  # (C, 256) unit voice means
    path: Path | None = None
    sha256: str = ""
    appearance: AppearanceScore | None = None  # the appearance term's score (spec.appearance_score)

    def __post_init__(self) -> None:
        if ("appearance" in self.spec.terms) != (self.appearance is not None) or \
                (self.appearance is not None) != (self.spec.appearance_sha256 is not None):
            raise ValueError("a decision with the appearance term needs its score and appearance_sha256")
        if self.spec.evidence and set(self.spec.evidence) != set(self.spec.terms):  # a spec copied, not validated
            raise ValueError("the decision's evidence lines must cover its terms")
        if self.appearance is not None and self.appearance.kind != self.spec.appearance_score:
            raise ValueError(f"the decision's appearance score is {self.appearance.kind}, its spec says "
                             f"{self.spec.appearance_score}")

    def fuse(self, values: Mapping[str, float | None]) -> Fused:
        """Standardise the available terms, combine them by the rule; a missing term (None) is
        left out. Deterministic: the same values give the same distance."""
        z: dict[str, float] = {k: (v - st.mean) / st.sd for k, st in self.spec.terms.items()
             if (v := values.get(k)) is not None and np.isfinite(v)}
        return self.combine(z)

    def combine(self, z: Mapping[str, float]) -> Fused:
        """The rule on already standardised terms (``Fused.z``; a subset of them: what the
        decision says without a term)."""
        z = dict(z)
        if not z:
            raise ValueError("no term to fuse")
        if self.spec.rule == "channels":
            groups: list[list[str]] = [[t for t in c if t in z] for c in self.spec.channels]
            means = [(float(np.mean([z[t] for t in g])), g) for g in groups if g]
            if not means:  # no channel holds a fused term: the terms themselves
                means = [(float(np.mean(list(z.values()))), [*z])]
            dist, deciding = max(means, key=lambda m: m[0])
            return Fused(dist, z, self._driver(z, deciding))
        dist = max(z.values()) if self.spec.rule == "max" else float(np.mean(list(z.values())))
        return Fused(float(dist), z, self._driver(z, z))

    def evidence(self, z: Mapping[str, float]) -> dict[str, float]:
        """Each standardised term's log-likelihood ratio, attack against genuine (empty: the
        decision holds no evidence lines)."""
        ev = self.spec.evidence
        return {k: ev[k][0] * v + ev[k][1] for k, v in z.items() if k in ev}  # type: ignore[index]

    def _driver(self, z: Mapping[str, float], among: Iterable[str]) -> str:
        weight = self.evidence(z) if self.spec.evidence else z
        return max(among, key=lambda k: (weight[k], k))

    def fuse_terms(self, identity_tnorm: float | None, sync: float | None, fit: float | None, fit_centre: float,
                   face: float | None, voice: float | None, appearance: float | None = None) -> Fused:
        """fuse() on a Score's terms, the fit term relative to the profile's own fit mean."""
        return self.fuse({"identity": identity_tnorm, "sync": sync,
                          "fit": None if fit is None else fit - fit_centre, "face": face, "voice": voice,
                          "appearance": appearance})

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        tensors = {"face_cohort": self.face_cohort.astype(np.float32),
                   "voice_cohort": self.voice_cohort.astype(np.float32)}
        if self.appearance is not None:
            tensors |= self.appearance.tensors()
        save_file(tensors, str(path), metadata={"format": DECISION_FORMAT, "spec": self.spec.model_dump_json()})


def load_decision(path: Path) -> Decision:
    """Read a decision file; any problem is one ModelFileError line."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"decision file not found: {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
            if header.get("format") != DECISION_FORMAT:
                raise ModelFileError(f"{path}: not a decision file (format {header.get('format')!r})")
            spec = DecisionSpec.model_validate(json.loads(header["spec"]))
            face, voice = f.get_tensor("face_cohort"), f.get_tensor("voice_cohort")
            score_tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith(("pair.", "head."))}  # noqa: SIM118
    except ModelFileError:
        raise
    except ValidationError as err:
        first = err.errors()[0]
        raise ModelFileError(f"{path}: invalid spec.{'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    except Exception as err:
        raise ModelFileError(f"{path}: unreadable decision file ({str(err).splitlines()[0]})") from None
    if face.ndim != 2 or voice.ndim != 2 or len(face) < 2 or len(voice) < 2:
        raise ModelFileError(f"{path}: cohorts must be (C >= 2, D), got {face.shape} and {voice.shape}")
    try:
        score = (appearance_score(spec.appearance_score, score_tensors) if spec.appearance_sha256 is not None
                 else None)
        return Decision(spec, face, voice, path, sha256_file(path), score)
    except ValueError as err:
        raise ModelFileError(f"{path}: {err}") from None


def appearance_digest(features: FeatureConfig | None) -> str | None:
    """The sha256 of the appearance weights ``features`` compute embeddings with (None: off)."""
    if features is None:
        return None
    from expose.monitor.features.identity import appearance_weights

    weights = appearance_weights(features)
    return None if weights is None else sha256_file(weights)


def check_appearance(decision: Decision | None, features: FeatureConfig, weights_sha256: str | None = None) -> None:
    """A decision with the appearance term needs the appearance embeddings on, from the weights
    it was fitted with (the score's tensors are in the decision): ConfigError (one line) if not.
    ``weights_sha256``: appearance_digest(features), when the caller has it already."""
    if decision is None or decision.spec.appearance_sha256 is None:
        return
    from expose.monitor.features.identity import appearance_weights

    weights = appearance_weights(features)
    want = decision.spec.appearance_sha256
    if weights is None:
        raise ConfigError(f"the decision {decision.path} has the appearance term: set features.appearance_model "
                          f"(auto, or the weights with sha256 {want[:12]})")
    if (weights_sha256 or sha256_file(weights)) != want:
        raise ConfigError(f"the decision {decision.path} was fitted with appearance weights {want[:12]}, "
                          f"not {weights} (features.appearance_model)")


def resolve_decision(setting: str | Path, model_sha256: str, appearance_sha256: str | None = None) -> Decision | None:
    """``auto``: the shipped decision if it was made for this model, else None; with
    ``appearance_sha256`` (the sha256 of the appearance weights the features compute) equal to
    the weights the shipped appearance decision was fitted with, that one instead (other weights:
    the decision without the term, which never reads them). ``none``: None; a path: that
    decision, which must have been made for this model."""
    if str(setting) == "none":
        return None
    if str(setting) == "auto":
        for path in (STARTER_APPEARANCE_DECISION, STARTER_DECISION):
            if not path.is_file():
                continue
            d = load_decision(path)
            if d.spec.appearance_sha256 not in (None, appearance_sha256):
                continue
            return d if d.spec.base_model_sha256 == model_sha256 else None
        return None
    d = load_decision(Path(setting))
    if d.spec.base_model_sha256 != model_sha256:
        raise ModelFileError(f"{setting}: decision made for model {d.spec.base_model_sha256[:12]}, "
                             f"not for the loaded model {model_sha256[:12]}")
    return d
