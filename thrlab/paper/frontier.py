"""The greedy-vs-Pass@K frontier of runs evaluated along their training (frontier_every,
probes.frontier_evaluations): each run's trajectory, its Pass@K at a matched greedy accuracy,
and that paired across seeds against a baseline (docs/method.md section 4.1). An exploration
method has to move the frontier, not slide along it by learning slower.

Reads run folders with pandas only (no torch), like thrlab.paper.study.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from thrlab.core.passk import pass_at_k
from thrlab.train.runs import read_json

from .grid import seed_differences


def frontier_points(runs: pd.DataFrame, k: int, sets: list[str] | None = None) -> pd.DataFrame:
    """Greedy accuracy and pass@k of each run along its training: eval_before (step 0), every
    eval_step<N>.json (frontier_every) and eval_after (its last step), all on the problems the
    step evaluations hold (the first frontier_limit of each set; every problem without step
    files), so the points of one run are comparable. One row per (method, seed, step)."""

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


def with_kl(points: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """frontier_points with a kl_start column: the KL from the start policy at each evaluated
    step (the run's probe/kl_start metric at that step, probe_every; 0 at step 0; NaN where
    the run did not probe that step)."""
    import json

    kl = {}
    for r in runs.itertuples():
        with open(Path(r.run_dir) / "metrics.jsonl") as f:
            for line in f:
                row = json.loads(line)
                if "probe/kl_start" in row:
                    kl[(r.method, r.seed, int(row["step"]))] = float(row["probe/kl_start"])
    keys = zip(points.method, points.seed, points.step)
    return points.assign(kl_start=[0.0 if s == 0 else kl.get((m, sd, s), float("nan"))
                                   for m, sd, s in keys])


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


def split_label(label: str) -> tuple[str, float]:
    """(method, lr factor) of a study run's label (thrlab.paper.controls.run_label): ("thr_p0", 0.5) of
    "thr_p0@0.5lr"; (label, 1.0) of a run at the preset's lr."""
    m = re.fullmatch(r"(.+)@([0-9.e+-]+)lr", label)
    return (m.group(1), float(m.group(2))) if m else (label, 1.0)


def matched_values(points: pd.DataFrame, target: float, k: int,
                   baseline: str = "grpo") -> pd.DataFrame:
    """Per method and seed: its pass@k at greedy accuracy `target` (passk_at_greedy) and the
    baseline's, each the mean over the learning rates (split_label) at which both runs of that
    seed reach the target: the two are paired by seed and lr. Columns method, seed, value,
    baseline, lrs (how many lrs the seed's pair averages)."""
    at = passk_at_greedy(points, target, k).dropna()
    at[["base", "factor"]] = [split_label(m) for m in at.method]
    wide = at.pivot_table(index=["seed", "factor"], columns="base", values=f"pass@{k}")
    if baseline not in wide:
        raise ValueError(f"baseline {baseline!r} never reaches greedy accuracy {target:.3g}")
    rows = []
    for method in wide.columns:
        if method == baseline:
            continue
        both = wide[[method, baseline]].dropna()
        for seed, d in both.groupby(level="seed"):
            rows.append({"method": method, "seed": seed, "value": float(d[method].mean()),
                         "baseline": float(d[baseline].mean()), "lrs": len(d)})
    return pd.DataFrame(rows, columns=["method", "seed", "value", "baseline", "lrs"])


def matched_frontier(points: pd.DataFrame, target: float, k: int,
                     baseline: str = "grpo") -> pd.DataFrame:
    """Each method's pass@k at greedy accuracy `target` minus the baseline's (matched_values:
    paired by seed and lr, averaged over the lrs where both reach it), with the t-interval over
    the seeds where both reach it (seed_differences' rows: diff, ci_low, ci_high, se, seeds)
    and lrs, the mean count of lrs per seed."""
    vals = matched_values(points, target, k, baseline)
    rows = []
    for method, d in vals.groupby("method", sort=False):
        pair = pd.concat([d.assign(at_target=d.value),
                          d.assign(method=baseline, at_target=d.baseline)])
        r = seed_differences(pair, "at_target", baseline=baseline).iloc[0].to_dict()
        rows.append({**r, "metric": f"pass@{k} at greedy {target:.3g}", "target": target,
                     "lrs": float(d.lrs.mean())})
    return pd.DataFrame(rows)
