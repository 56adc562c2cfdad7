"""The spread of a mean of consecutive window scores: the numbers the live threshold uses."""

from __future__ import annotations

import numpy as np
import pytest

from expose.monitor.model.smoothing import empirical_sd_ratios, overlap_sd_ratios


def test_overlap_bound_is_one_over_sqrt_n_without_overlap_and_higher_with_it() -> None:
    apart = overlap_sd_ratios(window=25, hop=25, n_max=9)
    assert apart == pytest.approx([1 / np.sqrt(n) for n in range(1, 10)])
    overlapping = overlap_sd_ratios(window=64, hop=25, n_max=9)
    assert overlapping[0] == 1.0
    assert all(a > b for a, b in zip(overlapping, overlapping[1:], strict=False))  # still shrinks
    assert all(o > a for o, a in zip(overlapping[1:], apart[1:], strict=True))  # but less


def test_empirical_ratios_see_correlation() -> None:
    rng = np.random.default_rng(0)
    iid = [rng.normal(size=200) for _ in range(10)]
    r = empirical_sd_ratios(iid, n_max=8)
    assert r is not None and r[3] == pytest.approx(0.5, abs=0.06)  # 1/sqrt(4)
    ar = []
    for _ in range(10):  # AR(1), rho 0.8: neighbours carry the same information
        x = np.zeros(200)
        for i in range(1, 200):
            x[i] = 0.8 * x[i - 1] + rng.normal()
        ar.append(x)
    r_ar = empirical_sd_ratios(ar, n_max=8)
    assert r_ar is not None and r_ar[3] > 0.8


def test_empirical_ratios_need_enough_data() -> None:
    assert empirical_sd_ratios([np.arange(10.0)], n_max=8) is None
    assert empirical_sd_ratios([], n_max=4) is None
