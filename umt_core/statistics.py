"""Intervals that respect how the figures were sampled.

- A rate (share of clips that pass, share of correct answers) gets a Wilson interval.
- A mean over clips gets a bootstrap interval over *works* (clips of one work are not
  independent draws: they share the notes), `bootstrap_mean`.
- A mean over listening-test answers gets a bootstrap over participants *and* stimuli
  at once (`bootstrap_crossed`): each resample draws participants and stimuli with
  replacement and weighs every answer by how often both were drawn, so neither a
  generous listener nor an easy clip counts as many independent observations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (NaN when n = 0)."""
    from scipy.stats import binomtest

    if n == 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k={k} must lie in 0..n={n}")
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def rate(passed: Sequence[bool], confidence: float = 0.95) -> dict[str, float]:
    """{"rate", "k", "n", "ci_low", "ci_high"} of yes/no outcomes (missing ones dropped)."""
    x = [bool(v) for v in passed if v is not None and not (isinstance(v, float) and np.isnan(v))]
    k, n = int(sum(x)), len(x)
    lo, hi = wilson_interval(k, n, confidence)
    return {"rate": k / n if n else float("nan"), "k": k, "n": n, "ci_low": lo, "ci_high": hi}


def bootstrap_mean(values: Sequence[float], groups: Sequence[str], *, n_boot: int = 2000,
                   confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean of `values` with a percentile bootstrap interval that resamples whole
    `groups` (e.g. works) with replacement. NaN values are dropped. With one group the
    interval is NaN: one work says nothing about the spread between works."""
    v = np.asarray(values, dtype=float)
    g = np.asarray(groups)
    if v.shape != g.shape:
        raise ValueError(f"bootstrap_mean: {v.shape[0]} values but {g.shape[0]} group labels")
    keep = np.isfinite(v)
    v, g = v[keep], g[keep]
    out = {"mean": float(v.mean()) if v.size else float("nan"), "n": int(v.size),
           "groups": len(set(g.tolist())), "ci_low": float("nan"), "ci_high": float("nan")}
    if out["groups"] < 2:
        return out
    names, idx = np.unique(g, return_inverse=True)
    sums = np.bincount(idx, weights=v, minlength=len(names))
    counts = np.bincount(idx, minlength=len(names)).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(names), np.full(len(names), 1 / len(names)), size=n_boot)
    means = (draws @ sums) / (draws @ counts)
    alpha = (1 - confidence) / 2
    out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(means, [alpha, 1 - alpha]))
    return out


def bootstrap_crossed(values: Sequence[float], rows: Sequence[str], cols: Sequence[str], *,
                      n_boot: int = 2000, confidence: float = 0.95,
                      seed: int = 0) -> dict[str, float]:
    """Mean of `values` with a percentile interval from a two-way bootstrap: `rows`
    (e.g. participants) and `cols` (e.g. stimuli) are resampled independently, and each
    value weighs (times its row was drawn) x (times its column was drawn)."""
    v = np.asarray(values, dtype=float)
    r, c = np.asarray(rows), np.asarray(cols)
    if not v.shape == r.shape == c.shape:
        raise ValueError("bootstrap_crossed: values, rows and cols must have the same length")
    keep = np.isfinite(v)
    v, r, c = v[keep], r[keep], c[keep]
    out = {"mean": float(v.mean()) if v.size else float("nan"), "n": int(v.size),
           "rows": len(set(r.tolist())), "cols": len(set(c.tolist())),
           "ci_low": float("nan"), "ci_high": float("nan")}
    if v.size < 2:
        return out
    rn, ri = np.unique(r, return_inverse=True)
    cn, ci = np.unique(c, return_inverse=True)
    rng = np.random.default_rng(seed)
    wr = rng.multinomial(len(rn), np.full(len(rn), 1 / len(rn)), size=n_boot)[:, ri]
    wc = rng.multinomial(len(cn), np.full(len(cn), 1 / len(cn)), size=n_boot)[:, ci]
    w = (wr * wc).astype(float)
    total = w.sum(axis=1)
    ok = total > 0  # a draw can miss every answered (row, column) pair
    means = (w[ok] @ v) / total[ok]
    alpha = (1 - confidence) / 2
    if means.size:
        out["ci_low"], out["ci_high"] = (float(q) for q in np.quantile(means, [alpha, 1 - alpha]))
    return out


def interval(values: np.ndarray, binary: bool,
             groups: np.ndarray | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of `values` (NaN dropped) with its 95% interval
    Wilson for a yes/no figure, else a bootstrap over `groups`
    (default: every value its own group)."""
    v = np.asarray(values, dtype=float)
    if binary:
        r = rate(v.tolist())
        return r["rate"], r["ci_low"], r["ci_high"]
    g = np.arange(len(v)).astype(str) if groups is None else np.asarray(groups)
    b = bootstrap_mean(v, g)
    return b["mean"], b["ci_low"], b["ci_high"]


def compare_figures(a: dict[str, tuple[float, float, float]],
                    b: dict[str, tuple[float, float, float]]) -> dict[str, bool]:
    """Per figure: do the two runs' 95% intervals overlap?"""
    out = {}
    for k, (ma, la, ha) in a.items():
        mb, lb, hb = b[k]
        if math.isnan(ma) and math.isnan(mb):
            out[k] = True  # neither run has the figure
            continue
        out[k] = bool(la <= hb and lb <= ha)  # False too where an interval is missing (NaN)
    return out
