"""The greedy-vs-Pass@K frontier of runs evaluated along their training (frontier_every,
probes.frontier_evaluations): each run's trajectory, its Pass@K at a matched greedy accuracy,
and that paired across seeds against a baseline (docs/method.md section 4.1). An exploration
method has to move the frontier, not slide along it by learning slower.

Reads run folders with pandas only (no torch), like thrlab.study.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .runs import read_json
from .study import seed_differences


def frontier_points(runs: pd.DataFrame, k: int, sets: list[str] | None = None) -> pd.DataFrame:
    """Greedy accuracy and pass@k of each run along its training: eval_before (step 0), every
    eval_step<N>.json (frontier_every) and eval_after (its last step), all on the problems the
    step evaluations hold (the first frontier_limit of each set; every problem without step
    files), so the points of one run are comparable. One row per (method, seed, step)."""
    from .evaluate import pass_at_k

    rows = []
    for r in runs.itertuples():
        d = Path(r.run_dir)
        files = {0: d / "eval_before.json",
                 **{int(p.stem[len("eval_step"):]): p for p in d.glob("eval_step*.json")},
                 int(read_json(d / "config.json")["steps"]): d / "eval_after.json"}
        steps = sorted(files)
        recs = {s: read_json(files[s])["problems"] for s in steps}
        inner = [recs[s] for s in steps[1:-1]] or [recs[steps[-1]]]
        names = list(sets or inner[0])
        size = {n: (len(inner[0][n]["greedy"]), len(inner[0][n]["correct"])) for n in names}
        for s in steps:
            greedy, passk = [], []
            for n in names:
                rec, (ng, nc) = recs[s][n], size[n]
                if rec["ids"][:ng] != inner[0][n]["ids"][:ng]:
                    raise ValueError(f"{files[s]}: other problems than the run's step evaluations")
                greedy += rec["greedy"][:ng]
                passk += [pass_at_k(rec["samples"], c, k) for c in rec["correct"][:nc]]
            rows.append({"method": r.method, "seed": r.seed, "step": s,
                         "greedy_acc": float(np.mean(greedy)), f"pass@{k}": float(np.mean(passk))})
    return pd.DataFrame(rows)


def passk_at_greedy(points: pd.DataFrame, target: float, k: int) -> pd.DataFrame:
    """Per run (method, seed) of frontier_points: its pass@k where its trajectory first reaches
    greedy accuracy `target`, linear between the two evaluations around the crossing (the start's
    value if it starts there; NaN if it never gets there). An exploration method must move the
    frontier: keep more Pass@K at the same greedy accuracy, not merely train less."""
    out = []
    for (method, seed), d in points.groupby(["method", "seed"], sort=False):
        d = d.sort_values("step")
        g, p = d.greedy_acc.to_numpy(), d[f"pass@{k}"].to_numpy()
        value = float("nan")
        for i in np.flatnonzero(g >= target)[:1]:
            w = 0.0 if i == 0 else (target - g[i - 1]) / (g[i] - g[i - 1])
            value = float(p[i] if i == 0 else p[i - 1] + w * (p[i] - p[i - 1]))
        out.append({"method": method, "seed": seed, "target": target, f"pass@{k}": value})
    return pd.DataFrame(out)


def matched_frontier(points: pd.DataFrame, target: float, k: int,
                     baseline: str = "grpo") -> pd.DataFrame:
    """Each method's pass@k at greedy accuracy `target` (passk_at_greedy) minus the baseline's,
    paired by seed over the seeds where both reach the target, with the t-interval over those
    seeds (seeds_difference's rows: diff, ci_low, ci_high, seeds)."""
    at = passk_at_greedy(points, target, k).dropna()
    table = at.rename(columns={f"pass@{k}": "at_target"})
    if baseline not in set(table.method):
        raise ValueError(f"baseline {baseline!r} never reaches greedy accuracy {target}")
    base_seeds = set(table[table.method == baseline].seed)
    rows = []
    for method, d in table.groupby("method", sort=False):
        both = sorted(base_seeds & set(d.seed))
        if method == baseline or not both:
            continue
        pair = table[table.method.isin([method, baseline]) & table.seed.isin(both)]
        r = seed_differences(pair, "at_target", baseline=baseline).iloc[0].to_dict()
        rows.append({**r, "metric": f"pass@{k} at greedy {target:g}", "target": target})
    return pd.DataFrame(rows)
