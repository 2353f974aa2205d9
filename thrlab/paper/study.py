"""The testbed studies: what each runs (STUDY_BUDGETS, read by thrlab.paper.reproduce), and the
paper's claims as paired comparisons (thrlab.paper.paired) with a verdict read by rules fixed
before the runs (Holm over the directional claims, equivalence margins for "comparable"), and
their replication on a second seed set. The controls study's design is thrlab.paper.controls.

Reads run folders with pandas only (no torch), like thrlab.paper.grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from thrlab.core.stats import minimum_detectable_effect
from thrlab.train.runs import read_json

from .controls import MATCHED, frontier_claims
from .grid import seed_differences, strategy_table
from .paired import paired_table

# The study of each CPU testbed preset (docs/testbed.md): what
# `python -m thrlab.paper.reproduce --preset NAME` gives every notebook that declares these parameters.
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


# The paper's claims as paired comparisons on the testbed (docs/testbed.md;
# benchmarks/testbed.py prints them): (experiment, claim, method, baseline, metric, direction).
# "THR (p = 0) beats GRPO at THR's step size" against grpo_mass_matched is gone: under AdamW a
# loss scale is divided out, so that run is plain GRPO (docs/method.md section 4; test_drift).
# metric: greedy_acc, pass@top (Pass@K at the largest K with 2K <= the samples per problem: from
# n = 64 samples, Pass@32, an average over C(64, 32) subsets, where Pass@64 from 64 samples would
# be a 0/1 indicator per problem; GRPO's Pass@K falls below the start's from K = 32 on), frontier
# (pass@top at matched greedy accuracy along the runs, the mean over the lr ladder of method
# minus GRPO at the same lr, paired by seed: frontier_values) or strategy_entropy (bits, of
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
    ("control", "THR's mask beats the lowest-probability tokens, as many", "thr_p0",
     "thr_lowprob_mask", "greedy_acc", 1),
    ("control", "THR's mask beats the highest-entropy tokens, as many", "thr_p0",
     "thr_entropy_mask", "greedy_acc", 1),
    ("control", "THR (p = 0) comparable to GRPO at a distance-matched lr, greedy", "thr_p0",
     MATCHED, "greedy_acc", 0),
    ("frontier", "p = -0.1 raises Pass@K over GRPO at matched greedy accuracy", "thr_explore",
     "grpo", "frontier", 1),
    ("frontier", "p = +0.1 lowers Pass@K below GRPO at matched greedy accuracy", "thr_exploit",
     "grpo", "frontier", -1),
    ("frontier", "THR-only (p = 0) on GRPO's frontier", "thr_p0", "grpo", "frontier", 0),
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


# How a claim is read (fixed before the runs; the code's history is the record). ALPHA is the
# family-wise error rate of the directional claims of one study (Holm) and the level of each
# equivalence test. A "comparable" claim is tested for equivalence (two one-sided tests: the
# 90% interval inside +-margin) with the margin of its metric stated here: a difference smaller
# than 2 points of greedy accuracy or 3 points of Pass@K is taken as no difference that matters.
ALPHA = 0.05
EQUIVALENCE_MARGINS = {"greedy_acc": 0.02, "pass@top": 0.03, "frontier": 0.03}


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (NaN stays NaN and is not counted):
    the i-th smallest of m becomes max over j <= i of min(1, (m - j + 1) p_(j)). A claim whose
    adjusted p is below ALPHA keeps the family-wise error rate at ALPHA."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), np.nan)
    idx = [i for i in np.argsort(p, kind="stable") if np.isfinite(p[i])]
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * p[i]))
        out[i] = running
    return out.tolist()


def verdict(direction: int, ci_low: float, ci_high: float, *, p_holm: float | None = None,
            ci90: tuple[float, float] | None = None, margin: float | None = None) -> str:
    """A claim's reading. Directional (direction +1 / -1, the paper reports method above /
    below baseline): 'reproduced' or 'refuted' when the difference is significant (its
    Holm-adjusted p below ALPHA; without p_holm, its 95% interval excludes 0) on the claimed or
    the other side, else 'not resolved' (the interval's bound, not the MDE, limits the effect:
    see `bound`). Comparable (direction 0): 'equivalent' when the 90% interval lies inside
    +-margin (TOST at 5%), else 'different' when the 95% interval excludes 0, else 'not shown':
    an interval that holds 0 but reaches past the margin is absence of evidence, not
    comparability."""
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return "one seed: mechanics only"
    side = 1 if ci_low > 0 else -1 if ci_high < 0 else 0  # where the 95% interval lies
    if direction == 0:
        if margin is None or ci90 is None:
            raise ValueError("a comparable claim needs its 90% interval and equivalence margin")
        if -margin < ci90[0] and ci90[1] < margin:
            return "equivalent"
        return "different" if side else "not shown"
    if p_holm is not None:
        mid = (ci_low + ci_high) / 2
        side = (1 if mid > 0 else -1) if p_holm < ALPHA else 0
    if side == direction:
        return "reproduced"
    return "refuted" if side else "not resolved"


def bound(direction: int, ci_low: float, ci_high: float) -> float:
    """The largest effect in the claimed direction the 95% interval leaves open: its upper end
    for a claimed rise, its lower end for a claimed fall, the end farther from 0 for a
    comparable claim."""
    if direction > 0:
        return ci_high
    if direction < 0:
        return ci_low
    return ci_high if abs(ci_high) >= abs(ci_low) else ci_low


def claims_table(runs: pd.DataFrame, claims=CLAIMS) -> pd.DataFrame:
    """Every claim whose two methods are among the runs: the paired difference method minus
    baseline with its 95% interval over seeds and problems (thrlab.core.stats), its 90% interval
    and two-sided p, the p adjusted by Holm over the table's directional claims (one study's
    family), the equivalence margin of a comparable claim, the minimum detectable effect of the
    design at 80% power, the seeds and problems behind it, the verdict (`verdict`) and the
    interval's bound in the claimed direction (`bound`). Pass@K uses the largest K the runs'
    evaluations hold."""

    have = set(runs.method)
    recs = read_json(Path(runs.run_dir.iloc[0]) / "eval_after.json")["problems"]
    top = passk_top(next(iter(recs.values()))["samples"])
    front = None
    rows = []
    for exp, claim, method, base, metric, direction in claims:
        if not {method, base} <= have:
            continue
        if metric == "frontier" and front is None:
            front = frontier_claims(runs, top)
        margin = EQUIVALENCE_MARGINS.get(metric) if direction == 0 else None
        if direction == 0 and margin is None:
            raise ValueError(f"comparable claim {claim!r}: no equivalence margin for {metric!r} "
                             f"in EQUIVALENCE_MARGINS")
        read = _claim_reading(runs, method, base, metric, top, front)
        if read is None:
            continue  # no frontier runs, a method that never got there, no strategy labels
        metric, r = read
        rows.append({"experiment": exp, "claim": claim, "method": method, "baseline": base,
                     "metric": metric, "direction": direction, "diff": r["diff"],
                     "ci_low": r["ci_low"], "ci_high": r["ci_high"], "se": r["se"],
                     "df": r["df"], **_tests(r["diff"], r["se"], r["df"]), "margin": margin,
                     "mde": r["mde"],
                     "seeds": int(r["seeds"]), "problems": int(r["problems"])})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    directional = t.direction != 0
    t["p_holm"] = np.nan
    t.loc[directional, "p_holm"] = holm(t.loc[directional, "p"].tolist())
    t["verdict"] = [verdict(c.direction, c.ci_low, c.ci_high,
                            p_holm=None if c.direction == 0 else c.p_holm,
                            ci90=(c.ci90_low, c.ci90_high), margin=c.margin)
                    for c in t.itertuples()]
    t["bound"] = [bound(c.direction, c.ci_low, c.ci_high) for c in t.itertuples()]
    return t


def _claim_reading(runs: pd.DataFrame, method: str, base: str, metric: str, top: int,
                   front: pd.DataFrame | None):
    """(the metric's name in the table, its paired difference row) for one claim's metric, or
    None where the runs cannot answer it."""
    if metric == "frontier":
        if front.empty or method not in set(front.method):
            return None
        r = front[front.method == method].iloc[0].to_dict()
        return r["metric"], r
    pair = runs[runs.method.isin([method, base])]
    if metric == "strategy_entropy":
        first = read_json(Path(pair.run_dir.iloc[0]) / "eval_after.json")["sets"]
        if not any("strategy_entropy" in v for v in first.values()):
            return None  # a task without strategy labels
        div = strategy_table(pair)
        r = seed_differences(div, "entropy_after", baseline=base).iloc[0].to_dict()
        d = div.pivot(index="seed", columns="method", values="entropy_after").dropna()
        d = d[method] - d[base]
        r["mde"] = (minimum_detectable_effect({"seed": float(d.var(ddof=1)), "problem": 0.0,
                                               "resid": 0.0}, len(d), 1)
                    if len(d) > 1 else float("nan"))
        return metric, r
    metric = f"pass@{top}" if metric == "pass@top" else metric
    return metric, paired_table(pair, [metric], baseline=base).iloc[0].to_dict()


def passk_top(samples: int) -> int:
    """The K of a claim's pass@top: the largest power of 2 with 2K <= the samples per problem
    (from 64 samples, Pass@32; see CLAIMS)."""
    k = 1
    while 4 * k <= samples:
        k *= 2
    return k


def _tests(diff: float, se: float, df: float) -> dict:
    """The 90% interval (for equivalence) and the two-sided p against 0 of a t-distributed
    difference; NaN with one seed (no interval)."""
    from scipy import stats as st

    if not (np.isfinite(se) and np.isfinite(df)):
        return {"ci90_low": float("nan"), "ci90_high": float("nan"), "p": float("nan")}
    half = float(st.t.ppf(0.95, df)) * se
    p = float(2 * st.t.sf(abs(diff) / se, df)) if se > 0 else float(diff == 0)
    return {"ci90_low": diff - half, "ci90_high": diff + half, "p": p}


def replication(first: pd.DataFrame, second: pd.DataFrame, pooled: pd.DataFrame) -> list[dict]:
    """Every claim of claims_table on two seed sets of one study and on both pooled: `first`,
    `second`, `pooled` (the claim's row on each), `same_verdict`, `inside` when each set's
    estimate lies in the other's 95% interval, and `confirmed`: the second set is confirmatory,
    so a claim counts as reproduced (or equivalent) only if the first set's verdict says so and
    the second set's says the same. Claims one table lacks are left out."""
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
                    "same_verdict": a["verdict"] == b["verdict"], "inside": bool(inside),
                    "confirmed": a["verdict"] in ("reproduced", "equivalent")
                    and b["verdict"] == a["verdict"]})
    return out


