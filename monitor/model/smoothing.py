"""How much averaging consecutive window scores shrinks their spread.

The live AlertPolicy compares the mean distance of the last n windows (1 s hop) with a
threshold; windows overlap and content drifts slowly, so n windows are worth fewer than
n independent draws. The ratio sd(mean of n) / sd(one window) sets that threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MAX_SMOOTHING = 16


def overlap_sd_ratios(window: int, hop: int, n_max: int = MAX_SMOOTHING) -> list[float]:
    """Ratios if the correlation of two windows were their overlap fraction (a lower bound:
    real scores also drift with content and pose)."""
    rho = [max(0.0, 1 - k * hop / window) for k in range(n_max)]
    out = []
    for n in range(1, n_max + 1):
        var = sum(rho[abs(i - j)] for i in range(n) for j in range(n)) / n**2
        out.append(float(np.sqrt(var)))
    return out


def empirical_sd_ratios(series: Sequence[np.ndarray], n_max: int = MAX_SMOOTHING, min_points: int = 40,
                        ) -> list[float] | None:
    """Ratios measured on distance series of genuine recordings (one window per hop each).
    Each series is centred on its own mean so that level differences between recordings do
    not count as spread; for a given n only series of at least 3n points count, since
    centring a short series hides its drift. None when there is too little data for some n."""
    centred = [np.asarray(s, np.float64) - np.mean(s) for s in series if len(s) >= 2]
    if not centred:
        return None
    sd1 = float(np.sqrt(np.mean(np.concatenate(centred) ** 2)))
    if sd1 <= 0:
        return None
    out = []
    for n in range(1, n_max + 1):
        means = [np.convolve(s, np.ones(n) / n, mode="valid") for s in centred if len(s) >= 3 * n]
        pts = np.concatenate(means) if means else np.zeros(0)
        if len(pts) < min_points:
            return None
        out.append(float(np.sqrt(np.mean(pts**2)) / sd1))
    return out
