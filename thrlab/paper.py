"""The experiment grid behind the paper notebooks (docs/method.md section 5) and the tables their
figures are drawn from.

Every comparison run is `run_experiment(from_preset(preset, method, seed=seed, **overrides))`: its
id is a hash of its config, so a run finished by one notebook is reused by the next (E2, E3, E4 and
E7 share GRPO, p = 0 and p = -0.1) as long as the notebooks pass the same `overrides`. The readers
turn run folders into pandas tables and need no torch; only `run_grid` and `passk_eval` import it,
lazily, to train or evaluate.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .presets import from_preset, preset_config
from .runs import STEP_PHASES, RunDir, read_json, write_json

# What a notebook's runs train, by its `budget` parameter (one place; every parameters cell used to
# copy the dict). "notebook": the tiny reproduction's, no SFT control, 200 held-out problems, 30
# GRPO steps (half the tiny default: all of `make reproduce` in ~20 min on a shared 2-core CPU),
# one torch thread (not in the run id; up to 8x faster than 2 on a busy CPU). "preset": the preset
# as defined (a paper preset on a GPU; the testbed studies, which STUDY_BUDGETS select). Every
# notebook defaults to "notebook", so runs are shared across notebooks.
BUDGETS = {"notebook": {"sft_control": False, "eval_limit": 200, "steps": 30, "threads": 1},
           "preset": {}}


def with_budget(budget: str, overrides: dict | None = None) -> dict:
    """The config overrides of a notebook's grid: BUDGETS[budget], then its own overrides."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; choose one of {sorted(BUDGETS)} (thrlab.paper.BUDGETS)")
    return {**BUDGETS[budget], **(overrides or {})}


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


# E4's Pass@K average, as in the paper's Table 2: the competition sets only.
E4_PASSK_SETS = ("aime24", "aime25", "amc23")


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


def exploration_sets(preset: str, sets=None) -> list[str] | None:
    """Evaluation sets of E4's Pass@K curves: `sets` when given; on a preset that evaluates
    AIME24, AIME25 and AMC23 those three (Table 2), not every benchmark the runs evaluate;
    otherwise (tiny, the testbed) the runs' own sets (None)."""
    if sets:
        return list(sets)
    own = preset_config(preset).eval_sets
    return list(E4_PASSK_SETS) if set(E4_PASSK_SETS) <= set(own) else None


def grid_config(preset: str, method: str, seed: int, overrides: dict | None = None) -> Config:
    """The config of one cell of the grid: preset, then METHODS[method], then overrides."""
    return from_preset(preset, method, **dict(overrides or {}, seed=seed))


def llama_swap(preset: str) -> tuple[str, dict]:
    """E6's preset swap: (preset, extra overrides) of the Llama run for a given preset.

    tiny (or a testbed preset) -> the same preset with the tiny model built in the Llama
    architecture (its own cold start);
    any paper preset -> llama-3.2-3b-instruct.
    """
    if preset_config(preset).model == "tiny":  # tiny and the CPU testbed presets
        return preset, {"tiny_arch": "llama"}
    return "llama-3.2-3b-instruct", {}


def run_grid(preset: str, methods: list[str], seeds: list[int], overrides: dict | None = None,
             runs_root: str | Path = "runs", *, per_method: dict | None = None,
             progress: bool = False, workers: int = 1) -> pd.DataFrame:
    """Run (or reuse) every (seed, method) cell; one row per run: method, seed, run_id, run_dir.

    per_method: extra overrides for one method, e.g. {"kl_cov": {"cov_ratio": 0.1}}.
    workers > 1 trains that many cells at once, each in its own `thrlab train --config`
    process (its output in <runs_root>/.logs/<run_id>.log) with torch threads set to
    cpu_count // workers where the config leaves them at 0: on a 2-core CPU two one-thread
    runs finish about twice as fast as one two-thread run. Results do not depend on workers
    (threads are not part of a run; runs are independent and seeded).
    """
    cells = []
    for seed in seeds:  # seed-major: one seed's whole comparison finishes first
        for method in methods:
            cfg = grid_config(preset, method, seed,
                              dict(overrides or {}, **(per_method or {}).get(method, {})))
            cells.append((method, seed, cfg, Path(runs_root) / cfg.run_id()))
    if workers > 1:
        todo = [c for c in cells if not RunDir(c[3]).complete]
        from .experiment import resolve_model_path
        from .tiny import tiny_model_dir

        models = {str(tiny_model_dir(c[2])) if c[2].model == "tiny" else c[2].model: c[2]
                  for c in todo}
        for cfg in models.values():
            resolve_model_path(cfg, progress)  # cold-start a tiny model once, not per worker
        _run_parallel(todo, workers, Path(runs_root))
    else:
        from .experiment import run_experiment

        for method, seed, cfg, run_dir in cells:
            reused = RunDir(run_dir).complete
            t0 = time.time()
            run_experiment(cfg, run_dir, progress=progress)
            print(f"{method:<16} seed {seed}: {cfg.run_id()} "
                  f"({'reused' if reused else f'trained in {time.time() - t0:.0f} s'})")
    return pd.DataFrame([{"method": m, "seed": s, "run_id": c.run_id(), "run_dir": str(d)}
                         for m, s, c, d in cells])


def _run_parallel(cells: list, workers: int, runs_root: Path) -> None:
    """Train cells (method, seed, cfg, run_dir) in up to `workers` processes at once."""
    import os
    import subprocess
    import sys
    import tempfile

    logs = runs_root / ".logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers)
    todo, running, failed = list(cells), [], []
    with tempfile.TemporaryDirectory() as tmp:
        while todo or running:
            while todo and len(running) < workers:
                method, seed, cfg, run_dir = todo.pop(0)
                cfg = cfg if cfg.threads else cfg.replace(threads=threads)
                conf = Path(tmp) / f"{cfg.run_id()}.json"
                conf.write_text(cfg.to_json())
                log = open(logs / f"{cfg.run_id()}.log", "w")
                proc = subprocess.Popen(
                    [sys.executable, "-m", "thrlab", "train", "--config", str(conf),
                     "--run-dir", str(run_dir), "--quiet"], stdout=log, stderr=subprocess.STDOUT)
                running.append((proc, log, method, seed, cfg, time.time()))
            time.sleep(0.2)
            for item in [x for x in running if x[0].poll() is not None]:
                proc, log, method, seed, cfg, t0 = item
                running.remove(item)
                log.close()
                status = f"trained in {time.time() - t0:.0f} s" if proc.returncode == 0 else \
                    f"FAILED (exit {proc.returncode}; see {log.name})"
                print(f"{method:<16} seed {seed}: {cfg.run_id()} ({status})", flush=True)
                if proc.returncode:
                    failed.append(f"{method} seed {seed} ({log.name})")
    if failed:
        raise RuntimeError(f"{len(failed)} grid run(s) failed: {', '.join(failed)}")


# -- evaluation tables ---------------------------------------------------------------------------
def eval_table(runs: pd.DataFrame, phase: str = "eval_after") -> pd.DataFrame:
    """Long table (method, seed, set, metric, value) of eval_<phase>.json; set "average" = mean."""
    rows = []
    for r in runs.itertuples():
        res = read_json(Path(r.run_dir) / f"{phase}.json")
        for name, vals in [*res["sets"].items(), ("average", res["mean"])]:
            rows += [{"method": r.method, "seed": r.seed, "set": name, "metric": k, "value": v}
                     for k, v in vals.items() if isinstance(v, (int, float))]
    return pd.DataFrame(rows)


def by_method(long: pd.DataFrame, metric: str, set_name: str = "average") -> dict[str, list]:
    """{method: [value per seed]} for one metric and set, methods in first-seen order."""
    sel = long[(long.metric == metric) & (long.set == set_name)]
    return {m: sel[sel.method == m].sort_values("seed").value.tolist()
            for m in dict.fromkeys(sel.method)}


def mean_std_table(long: pd.DataFrame, metric: str) -> pd.DataFrame:
    """method x set table of 'mean +- std (n seeds)' strings for one metric."""
    sel = long[long.metric == metric]
    g = sel.groupby(["method", "set"], sort=False).value
    stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.count()})
    cells = stats.apply(lambda s: f"{s['mean']:.3f} ± {s['std']:.3f} (n={int(s['n'])})", axis=1)
    sets = list(dict.fromkeys(sel.set))
    table = cells.unstack("set")
    return table.reindex(index=list(dict.fromkeys(sel.method)),
                         columns=[s for s in sets if s != "average"] + ["average"])


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


def strategy_table(runs: pd.DataFrame, set_name: str = "arithmetic") -> pd.DataFrame:
    """One row per run of the strategies task: method, seed, the entropy of its evaluation
    samples' strategy labels before and after RL (bits, thrlab.chains) and the share of each
    label after, from eval_before/eval_after."""
    rows = []
    for r in runs.itertuples():
        ev = {p: read_json(Path(r.run_dir) / f"eval_{p}.json")["sets"][set_name]
              for p in ("before", "after")}
        if "strategy_entropy" not in ev["after"]:
            raise ValueError(f"{r.run_dir} has no strategy labels: they exist on the strategies "
                             "task (arith_op=mul_chain) only")
        counts = ev["after"]["strategy_counts"]
        total = sum(counts.values())
        rows.append({"method": r.method, "seed": r.seed,
                     "entropy_before": ev["before"]["strategy_entropy"],
                     "entropy_after": ev["after"]["strategy_entropy"],
                     "problems": ev["after"].get("n_passk_problems", 0),
                     **{f"share_{k}": v / total for k, v in sorted(counts.items())}})
    return pd.DataFrame(rows).fillna(0.0)


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


def passk_curve(mean: dict) -> tuple[list[int], list[float]]:
    """(ks, pass@k) from an evaluation's `mean` dict, sorted by k."""
    ks = sorted(int(k.split("@")[1]) for k in mean if k.startswith("pass@"))
    return ks, [mean[f"pass@{k}"] for k in ks]


def _passk_tag(cfg: Config, samples: int, limit: int, adapter: bool) -> str:
    key = hashlib.sha256(json.dumps(list(cfg.eval_sets)).encode()).hexdigest()[:6]
    return f"{'adapter' if adapter else 'base'}-n{samples}-l{limit}-{key}"


def _passk_config(run_dir: Path, samples: int, limit: int, sets) -> Config:
    cfg = Config.from_json((run_dir / "config.json").read_text())
    return cfg.replace(eval_samples=samples, eval_limit=limit, eval_passk_limit=0,
                       **({"eval_sets": tuple(sets)} if sets else {}))


def passk_eval(run_dir: str | Path, *, samples: int, limit: int, sets: list[str] | None = None,
               adapter: bool = True, progress: bool = False) -> dict:
    """Evaluate a finished run's adapter (or, adapter=False, its base model) with `samples`
    samples on `limit` problems per set (0 = all); cached in run_dir/extra_eval/<tag>.json."""
    run_dir = Path(run_dir)
    cfg = _passk_config(run_dir, samples, limit, sets)
    path = run_dir / "extra_eval" / f"{_passk_tag(cfg, samples, limit, adapter)}.json"
    if path.exists():
        return read_json(path)
    from .experiment import eval_problems, evaluate_run, load_run_policy

    problems = eval_problems(cfg)
    model, tok = load_run_policy(cfg, run_dir / "adapter" if adapter else None, progress)
    res = evaluate_run(model, tok, cfg, problems, progress)  # the run's eval seed: paired with it
    write_json(path, res)
    return res


def exploration_evals(runs: pd.DataFrame, *, samples: int, limit: int,
                      sets: list[str] | None = None) -> tuple[str, str]:
    """(phase after RL, phase of the start model): the eval files (in each run folder, without
    .json) that hold E4's Pass@K. samples = 0: the runs' own eval_after / eval_before (the
    testbed presets sample 64 per problem in every run); otherwise passk_eval's extra evaluations
    of every run's adapter and start model with `samples` samples on `limit` problems, made
    where missing. Either way each run's two files are paired (one eval seed)."""
    if not samples:
        return "eval_after", "eval_before"
    for r in runs.itertuples():
        for adapter in (True, False):
            passk_eval(r.run_dir, samples=samples, limit=limit, sets=sets, adapter=adapter)
    cfg = _passk_config(Path(runs.run_dir.iloc[0]), samples, limit, sets)
    return tuple(f"extra_eval/{_passk_tag(cfg, samples, limit, a)}" for a in (True, False))


def passk_by_phase(runs: pd.DataFrame, phase: str, sets: list[str] | None = None,
                   method: str | None = None) -> pd.DataFrame:
    """Long table (method, seed, k, value) of the pass@k curve in each run's `phase` file,
    averaged over `sets` (all when None); method renames every row (e.g. "base")."""
    rows = []
    for r in runs.itertuples():
        res = read_json(Path(r.run_dir) / f"{phase}.json")
        vals = res["mean"] if not sets else {
            k: float(np.mean([res["sets"][n][k] for n in sets])) for k in res["sets"][sets[0]]
            if k.startswith("pass@")}
        ks, ys = passk_curve(vals)
        rows += [{"method": method or r.method, "seed": r.seed, "k": k, "value": v}
                 for k, v in zip(ks, ys)]
    return pd.DataFrame(rows)


def passk_table(runs: pd.DataFrame, *, samples: int, limit: int, sets: list[str] | None = None,
                base: bool = True) -> pd.DataFrame:
    """Long table (method, seed, k, value) of passk_eval for every run, averaged over sets;
    base=True adds the model before RL (adapter off) as method "base", from the first run."""
    rows = []
    todo = [(r.method, r.seed, r.run_dir, True) for r in runs.itertuples()]
    if base:
        todo.insert(0, ("base", int(runs.seed.iloc[0]), runs.run_dir.iloc[0], False))
    for method, seed, run_dir, adapter in todo:
        res = passk_eval(run_dir, samples=samples, limit=limit, sets=sets, adapter=adapter)
        ks, vals = passk_curve(res["mean"])
        rows += [{"method": method, "seed": seed, "k": k, "value": v} for k, v in zip(ks, vals)]
    return pd.DataFrame(rows)


def passk_long(long: pd.DataFrame, set_name: str = "average") -> pd.DataFrame:
    """The pass@k rows of an eval_table as (method, seed, k, value)."""
    sel = long[(long.set == set_name) & long.metric.str.startswith("pass@")]
    return sel.assign(k=sel.metric.str.split("@").str[1].astype(int))[
        ["method", "seed", "k", "value"]]


def curves_from_long(table: pd.DataFrame, x: str = "k", y: str = "value"):
    """(xs, ys, err) dicts per method from a long (method, seed, x, y) table: mean and std
    over seeds at each x."""
    xs, ys, err = {}, {}, {}
    for m, d in table.groupby("method", sort=False):
        g = d.groupby(x)[y]
        xs[m], ys[m], err[m] = list(g.mean().index), g.mean().tolist(), g.std(ddof=0).tolist()
    return xs, ys, err


# -- training metrics ----------------------------------------------------------------------------
def metrics_table(runs: pd.DataFrame) -> pd.DataFrame:
    """All metrics.jsonl rows of the runs, with method and seed columns."""
    frames = [pd.DataFrame(RunDir(r.run_dir).metrics()).assign(method=r.method, seed=r.seed)
              for r in runs.itertuples()]
    return pd.concat(frames, ignore_index=True)


def curve_by_method(metrics: pd.DataFrame, key: str, window: int = 1):
    """(xs, ys, err) dicts per method: mean over seeds per step of a metric (rolling mean of
    `window` steps first), err = std over seeds."""
    xs, ys, err = {}, {}, {}
    for m, d in metrics.groupby("method", sort=False):
        w = d.pivot_table(index="step", columns="seed", values=key).rolling(window, 1).mean()
        xs[m], ys[m], err[m] = w.index.tolist(), w.mean(1).tolist(), w.std(1, ddof=0).tolist()
    return xs, ys, err


def runtime_table(metrics: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """method x phase (runs.STEP_PHASES, disjoint): mean wall seconds per step; 'other' = step
    minus the phases."""
    out = {}
    for r in runs.drop_duplicates("method").itertuples():
        d = metrics[(metrics.method == r.method) & (metrics["train/skipped"] == 0)]
        row = {p: float(d[f"time/{p}"].fillna(0.0).mean()) if f"time/{p}" in d else 0.0
               for p in STEP_PHASES}
        row["other"] = max(0.0, float(d["time/step"].mean()) - sum(row.values()))
        out[r.method] = row
    return pd.DataFrame(out).T


def probe_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table (method, seed, step, change) of each run's likelihood probe: probe/loglik in
    metrics.jsonl minus its step-0 value in probe.json (runs made with probe_every > 0)."""
    rows = []
    for r in runs.itertuples():
        probe = read_json(Path(r.run_dir) / "probe.json")
        base = {"method": r.method, "seed": r.seed, "probe_size": probe["size"]}
        rows += [dict(base, step=0, change=0.0)]
        rows += [dict(base, step=m["step"], change=m["probe/loglik"] - probe["start"])
                 for m in RunDir(r.run_dir).metrics() if "probe/loglik" in m]
    return pd.DataFrame(rows)


# -- per-token THR records (E1, E7) --------------------------------------------------------------
def token_rows(record: dict, method: str = "", seed: int = 0) -> list[dict]:
    """One dict per token of one saved step (thrlab.anatomy record): method, seed, step, group,
    row, pos, token, thr, entropy, reward, mixed (its group has both rewards: THR is defined)."""
    rewards = {}
    for resp in record["rows"]:
        rewards.setdefault(resp["group"], set()).add(resp["reward"])
    return [{"method": method, "seed": seed, "step": record.get("step", 0), "group": resp["group"],
             "row": i, "pos": k, "token": t, "thr": v, "entropy": e, "reward": resp["reward"],
             "mixed": len(rewards[resp["group"]]) > 1}
            for i, resp in enumerate(record["rows"])
            for k, (t, v, e) in enumerate(zip(resp["tokens"], resp["thr"], resp["entropy"]))]


def token_table(runs: pd.DataFrame) -> pd.DataFrame:
    """token_rows of every saved step of every run (thr_tokens/ of THR runs)."""
    from .anatomy import load_token_records

    rows = [row for r in runs.itertuples() for rec in load_token_records(r.run_dir)
            for row in token_rows(rec, r.method, r.seed)]
    if not rows:
        raise ValueError("no THR token records in these runs: they are saved by THR runs "
                         "(thr_mode != off) every thr_save_every steps")
    return pd.DataFrame(rows)


def top_overlap(score_a, score_b, frac: float) -> float:
    """Fraction of the top-`frac` tokens by score_a that are also top-`frac` by score_b
    (n = max(1, round(frac * N)) tokens each; ties broken by position)."""
    a = np.asarray(score_a, float)
    return top_k_overlap(a, np.asarray(score_b, float), max(1, int(round(frac * len(a)))))


def top_k_overlap(a, b, k: int) -> float:
    """Fraction of the k largest entries of b that are among the k largest of a (ties broken
    by position). Random ranking expects k / n."""
    top_a = np.argsort(-np.asarray(a, float), kind="stable")[:k]
    top_b = np.argsort(-np.asarray(b, float), kind="stable")[:k]
    return len(set(top_a) & set(top_b)) / k


def overlap_curve(tokens: pd.DataFrame, fracs: list[float]) -> pd.DataFrame:
    """Overlap of top-|THR| with top-entropy tokens per selection fraction, over the saved
    batches (one per run and step; tokens of mixed groups only): mean, std, n batches."""
    tok = tokens[tokens.mixed]
    rows = []
    for f in fracs:
        vals = [top_overlap(d.thr.abs(), d.entropy, f)
                for _, d in tok.groupby(["method", "seed", "step"]) if len(d)]
        rows.append({"frac": f, "overlap": float(np.mean(vals)) if vals else float("nan"),
                     "std": float(np.std(vals)) if vals else float("nan"), "n": len(vals)})
    return pd.DataFrame(rows)


def mass_share(values, top_frac: float) -> float:
    """Share of sum(|values|) held by the top `top_frac` of entries by |value|."""
    v = np.sort(np.abs(np.asarray(values, float)))[::-1]
    if not len(v) or v.sum() == 0:
        return float("nan")
    return float(v[:max(1, int(round(top_frac * len(v))))].sum() / v.sum())


def example_group(tokens: pd.DataFrame) -> list[tuple[str, list[str], list[float]]]:
    """The saved mixed group with the largest |THR| (ties: first), as (title, tokens, thr) rows."""
    tok = tokens[tokens.mixed]
    if tok.empty:
        return []
    best = tok.loc[tok.thr.abs().idxmax()]
    g = tok[(tok.method == best.method) & (tok.seed == best.seed) & (tok.step == best.step)
            & (tok.group == best.group)]
    return [(f"{'correct' if d.reward.iloc[0] == 1 else 'wrong'}", d.token.tolist(),
             d.thr.tolist()) for _, d in g.groupby("row", sort=True)]


# -- notebook outputs ----------------------------------------------------------------------------
def write_outputs(out_dir: str | Path, *, figures: list[str], run_ids: list[str],
                  headline: dict, tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Write out_dir/outputs.json (figures, run ids, headline values) and tables as CSV; the
    reproduce command publishes the figures listed here, the tests assert on the values."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (tables or {}).items():
        df.to_csv(out / f"{name}.csv")
    missing = [f for f in figures if not (out / f"{f}.png").exists()]
    if missing:
        raise FileNotFoundError(f"figures not written to {out}: {missing}")
    path = out / "outputs.json"
    write_json(path, {"figures": list(figures), "run_ids": sorted(set(run_ids)),
                      "headline": headline, "tables": sorted(tables or {})})
    return path
