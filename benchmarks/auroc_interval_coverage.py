"""How often does a board's AUROC interval hold the true AUROC? A simulation at the class sizes boards have.

    .venv/bin/python benchmarks/auroc_interval_coverage.py [--sims 1000]

Scores of m trojaned and n clean models are drawn from two known distributions whose true AUROC θ is set (binormal:
clean N(0, 1), trojaned N(δ, 1) with δ = √2 Φ⁻¹(θ); and a skewed pair: exponential scores with rates giving θ),
each interval method is computed on every draw, and its coverage (share of draws whose interval holds θ), mean
width and share of zero-width intervals are stored for each (m, n, θ, shape). Methods:

- `stratified bootstrap`: the percentile interval boards used up to now (`stats.bootstrap_auroc`, 2000 resamples
  stratified by class);
- `score`: the score-type interval with Newcombe's (2006) variance (`stats.score_auroc_interval`).

Writes benchmarks/results/auroc_interval_coverage.json. A draw's coverage is a proportion of `--sims` draws: its
Monte Carlo standard error at 0.95 is about 0.007 at 1000 draws.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.stats import norm

SIZES = [(5, 5), (7, 8), (8, 8), (16, 16), (32, 32)]
THETAS = [0.5, 0.7, 0.85, 0.95, 0.99]
SHAPES = ["binormal", "exponential"]


def draw(shape: str, theta: float, m: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Labels (m ones, n zeros) and scores whose population AUROC is exactly theta."""
    labels = np.r_[np.ones(m, bool), np.zeros(n, bool)]
    if shape == "binormal":
        delta = math.sqrt(2) * norm.ppf(theta)
        scores = np.r_[rng.normal(delta, 1, m), rng.normal(0, 1, n)]
    else:  # P(X_pos > X_neg) for X_pos ~ Exp(rate a), X_neg ~ Exp(rate 1) is 1 / (1 + a): a = 1/θ − 1
        a = 1 / theta - 1
        scores = np.r_[rng.exponential(1 / a, m), rng.exponential(1, n)]
    return labels, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=1000, help="draws per cell")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.sims < 1:
        ap.error("--sims must be at least 1")
    from tqdm import tqdm

    from trojanbench.results.provenance import write_benchmark
    from trojanbench.results.stats import N_BOOT, bootstrap_auroc, score_auroc_interval

    started = time.time()
    rng = np.random.default_rng(args.seed)
    cells = []
    grid = [(shape, m, n, theta) for shape in SHAPES for m, n in SIZES for theta in THETAS]
    for shape, m, n, theta in tqdm(grid, desc="cells"):
        found = {"stratified bootstrap": [], "score": []}
        for i in range(args.sims):
            labels, scores = draw(shape, theta, m, n, rng)
            est = bootstrap_auroc(labels, scores, seed=i)
            found["stratified bootstrap"].append((est.low, est.high))
            found["score"].append(score_auroc_interval(est.value, m, n))
        row = {"shape": shape, "m": m, "n": n, "theta": theta}
        for method, ci in found.items():
            ci = np.asarray(ci)
            width = ci[:, 1] - ci[:, 0]
            row[method] = {"coverage": round(float(((ci[:, 0] <= theta) & (theta <= ci[:, 1])).mean()), 4),
                           "mean_width": round(float(width.mean()), 4),
                           "zero_width": round(float((width == 0).mean()), 4)}
        cells.append(row)
    summary = {}
    for method in ("stratified bootstrap", "score"):
        cov = np.array([c[method]["coverage"] for c in cells])
        summary[method] = {"mean_coverage": round(float(cov.mean()), 4), "min_coverage": round(float(cov.min()), 4),
                           "cells_below_0.93": int((cov < 0.93).sum()), "cells": len(cov)}
    write_benchmark("auroc_interval_coverage", {"level": 0.95, "sims_per_cell": args.sims, "n_boot": N_BOOT,
                                                "summary": summary, "cells": cells},
                    config=vars(args), seed=args.seed, started=started)
    for method, s in summary.items():
        print(f"{method:22s} mean coverage {s['mean_coverage']:.3f}  min {s['min_coverage']:.3f}  "
              f"cells below 0.93: {s['cells_below_0.93']}/{s['cells']}")


if __name__ == "__main__":
    from trojanbench.errors import script_main

    script_main(main)
