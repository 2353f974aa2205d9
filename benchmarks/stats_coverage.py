"""Coverage of thrlab.core.stats.paired_difference at the testbed's design, by simulation.

    python benchmarks/stats_coverage.py [--sims 1000] [--seeds 5] [--problems 500]

Simulates studies shaped like the testbed's: two methods trained with the same S seeds and
graded 0/1 on the same N problems. Problem n has a difficulty logit ~ N(0, 1.5); each run adds a
training-seed shift ~ N(0, sd_seed) (the part of training randomness that moves every problem of
a run together), method B adds `effect` to the logit. The true difference is the expectation of
p_B - p_A over seeds and problems (computed by Monte Carlo once). For each sd_seed it prints how
often the 95% interval holds the true difference: paired_difference's, and the interval from
problem resampling alone (per-problem means over seeds, normal approximation) that ignores the
seed term; then the power of the design at a true difference equal to its minimum detectable
effect (should be ~0.80). The last line is JSON.
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def simulate(rng, S, N, effect, sd_seed):
    """Scores a, b of shape (S, N) (0/1) of one simulated study."""
    logit = rng.normal(0, 1.5, N)[None, :]  # (1, N)
    pa = 1 / (1 + np.exp(-(logit + rng.normal(0, sd_seed, (S, 1)))))
    pb = 1 / (1 + np.exp(-(logit + rng.normal(0, sd_seed, (S, 1)) + effect)))
    return (rng.random((S, N)) < pa).astype(float), (rng.random((S, N)) < pb).astype(float)


def true_difference(effect, sd_seed, n=2_000_000, seed=1):
    rng = np.random.default_rng(seed)
    logit = rng.normal(0, 1.5, n)
    pa = 1 / (1 + np.exp(-(logit + rng.normal(0, sd_seed, n))))
    pb = 1 / (1 + np.exp(-(logit + rng.normal(0, sd_seed, n) + effect)))
    return float((pb - pa).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--effect", type=float, default=0.1, help="logit shift of method B")
    args = ap.parse_args()

    from thrlab.core.stats import minimum_detectable_effect, paired_difference, variance_components

    S, N, rows = args.seeds, args.problems, []
    rng = np.random.default_rng(0)
    for sd_seed in (0.0, 0.1, 0.2):
        mu = true_difference(args.effect, sd_seed)
        hits = naive = 0
        comps = []
        for _ in range(args.sims):
            a, b = simulate(rng, S, N, args.effect, sd_seed)
            r = paired_difference(a, b)
            hits += r["ci_low"] <= mu <= r["ci_high"]
            dn = (b - a).mean(0)
            naive += abs(dn.mean() - mu) <= 1.96 * dn.std(ddof=1) / np.sqrt(N)
            comps.append(variance_components(b - a))
        mean_comps = {k: float(np.mean([c[k] for c in comps])) for k in ("seed", "problem",
                                                                          "resid")}
        mde = minimum_detectable_effect(mean_comps, S, N)
        # power at the MDE: shift the logit until the true difference equals the MDE
        lo, hi = 0.0, 3.0
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if true_difference(mid, sd_seed, n=200_000) < mde else (lo, mid)
        rejected = 0
        for _ in range(args.sims):
            r = paired_difference(*simulate(rng, S, N, (lo + hi) / 2, sd_seed))
            rejected += r["ci_low"] > 0 or r["ci_high"] < 0
        rows.append({"sd_seed": sd_seed, "true_diff": mu, "coverage": hits / args.sims,
                     "coverage_problems_only": naive / args.sims, "mde": mde,
                     "power_at_mde": rejected / args.sims, **{f"var_{k}": v for k, v in
                                                              mean_comps.items()}})
    print(f"{args.sims} simulated studies of {S} seeds x {N} problems (0/1 scores) per row")
    print("| seed sd (logit) | true diff | coverage, paired_difference | coverage, problems only "
          "| MDE (80% power) | power at the MDE |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['sd_seed']:.1f} | {r['true_diff']:.4f} | {r['coverage']:.3f} | "
              f"{r['coverage_problems_only']:.3f} | {r['mde']:.4f} | {r['power_at_mde']:.3f} |")
    print(json.dumps({"seeds": S, "problems": N, "sims": args.sims, "rows": rows}))


if __name__ == "__main__":
    main()
