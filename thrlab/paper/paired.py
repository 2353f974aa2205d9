"""Paired comparisons of run folders: per-problem scores from their evaluation files, and each
method's difference to a baseline paired by seed and problem, with its 95% interval over both
(thrlab.core.stats.paired_difference); the gains of training; the headline numbers a notebook
writes. Reads run folders with pandas only (no torch).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from thrlab.core.passk import pass_at_k
from thrlab.core.stats import minimum_detectable_effect, paired_difference
from thrlab.train.runs import read_json


def problem_scores(runs: pd.DataFrame, metric: str, phase: str = "eval_after",
                   sets: list[str] | None = None) -> dict[str, np.ndarray]:
    """{method: (seeds, problems) array} of per-problem scores from the runs' eval files:
    metric "greedy_acc" (0/1 per problem) or "pass@k" (the unbiased per-problem estimate from
    its sampled answers). Rows follow the runs' seeds in increasing order; columns the problems
    of `sets` (all sets, pooled, when None), identical for every run (checked), so two methods'
    arrays are paired as thrlab.core.stats.paired_difference needs."""

    out, ids = {}, None
    for method, d in runs.groupby("method", sort=False):
        rows = []
        for r in d.sort_values("seed").itertuples():
            recs = read_json(Path(r.run_dir) / f"{phase}.json").get("problems")
            if not recs:
                raise ValueError(f"{r.run_dir}/{phase}.json has no per-problem records (written "
                                 "by thrlab since the paired statistics); re-run its evaluation")
            names = list(sets or recs)
            if metric == "greedy_acc":
                got = [recs[n]["ids"] for n in names]
                row = [x for n in names for x in recs[n]["greedy"]]
            elif metric.startswith("pass@"):
                k = int(metric.split("@")[1])
                got = [recs[n]["ids"][:len(recs[n]["correct"])] for n in names]
                row = [pass_at_k(recs[n]["samples"], c, k) for n in names
                       for c in recs[n]["correct"]]
            else:
                raise ValueError(f"metric {metric!r}: use greedy_acc or pass@k")
            if ids is None:
                ids = got
            elif got != ids:
                raise ValueError(f"{r.run_dir} was evaluated on other problems than the first "
                                 "run: paired comparisons need the same problems")
            rows.append(row)
        out[method] = np.asarray(rows, dtype=float)
    return out


def paired_table(runs: pd.DataFrame, metrics: list[str], baseline: str = "grpo",
                 phase: str = "eval_after", sets: list[str] | None = None) -> pd.DataFrame:
    """Every method's difference to `baseline` on each metric, paired by seed and problem, with
    its 95% interval over training seeds and problems (thrlab.core.stats.paired_difference) and the
    minimum detectable effect of the design at 80% power: one row per (method, metric). Each
    pair uses the seeds both methods have (an unfinished grid compares what is finished)."""
    if baseline not in set(runs.method):
        raise ValueError(f"baseline {baseline!r} is not among the runs' methods "
                         f"{sorted(set(runs.method))}")
    seeds = {m: sorted(d.seed) for m, d in runs.groupby("method", sort=False)}  # problem_scores' rows
    rows = []
    for metric in metrics:
        scores = problem_scores(runs, metric, phase, sets)  # every eval file read once per metric
        for method in seeds:
            both = sorted(set(seeds[baseline]) & set(seeds[method]))
            if method == baseline or not both:
                continue
            base = scores[baseline][[seeds[baseline].index(s) for s in both]]
            x = scores[method][[seeds[method].index(s) for s in both]]
            rows.append({"method": method, "metric": metric, "value": float(x.mean()),
                         baseline: float(base.mean()), **_paired(base, x)})
    return pd.DataFrame(rows)


def diff_headline(table: pd.DataFrame, name: str) -> dict:
    """The outputs.json entries of a paired table (paired_table rows): `{metric}_{name}_{method}`
    the difference, `..._{name}_ci_{method}` its 95% interval, `..._{name}_mde_{method}` the
    minimum detectable effect, and the seeds and problems behind them. The one helper the
    comparison notebooks (E2, E3, E5, E6) write their headlines with."""
    out = {}
    for r in table.itertuples():
        key = f"{r.metric}_{name}"
        out.update({f"{key}_{r.method}": r.diff, f"{key}_ci_{r.method}": [r.ci_low, r.ci_high],
                    f"{key}_mde_{r.method}": r.mde})
    out.update(seeds=int(table.seeds.max()), problems=int(table.problems.max()))
    return out


def _paired(a: np.ndarray, b: np.ndarray) -> dict:
    """diff, ci_low, ci_high, mde, seeds, problems of b - a; one seed gives the difference with
    no interval (NaN): it shows mechanics, not a result."""

    if len(a) < 2:
        return {"diff": float((b - a).mean()), "ci_low": float("nan"), "ci_high": float("nan"),
                "se": float("nan"), "df": float("nan"), "mde": float("nan"), "seeds": len(a),
                "problems": a.shape[1]}
    r = paired_difference(a, b)
    return {"diff": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "se": r["se"],
            "df": r["df"],
            "mde": minimum_detectable_effect(r["components"], r["seeds"], r["problems"]),
            "seeds": r["seeds"], "problems": r["problems"]}


def gain_table(runs: pd.DataFrame, metrics: list[str], sets: list[str] | None = None,
               phases: tuple[str, str] = ("eval_before", "eval_after")) -> pd.DataFrame:
    """Each method's change from its start model (after - before of the same runs, paired by
    seed and problem), with its 95% interval: the before/after analogue of paired_table.
    phases: the (start, after) eval files, e.g. exploration_evals' extra evaluations."""
    rows = []
    for metric in metrics:
        before = problem_scores(runs, metric, phases[0], sets)
        after = problem_scores(runs, metric, phases[1], sets)
        for method, x in after.items():
            rows.append({"method": method, "metric": metric, "before": float(before[method].mean()),
                         "after": float(x.mean()), **_paired(before[method], x)})
    return pd.DataFrame(rows)
