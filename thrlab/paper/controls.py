"""The controls study of a testbed preset (issue 25; docs/testbed.md, docs/method.md 4.2): its
design, fixed before its runs (seed sets, the lr ladder, the frontier's cadence and target, the
mask controls, the doses of p), the labels its runs carry, how its run folders are found, the
step-size control's matched lr, and its mechanism, dose-response and frontier tables.
`benchmarks/run_study.py` trains it; `benchmarks/testbed.py` prints it.

Reads run folders with pandas only (no torch).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from thrlab.core.errors import DataError
from thrlab.core.stats import matched_lr, minimum_detectable_effect
from thrlab.train.config import Config
from thrlab.train.presets import METHODS, PRESETS, from_preset, method_of, preset_config
from thrlab.train.runs import RunDir, read_json

from . import frontier
from .paired import paired_table

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
MATCHED = "grpo@matched"  # the label of the step-size control in study.CLAIMS and the tables


def run_label(cfg, matched_lr: float | None = None) -> str:
    """The name a study run has in the tables: its METHODS recipe (thrlab.train.presets.method_of) at
    the preset's lr, "thr p=+0.2" for a dose run, "<method>@<f>lr" at f times the preset's lr,
    MATCHED for GRPO at the step-size control's lr. Derived from the config, never stored."""

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


def last_value(rows: list[dict], key: str) -> float:
    """The last value of metric `key` in a run's metrics rows (e.g. train/distance; NaN if none)."""
    values = [float(row[key]) for row in rows if key in row]
    return values[-1] if values else float("nan")


def mean_value(rows: list[dict], key: str) -> float:
    """The mean of metric `key` over a run's metrics rows that have it (NaN if none)."""
    values = [float(row[key]) for row in rows if key in row]
    return float(np.mean(values)) if values else float("nan")


# The per-run mechanism numbers of mechanics_table: (column, metrics.jsonl key, reduction).
MECHANICS = (("distance", "train/distance", last_value),
             ("kl_start", "probe/kl_start", last_value),
             ("frac_kept", "thr/frac_kept", mean_value),
             ("control_overlap", "thr/control_overlap", mean_value))


def mechanics_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (method, seed, lr) with its mechanism metrics (MECHANICS): the distance
    from the start adapter and the KL from the start policy after the last step, the mean share
    of tokens a mask keeps and a mask control's mean overlap with THR's mask (NaN where the run
    does not log it)."""
    rows = []
    for r in runs.itertuples():
        metrics = RunDir(r.run_dir).metrics()  # read once per run
        rows.append({"method": r.method, "seed": r.seed, "lr": r.lr,
                     **{c: fn(metrics, key) for c, key, fn in MECHANICS}})
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

    values = {r.run_dir: last_value(RunDir(r.run_dir).metrics(), key) for r in runs.itertuples()}
    runs = runs.assign(value=runs.run_dir.map(values))
    target = float(runs[runs.method == method].value.mean())
    grpo = runs[runs.method.isin(ladder_labels("grpo"))]
    ladder = {float(lr): float(d.value.mean()) for lr, d in grpo.groupby("lr")}
    lr = matched_lr(list(ladder), list(ladder.values()), target)
    return {"lr": float(f"{lr:.2g}"), "lr_exact": lr, "target": target, "ladder": ladder,
            "key": key}


def frontier_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs evaluated along their training (eval_step files), each run folder once (a run
    under two labels, e.g. the control's copy of a ladder run, counts under its first)."""
    along = runs.drop_duplicates("run_dir")
    return along[[any(Path(d).glob("eval_step*.json")) for d in along.run_dir]]


def frontier_claims(runs: pd.DataFrame, k: int, gain: float = FRONTIER_GAIN,
                    baseline: str = "grpo", points: pd.DataFrame | None = None) -> pd.DataFrame:
    """frontier.matched_frontier of the runs evaluated along their training (eval_step files)
    at greedy accuracy = the start's (the mean of their step-0 points) + gain, with the MDE
    of the seed-level design: one row per method (diff, ci_low, ci_high, se, df, mde, seeds,
    problems, metric, target, lrs); empty without such runs. `points`: frontier.frontier_points
    of frontier_runs(runs) at k, when the caller already has them (several gains)."""
    along = frontier_runs(runs)
    if along.empty or baseline not in set(along.method):
        return pd.DataFrame()
    pts = frontier.frontier_points(along, k) if points is None else points
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


# -- the study's run folders ------------------------------------------------------------------
def collect_runs(preset: str, runs_root: str, seeds: list[int]):
    """The finished runs of `preset`'s schedule (every preset field at its value but lr) for
    `seeds`, labelled by run_label; "llama:" methods are E6's Llama runs."""
    own = preset_config(preset)
    rows = []
    for d in sorted(Path(runs_root).iterdir()):
        run = RunDir(d)
        if not (run.complete and (d / "config.json").exists()):
            continue
        cfg = Config.from_dict(read_json(d / "config.json"))
        if cfg.preset != preset or cfg.seed not in seeds or any(
                getattr(cfg, k) != getattr(own, k) for k in PRESETS[preset] if k != "lr"):
            continue  # another preset, seed or schedule (e.g. a design measurement)
        s = read_json(d / "summary.json")
        arch = "" if cfg.tiny_arch == "qwen2" else f"{cfg.tiny_arch}:"
        rows.append({"method": arch + run_label(cfg), "seed": cfg.seed, "lr": cfg.lr,
                     "run_id": d.name, "run_dir": str(d), "wall_s": s["wall_s"],
                     "train_s": s["train_wall_s"]})
    return pd.DataFrame(rows, columns=["method", "seed", "lr", "run_id", "run_dir", "wall_s",
                                       "train_s"])


def study_runs(preset: str, runs_root: str, seeds: list[int]):
    """The finished study runs of `preset` for `seeds` in runs_root: one row per run (method,
    seed, lr, run_id, run_dir, wall_s, train_s). method is run_label: the recipe at
    the preset's lr, "<method>@<f>lr" on the frontier's lr ladder, MATCHED for GRPO at the
    step-size control's lr, which the first seed set's ladder fixes (matched_control_lr)
    for every seed set; "llama:" methods are E6's Llama-architecture runs."""
    runs = collect_runs(preset, runs_root, seeds)
    if runs.empty:
        raise SystemExit(f"no finished {preset} runs of seeds {seeds} in {runs_root}; "
                         f"run benchmarks/run_py --preset {preset} first")
    m = fixed_matched_lr(preset, runs_root)
    if m is not None:
        at = (runs.lr - m["lr"]).abs().lt(1e-12)
        ladder = runs.method.isin(ladder_labels())
        runs.loc[at & ~ladder & runs.method.str.startswith("grpo@"), "method"] = MATCHED
        if (at & ladder).any():  # the matched lr is on the ladder: that GRPO run is the control
            runs = pd.concat([runs, runs[at & ladder].assign(method=MATCHED)],
                             ignore_index=True)
    dup = runs[runs.duplicated(["method", "seed"], keep=False)]
    if len(dup):
        raise DataError(f"two runs of one method and seed: {dup.run_dir.tolist()}; move one out "
                        f"of {runs_root}")
    return runs


def fixed_matched_lr(preset: str, runs_root: str) -> dict | None:
    """matched_control_lr on the first seed set's finished frontier ladder (GRPO at every
    lr factor and THR p = 0, every seed of the set); None until it is complete."""
    first = list(STUDY_SEED_SETS[0])
    runs = collect_runs(preset, runs_root, first)
    need = {"thr_p0", *ladder_labels()}
    have = runs[runs.method.isin(need)]
    if len(have.groupby(["method", "seed"])) < len(need) * len(first):
        return None
    return matched_control_lr(have)
