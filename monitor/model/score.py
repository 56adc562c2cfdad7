"""Score: what the scorer says about one window (the pipeline's fourth value type).

Kept apart from the scorer so that the alert policy, the store and the exporters can use it
without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Status = Literal["scored", "insufficient"]


@dataclass(frozen=True)
class ScoreSettings:
    times: tuple[float, ...] = (0.3, 0.5, 0.7)
    draws: int = 4
    seed: int = 1234
    audio_shift_s: float = 1.0  # the "out of sync" branch hears the audio this much later
    cohort_draws: int = 1  # noise draws (of ``draws``, at every time) the cohort branches are run on
    min_face: float = 0.6
    min_speech: float = 0.2
    w_identity: float = 1.0
    w_sync: float = 1.0
    w_fit: float = 0.0


@dataclass(frozen=True)
class Score:
    stream: str
    profile: str
    t0: float
    t1: float
    status: Status
    face_ratio: float
    speech_ratio: float
    distance: float | None = None
    identity: float | None = None
    sync: float | None = None
    fit: float | None = None
    identity_mouth: float | None = None  # the identity term on mouth/jaw channels only (diagnostic)
    # the identity term T-normalised against a cohort of other identities' tokens (None: no
    # cohort asked for): (identity - mean over the cohort) / their spread
    identity_tnorm: float | None = None
    err_subject: float | None = None
    err_null: float | None = None
    reason: str = ""
    # Face and voice verification (model/verification.py): T-normalised distances to the
    # enrolled references, and the raw ones; None: not enough faces / speech in the window
    face: float | None = None
    voice: float | None = None
    face_raw: float | None = None
    voice_raw: float | None = None
    # DiffFake's appearance term (model/verification.appearance_term) by the decision's score
    # (pair NLL or the head's logit); None: off, no appearance enrolled, or too few faces
    appearance: float | None = None
    # With a decision (model/verification.py): each fused term standardised on genuine
    # cross-recording validation windows, and the one the explanation names (Fused.driver)
    terms: dict[str, float] = field(default_factory=dict)
    driver: str | None = None

    def __post_init__(self) -> None:
        if self.status == "scored" and self.distance is None:
            raise ValueError("a scored window needs a distance")
        if self.status == "insufficient" and self.distance is not None:
            raise ValueError("an insufficient window must not carry a distance")

    @property
    def explanation(self) -> str:
        """The driver, in an analyst's words ("" when not scored or no decision)."""
        from expose.monitor.model.verification import explain  # torch-free, but imports features

        return explain(self.driver) if self.status == "scored" else ""


class FusionWeights(BaseModel):
    """How the score's terms are fused, as chosen on validation windows at the end of
    training (model/fusion.py) and stored in the checkpoint's ``score_weights``.

    Read in one place (``LoadedModel.weights``); a checkpoint without it (an untrained or
    older model) gets the defaults: identity + sync, no fit term, no spread floor, and the
    smoothing ratios that window overlap alone implies.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    identity: float = Field(1.0, description="Weight of the identity term.")
    sync: float = Field(1.0, description="Weight of the sync term.")
    fit: float = Field(0.0, description="Weight of the fit term.")
    genuine_std: float | None = Field(None, gt=0, description="Spread of the fused distance on genuine "
                                      "validation windows, per-profile terms centred per identity: the "
                                      "floor of every profile's spread and the unit of normalised distances.")
    genuine_std_uncentred: float | None = Field(None, description="The same spread without centring (reported).")
    n_windows: int | None = Field(None, description="Validation windows the weights were chosen on.")
    val_worst_auc: float | None = Field(None, description="Worst validation AUC over the families chosen on.")
    val_auc: dict[str, float] = Field(default_factory=dict, description="Validation AUC per attack family.")
    identity_sd: float | None = Field(None, description="Genuine spread of the identity term.")
    sync_sd: float | None = Field(None, description="Genuine spread of the sync term.")
    fit_sd: float | None = Field(None, description="Genuine spread of the fit term.")
    smoothing_sd_ratio: list[float] | None = Field(
        None, description="sd(mean of n consecutive windows) / sd(one window), n = 1, 2, ... (model/smoothing.py).")

    def settings(self) -> ScoreSettings:
        """Scorer settings with these weights (the other fields at their defaults)."""
        return ScoreSettings(w_identity=self.identity, w_sync=self.sync, w_fit=self.fit)
