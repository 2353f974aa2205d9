"""Paired comparisons and the testbed studies: per-problem scores of run folders, each method's
difference to a baseline paired by seed and problem with its 95% interval over both (thrlab.stats),
the paper's claims as such comparisons with a verdict, their replication on a second seed set, and
what each testbed study runs (STUDY_BUDGETS, read by thrlab.reproduce).

Reads run folders with pandas only (no torch), like thrlab.paper.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .paper import strategy_table
from .runs import read_json


# The study of each CPU testbed preset (README, "The CPU testbed"): what
# `python -m thrlab.reproduce --preset NAME` gives every notebook that declares these parameters.
# The preset itself carries the schedule and evaluation sizes (presets.PRESETS); here: the seeds,
# one torch thread per run with two runs at once (2 cores), Pass@K from the runs' own 64 samples
# per problem, and what the 75-minute budget leaves out. The strategies task costs 2.2x a step of
# the a*b task (26-token chains), so its study keeps E2, E3, the two controls, E4 without the
# baselines and the diversity figure (30 runs, ~68 min), and leaves GSPO-token (E5, 10 runs) and
# the Llama architecture (E6, 15 runs and a second cold start) to the a*b study.
_STUDY = {"seeds": [0, 1, 2, 3, 4], "budget": "preset", "overrides": {"threads": 1},
          "workers": 2, "passk_samples": 0, "passk_limit": 0}
_CORE = ["grpo", "thr_p0", "thr_explore"]
# Notebook 09 probes at the testbed presets' own cadence, so its runs are the grid's runs.
_PROBE = {"09_thr_predictor": {"probe_every": 10}}
STUDY_BUDGETS = {
    "narrowing": {"params": _STUDY, "notebooks": _PROBE},
    "strategies": {"params": _STUDY,
                   "notebooks": {"04_exploration": {"methods": _CORE},
                                 "08_runtime": {"methods": _CORE}, **_PROBE},
                   "skip": {"05_gspo_token": "E5 runs in the narrowing study (budget)",
                            "06_llama": "E6 runs in the narrowing study (budget)"}},
}


# The paper's claims as paired comparisons on the testbed (README "The CPU testbed";
# benchmarks/testbed.py prints them): (experiment, claim, method, baseline, metric, direction).
# metric: greedy_acc, pass@top (the largest K the runs evaluated) or strategy_entropy (bits, of
# the samples after RL; one number per run); direction: +1 the paper reports method above
# baseline, -1 below, 0 comparable. "llama:" methods are E6's runs in the Llama architecture.
CLAIMS = (
    ("E2", "THR-only (p = 0) comparable to GRPO, greedy", "thr_p0", "grpo", "greedy_acc", 0),
    ("E2", "THR-only (p = 0) comparable to GRPO, Pass@K", "thr_p0", "grpo", "pass@top", 0),
    ("E3", "p = +0.1 raises greedy over GRPO", "thr_exploit", "grpo", "greedy_acc", 1),
    ("E3", "p = +0.1 raises greedy over p = 0", "thr_exploit", "thr_p0", "greedy_acc", 1),
    ("E3", "p = +0.1 raises greedy over p = -0.1", "thr_exploit", "thr_explore", "greedy_acc", 1),
    ("control", "THR's mask beats a random mask of its size", "thr_p0", "thr_random_mask",
     "greedy_acc", 1),
    ("control", "THR (p = 0) beats GRPO at THR's step size", "thr_p0", "grpo_mass_matched",
     "greedy_acc", 1),
    ("E4", "p = -0.1 raises Pass@K over GRPO", "thr_explore", "grpo", "pass@top", 1),
    ("E4", "p = -0.1 raises Pass@K over p = 0", "thr_explore", "thr_p0", "pass@top", 1),
    ("E4", "p = -0.1 raises Pass@K over a random mask", "thr_explore", "thr_random_mask",
     "pass@top", 1),
    ("E4", "p = -0.1 raises Pass@K over Pass@K-mixed", "thr_explore", "passk_mixed", "pass@top",
     1),
    ("E4", "p = -0.1 raises Pass@K over KL-Cov", "thr_explore", "kl_cov", "pass@top", 1),
    ("E5", "GSPO-token + THR (p < 0) above GSPO-token, greedy", "gspo_token_thr", "gspo_token",
     "greedy_acc", 1),
    ("E5", "GSPO-token + THR (p < 0) above GSPO-token, Pass@K", "gspo_token_thr", "gspo_token",
     "pass@top", 1),
    ("E6", "Llama: p < 0 raises Pass@K over GRPO", "llama:thr_explore", "llama:grpo", "pass@top",
     1),
    ("E6", "Llama: p > 0 below GRPO, Pass@K", "llama:thr_exploit", "llama:grpo", "pass@top", -1),
    ("diversity", "p < 0 keeps more strategies than GRPO", "thr_explore", "grpo",
     "strategy_entropy", 1),
    ("diversity", "p > 0 keeps fewer strategies than GRPO", "thr_exploit", "grpo",
     "strategy_entropy", -1),
)


def verdict(direction: int, ci_low: float, ci_high: float) -> str:
    """A claim's reading from its 95% interval: reproduced (excludes 0 in the claimed
    direction), refuted (excludes 0 the other way; for "comparable": excludes 0 at all),
    consistent ("comparable" and the interval holds 0), not resolved (holds 0)."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "one seed: mechanics only"
    if direction == 0:
        return "refuted" if ci_low > 0 or ci_high < 0 else "consistent"
    if direction * ci_low > 0 and direction * ci_high > 0:
        return "reproduced"
    if direction * ci_low < 0 and direction * ci_high < 0:
        return "refuted"
    return "not resolved"


def claims_table(runs: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """Every claim whose two methods are among the runs: the paired difference method minus
    baseline with its 95% interval over seeds and problems (thrlab.stats), the minimum
    detectable effect of the design at 80% power, the seeds and problems behind it, and the
    verdict. Pass@K uses the largest K the runs' evaluations hold."""
    from .stats import minimum_detectable_effect

    have = set(runs.method)
    recs = read_json(Path(runs.run_dir.iloc[0]) / "eval_after.json")["problems"]
    top = next(iter(recs.values()))["samples"]  # pass@k runs up to k = the samples per problem
    rows = []
    for exp, claim, method, base, metric, direction in claims:
        if not {method, base} <= have:
            continue
        pair = runs[runs.method.isin([method, base])]
        metric = f"pass@{top}" if metric == "pass@top" else metric
        if metric == "strategy_entropy":
            first = read_json(Path(pair.run_dir.iloc[0]) / "eval_after.json")["sets"]
            if not any("strategy_entropy" in v for v in first.values()):
                continue  # a task without strategy labels
            div = strategy_table(pair)
            r = seed_differences(div, "entropy_after", baseline=base).iloc[0].to_dict()
            d = div.pivot(index="seed", columns="method", values="entropy_after").dropna()
            d = d[method] - d[base]
            r["mde"] = (minimum_detectable_effect({"seed": float(d.var(ddof=1)), "problem": 0.0,
                                                   "resid": 0.0}, len(d), 1)
                        if len(d) > 1 else float("nan"))
        else:
            r = paired_table(pair, [metric], baseline=base).iloc[0].to_dict()
        rows.append({"experiment": exp, "claim": claim, "method": method, "baseline": base,
                     "metric": metric, "direction": direction, "diff": r["diff"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "mde": r["mde"],
                     "seeds": int(r["seeds"]), "problems": int(r["problems"]),
                     "verdict": verdict(direction, r["ci_low"], r["ci_high"])})
    return pd.DataFrame(rows)


def replication(first: pd.DataFrame, second: pd.DataFrame, pooled: pd.DataFrame) -> list[dict]:
    """Every claim of claims_table on two seed sets of one study and on both pooled: `first`,
    `second`, `pooled` (the claim's row on each), `same_verdict`, and `inside` when each set's
    estimate lies in the other's 95% interval. Claims one table lacks are left out."""
    def rows(t):
        return {(c["experiment"], c["claim"]): c for c in t.to_dict("records")}

    b_rows, p_rows = rows(second), rows(pooled)
    out = []
    for key, a in rows(first).items():
        if key not in b_rows or key not in p_rows:
            continue
        b = b_rows[key]
        inside = (a["ci_low"] <= b["diff"] <= a["ci_high"]) and (b["ci_low"] <= a["diff"]
                                                                   <= b["ci_high"])
        out.append({"experiment": a["experiment"], "claim": a["claim"], "metric": a["metric"],
                    "first": a, "second": b, "pooled": p_rows[key],
                    "same_verdict": a["verdict"] == b["verdict"], "inside": bool(inside)})
    return out


def problem_scores(runs: pd.DataFrame, metric: str, phase: str = "eval_after",
                   sets: list[str] | None = None) -> dict[str, np.ndarray]:
    """{method: (seeds, problems) array} of per-problem scores from the runs' eval files:
    metric "greedy_acc" (0/1 per problem) or "pass@k" (the unbiased per-problem estimate from
    its sampled answers). Rows follow the runs' seeds in increasing order; columns the problems
    of `sets` (all sets, pooled, when None), identical for every run (checked), so two methods'
    arrays are paired as thrlab.stats.paired_difference needs."""
    from .evaluate import pass_at_k

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
    its 95% interval over training seeds and problems (thrlab.stats.paired_difference) and the
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
    from .stats import minimum_detectable_effect, paired_difference

    if len(a) < 2:
        return {"diff": float((b - a).mean()), "ci_low": float("nan"), "ci_high": float("nan"),
                "mde": float("nan"), "seeds": len(a), "problems": a.shape[1]}
    r = paired_difference(a, b)
    return {"diff": r["mean"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
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


def seed_differences(table: pd.DataFrame, column: str, baseline: str = "grpo") -> pd.DataFrame:
    """Each method's difference to `baseline` in a per-run number (a column of one row per run,
    e.g. strategy_table's), paired by seed, with the 95% t-interval over seeds (NaN with one
    seed); rows shaped like paired_table's (metric = column)."""
    from .stats import seed_difference

    base = table[table.method == baseline].set_index("seed")[column]
    rows = []
    for method, d in table.groupby("method", sort=False):
        if method == baseline:
            continue
        x = d.set_index("seed")[column].reindex(base.index)
        r = (seed_difference(base.to_numpy(), x.to_numpy()) if len(base) > 1 else
             {"mean": float((x - base).mean()), "ci_low": float("nan"), "ci_high": float("nan")})
        rows.append({"method": method, "metric": column, "value": float(x.mean()),
                     baseline: float(base.mean()), "diff": r["mean"], "ci_low": r["ci_low"],
                     "ci_high": r["ci_high"], "seeds": len(base),
                     "problems": int(table.get("problems", pd.Series([0])).max())})
    return pd.DataFrame(rows)
