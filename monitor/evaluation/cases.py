"""The CASES.csv format of `expose eval` and the report it produces."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from expose.monitor.errors import ExposeError
from expose.monitor.metrics import eer, roc_auc, tpr_at_fpr


@dataclass(frozen=True)
class Case:
    path: Path
    claimed: str
    label: str  # "real" or "fake" / "fake:<method>"

    @property
    def is_fake(self) -> bool:
        return self.label != "real"

    @property
    def method(self) -> str:
        return self.label.split(":", 1)[1] if ":" in self.label else ("fake" if self.is_fake else "real")


def read_cases(path: Path) -> list[Case]:
    if not Path(path).is_file():
        raise ExposeError(f"{path}: no such cases file")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"path", "claimed", "label"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ExposeError(f"{path}: needs the columns path,claimed,label")
        for i, row in enumerate(reader, start=2):
            label = row["label"].strip()
            if label != "real" and not (label == "fake" or label.startswith("fake:")):
                raise ExposeError(f"{path}:{i}: label must be real, fake or fake:<method>, got {label!r}")
            p = Path(row["path"].strip())
            if not p.is_absolute() and not p.exists():  # relative to the CSV's folder, else to the cwd
                p = Path(path).parent / p
            out.append(Case(p, row["claimed"].strip(), label))
    if not out:
        raise ExposeError(f"{path}: no cases")
    return out


def _metrics(clips: list[dict]) -> dict[str, Any]:
    scored = [c for c in clips if c["score"] is not None]
    y = np.array([c["label"] != "real" for c in scored], dtype=bool)
    s = np.array([c["score"] for c in scored], dtype=np.float64)
    both = y.any() and (~y).any()
    return {
        "auc": roc_auc(y, s) if both else None,
        "eer": eer(y, s) if both else None,
        "tpr_at_1pct_fpr": tpr_at_fpr(y, s, 0.01) if both else None,
        "n": len(scored),
    }


def summarize(clips: list[dict]) -> dict[str, Any]:
    """Overall, per-claimed and per-method metrics (each method against all real clips)."""
    overall = _metrics(clips)
    reals = [c for c in clips if c["label"] == "real"]
    methods = sorted({c["label"].split(":", 1)[1] if ":" in c["label"] else "fake"
                      for c in clips if c["label"] != "real"})
    by_method = {m: _metrics(reals + [c for c in clips if c["label"] in (f"fake:{m}",) or
                                      (m == "fake" and c["label"] == "fake")]) for m in methods}
    by_claimed = {n: _metrics([c for c in clips if c["claimed"] == n]) for n in sorted({c["claimed"] for c in clips})}
    scored = [c for c in clips if c["score"] is not None]
    return {
        **{k: overall[k] for k in ("auc", "eer", "tpr_at_1pct_fpr")},
        "aggregation": "clip score = mean over scored 2.56 s windows (1 s hop) of the identity distance "
                       "normalised by the claimed profile's genuine calibration (z-score); higher = more likely fake",
        "n_scored": len(scored),
        "n_real": sum(c["label"] == "real" for c in scored),
        "n_fake": sum(c["label"] != "real" for c in scored),
        "n_unscored": len(clips) - len(scored),
        "by_claimed": by_claimed,
        "by_method": by_method,
        "clips": clips,
    }
