"""Paired comparisons and the testbed studies: per-problem scores of run folders, each method's
difference to a baseline paired by seed and problem with its 95% interval over both (thrlab.core.stats),
the paper's claims as such comparisons with a verdict, their replication on a second seed set, and
what each testbed study runs (STUDY_BUDGETS, read by thrlab.paper.reproduce).

Reads run folders with pandas only (no torch), like thrlab.paper.grid.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from thrlab.core.passk import pass_at_k
from thrlab.core.stats import matched_lr, minimum_detectable_effect, paired_difference
from thrlab.paper import frontier
from thrlab.train.presets import METHODS, from_preset, method_of, preset_config
from thrlab.train.runs import read_json

from .grid import seed_differences, strategy_table

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


# The controls study of a testbed preset (issue 25; docs/testbed.md), fixed before its
# runs: `benchmarks/run_study.py` trains it, `benchmarks/testbed.py` reads it. Two seed sets of 3
# (the second confirmatory); the frontier and the step-size control on both, then the
# token-choice masks on both, then the dose-response of p on the first set only (the budget's
# order). Every run at the preset's schedule and one torch thread.
#   frontier: GRPO and each THR variant at the preset lr x 0.5, 1 and 2, the policy evaluated
#     every 40 steps on the first 100 problems (greedy and 64 samples), Pass@K read at
#     greedy accuracy = the start's + FRONTIER_GAIN on those problems;
#   matched: GRPO at the lr where its seed-mean distance from the start (train/distance after
#     the last step) equals THR p = 0's, interpolated in log lr over the GRPO ladder of the
#     first seed set (stats.matched_lr; 2 significant digits), so the confirmatory set reuses
#     the lr fixed on the first;
#   masks: the three mask controls of THR's size (random = the floor, lowest probability,
#     highest entropy) at the preset lr;
#   dose: THR at every p of DOSE_P at the preset lr (p = -0.1, 0, +0.1 are the frontier runs).
STUDY_SEED_SETS = ((0, 1, 2), (3, 4, 5))
LR_FACTORS = (0.5, 1.0, 2.0)
FRONTIER_METHODS = ("grpo", "thr_p0", "thr_explore", "thr_exploit")
FRONTIER = {"frontier_every": 40, "frontier_limit": 100}
FRONTIER_GAIN = 0.04
MASK_CONTROLS = ("thr_random_mask", "thr_lowprob_mask", "thr_entropy_mask")
DOSE_P = (-0.9, -0.5, -0.2, -0.1, 0.0, 0.1, 0.2, 0.5, 0.9)
MATCHED = "grpo@matched"  # the label of the step-size control in CLAIMS and the tables


def run_label(cfg, matched_lr: float | None = None) -> str:
    """The name a study run has in the tables: its METHODS recipe (thrlab.train.presets.method_of) at
    the preset's lr, "thr p=+0.2" for a dose run, "<method>@<f>lr" at f times the preset's lr,
    MATCHED for GRPO at the step-size control's lr. Derived from the config, never stored."""
    import math


    own = preset_config(cfg.preset).lr
    at_own = cfg.replace(lr=own, frontier_every=0, frontier_limit=0)
    m = method_of(at_own)
    if m == "custom" and cfg.thr_mode == "thr":
        m = f"thr p={cfg.thr_p:+g}"
    if math.isclose(cfg.lr, own, rel_tol=1e-9):
        return m
    if m == "grpo" and matched_lr is not None and math.isclose(cfg.lr, matched_lr, rel_tol=1e-9):
        return MATCHED
    return f"{m}@{cfg.lr / own:g}lr"


def study_cells(preset: str, seeds, part: str, matched_lr: float | None = None,
                overrides: dict | None = None) -> list:
    """(label, seed, config) of every run of one part of the controls study ("frontier",
    "matched", "masks" or "dose"; see STUDY_SEED_SETS), seed-major; "matched" needs the lr
    (matched_control_lr). overrides (e.g. a smoke test's tiny budget) apply to every run."""

    def cell(method, seed, **over):
        cfg = from_preset(preset, method, seed=seed, threads=1, **{**over, **(overrides or {})})
        return (run_label(cfg, matched_lr), seed, cfg)

    own = from_preset(preset).lr
    cells = []
    for seed in seeds:
        if part == "frontier":
            cells += [cell(m, seed, lr=own * f, **FRONTIER) for m in FRONTIER_METHODS
                      for f in LR_FACTORS]
        elif part == "matched":
            if matched_lr is None:
                raise ValueError("the matched part needs matched_lr (matched_control_lr)")
            cells.append(cell("grpo", seed, lr=matched_lr))
        elif part == "masks":
            cells += [cell(m, seed) for m in MASK_CONTROLS]
        elif part == "dose":
            cells += [cell("thr_p0", seed, thr_p=p) for p in DOSE_P if p not in (-0.1, 0.0, 0.1)]
        else:
            raise ValueError(f"part {part!r}: choose frontier, matched, masks or dose")
    return cells


def ladder_labels(method: str = "grpo") -> list[str]:
    """The labels of `method`'s runs on the frontier's lr ladder (LR_FACTORS; run_label)."""
    return [method if f == 1 else f"{method}@{f:g}lr" for f in LR_FACTORS]


def final_metric(run_dir, key: str) -> float:
    """The last value of metric `key` in a run's metrics.jsonl (e.g. train/distance)."""
    import json

    value = float("nan")
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if key in row:
                value = float(row[key])
    return value


def mean_metric(run_dir, key: str) -> float:
    """The mean of metric `key` over a run's metrics.jsonl rows that have it (NaN if none)."""
    import json

    values = []
    with open(Path(run_dir) / "metrics.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if key in row:
                values.append(float(row[key]))
    return float(np.mean(values)) if values else float("nan")


# The per-run mechanism numbers of mechanics_table: (column, metrics.jsonl key, reduction).
MECHANICS = (("distance", "train/distance", final_metric),
             ("kl_start", "probe/kl_start", final_metric),
             ("frac_kept", "thr/frac_kept", mean_metric),
             ("control_overlap", "thr/control_overlap", mean_metric))


def mechanics_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (method, seed, lr) with its mechanism metrics (MECHANICS): the distance
    from the start adapter and the KL from the start policy after the last step, the mean share
    of tokens a mask keeps and a mask control's mean overlap with THR's mask (NaN where the run
    does not log it)."""
    rows = []
    for r in runs.itertuples():
        rows.append({"method": r.method, "seed": r.seed, "lr": r.lr,
                     **{c: fn(r.run_dir, key) for c, key, fn in MECHANICS}})
    return pd.DataFrame(rows)


def dose_table(runs: pd.DataFrame, metrics: list[str], baseline: str = "grpo") -> pd.DataFrame:
    """THR at every p the runs hold (labels thr_p0, thr_explore, thr_exploit and "thr p=..." at
    the preset's lr) minus the baseline, paired by seed and problem (paired_table), with p in a
    column: the dose-response of p."""

    named = {m: METHODS[m]["thr_p"] for m in ("thr_p0", "thr_explore", "thr_exploit")}
    p_of = {m: named.get(m, float(m[len("thr p="):]) if m.startswith("thr p=") else None)
            for m in set(runs.method)}
    dose = [m for m, p in p_of.items() if p is not None]
    if not dose or baseline not in set(runs.method):
        return pd.DataFrame()
    t = paired_table(runs[runs.method.isin(dose + [baseline])], metrics, baseline=baseline)
    t.insert(0, "p", t.method.map(p_of))
    return t.sort_values(["metric", "p"]).reset_index(drop=True)


def matched_control_lr(runs: pd.DataFrame, method: str = "thr_p0",
                       key: str = "train/distance") -> dict:
    """The step-size control's lr: where GRPO's seed-mean `key` after the last step, over its
    lr ladder (labels grpo, grpo@<f>lr), equals `method`'s seed-mean (stats.matched_lr,
    interpolated in log lr), rounded to 2 significant digits. runs: study_runs' rows (method,
    run_dir, lr). Returns {lr, lr_exact, target, ladder: {lr: mean}, key}; raises when the
    target is outside the ladder."""

    values = {r.run_dir: final_metric(r.run_dir, key) for r in runs.itertuples()}
    runs = runs.assign(value=runs.run_dir.map(values))
    target = float(runs[runs.method == method].value.mean())
    grpo = runs[runs.method.isin(ladder_labels("grpo"))]
    ladder = {float(lr): float(d.value.mean()) for lr, d in grpo.groupby("lr")}
    lr = matched_lr(list(ladder), list(ladder.values()), target)
    return {"lr": float(f"{lr:.2g}"), "lr_exact": lr, "target": target, "ladder": ladder,
            "key": key}


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
        if metric == "frontier":
            front = frontier_claims(runs, top) if front is None else front
            if front.empty or method not in set(front.method):
                continue  # no frontier runs (frontier_every), or the method never got there
        pair = runs[runs.method.isin([method, base])]
        margin = EQUIVALENCE_MARGINS.get(metric) if direction == 0 else None
        if direction == 0 and margin is None:
            raise ValueError(f"comparable claim {claim!r}: no equivalence margin for {metric!r} "
                             f"in EQUIVALENCE_MARGINS")
        metric = f"pass@{top}" if metric == "pass@top" else metric
        if metric == "frontier":
            r = front[front.method == method].iloc[0].to_dict()
            metric = r["metric"]
        elif metric == "strategy_entropy":
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


def passk_top(samples: int) -> int:
    """The K of a claim's pass@top: the largest power of 2 with 2K <= the samples per problem
    (from 64 samples, Pass@32; see CLAIMS)."""
    k = 1
    while 4 * k <= samples:
        k *= 2
    return k


def frontier_claims(runs: pd.DataFrame, k: int, gain: float = FRONTIER_GAIN,
                    baseline: str = "grpo") -> pd.DataFrame:
    """frontier.matched_frontier of the runs evaluated along their training (eval_step files)
    at greedy accuracy = the start's (the mean of their step-0 points) + gain, with the MDE
    of the seed-level design: one row per method (diff, ci_low, ci_high, se, df, mde, seeds,
    problems, metric, target, lrs); empty without such runs."""

    along = runs.drop_duplicates("run_dir")  # a run under two labels counts under its first
    along = along[[any(Path(d).glob("eval_step*.json")) for d in along.run_dir]]
    if along.empty or baseline not in set(along.method):
        return pd.DataFrame()
    pts = frontier.frontier_points(along, k)
    target = float(pts[pts.step == 0].greedy_acc.mean()) + gain
    t = frontier.matched_frontier(pts, target, k, baseline)
    if t.empty:
        return t
    vals = frontier.matched_values(pts, target, k, baseline)
    mde = {}
    for m, d in vals.groupby("method"):
        var = float((d.value - d.baseline).var(ddof=1)) if len(d) > 1 else float("nan")
        mde[m] = (minimum_detectable_effect({"seed": var, "problem": 0.0, "resid": 0.0}, len(d), 1)
                  if len(d) > 1 else float("nan"))
    t["mde"] = t.method.map(mde)
    step = next(Path(along.run_dir.iloc[0]).glob("eval_step*.json"))
    t["problems"] = sum(len(v["greedy"]) for v in read_json(step)["problems"].values())
    return t


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
