"""Intervals: Wilson for rates, bootstrap over works, crossed bootstrap over
participants and stimuli."""

from __future__ import annotations

import math

import numpy as np
import pytest

from umt_core import statistics as st


def wilson(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def test_wilson_interval_matches_the_formula_and_the_reported_case():
    assert st.wilson_interval(3, 4) == pytest.approx(wilson(3, 4))
    lo, hi = st.wilson_interval(1, 16)  # 1 success of 16 clips
    assert (round(lo, 2), round(hi, 2)) == (0.01, 0.28)
    r = st.rate([True, False, None, True, float("nan")])
    assert (r["k"], r["n"], r["rate"]) == (2, 3, pytest.approx(2 / 3))
    assert all(math.isnan(v) for v in st.wilson_interval(0, 0))
    with pytest.raises(ValueError, match="k=5"):
        st.wilson_interval(5, 4)


def test_bootstrap_over_works_is_wider_when_clips_of_a_work_agree():
    rng = np.random.default_rng(0)
    works = np.repeat([f"w{i}" for i in range(8)], 4)
    work_effect = np.repeat(rng.normal(0, 1, 8), 4)
    values = work_effect + rng.normal(0, 0.05, 32)  # clips of one work nearly equal
    clustered = st.bootstrap_mean(values, works, seed=1)
    naive = st.bootstrap_mean(values, [f"c{i}" for i in range(32)], seed=1)  # every clip its own
    assert clustered["groups"] == 8 and naive["groups"] == 32
    assert clustered["ci_low"] < clustered["mean"] < clustered["ci_high"]
    width = lambda r: r["ci_high"] - r["ci_low"]
    assert width(clustered) > 1.5 * width(naive)
    one = st.bootstrap_mean([1.0, 2.0], ["w", "w"])
    assert one["mean"] == 1.5 and math.isnan(one["ci_low"])
    with pytest.raises(ValueError, match="3 values but 2"):
        st.bootstrap_mean([1, 2, 3], ["a", "b"])


def test_crossed_bootstrap_counts_a_harsh_listener_once():
    # 4 participants x 6 stimuli; one participant rates everything 1, the others 4-5.
    rows, cols, vals = [], [], []
    rng = np.random.default_rng(2)
    for p in range(4):
        for s in range(6):
            rows.append(f"p{p}")
            cols.append(f"s{s}")
            vals.append(1.0 if p == 0 else float(rng.integers(4, 6)))
    crossed = st.bootstrap_crossed(vals, rows, cols, seed=0)
    naive = st.bootstrap_mean(vals, [f"a{i}" for i in range(len(vals))], seed=0)
    assert crossed["mean"] == pytest.approx(np.mean(vals))
    assert (crossed["rows"], crossed["cols"], crossed["n"]) == (4, 6, 24)
    assert crossed["ci_high"] - crossed["ci_low"] > 2 * (naive["ci_high"] - naive["ci_low"])
    assert crossed["ci_low"] < 3.0  # a resample can hold the harsh listener twice
