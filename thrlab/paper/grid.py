"""The experiment grid behind the paper notebooks (docs/method.md section 5) and the tables their
figures are drawn from; the paired comparisons and claims are thrlab.paper.study.

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

from thrlab.core.stats import seed_difference
from thrlab.train.config import Config
from thrlab.train.presets import from_preset, preset_config, run_id
from thrlab.train.runs import STEP_PHASES, RunDir, read_json, write_json

# What a notebook's runs train, by its `budget` parameter (one place; every parameters cell used to
# copy the dict). "notebook": the tiny reproduction's, no SFT control, 200 held-out problems, 30
# GRPO steps (half the tiny default: all of `make reproduce` in ~20 min on a shared 2-core CPU),
# one torch thread (not in the run id; up to 8x faster than 2 on a busy CPU). "preset": the preset
# as defined (a paper preset on a GPU; the testbed studies, which study.STUDY_BUDGETS select). Every
# notebook defaults to "notebook", so runs are shared across notebooks.
BUDGETS = {"notebook": {"sft_control": False, "eval_limit": 200, "steps": 30, "threads": 1},
           "preset": {}}


def with_budget(budget: str, overrides: dict | None = None) -> dict:
    """The config overrides of a notebook's grid: BUDGETS[budget], then its own overrides."""
    if budget not in BUDGETS:
        raise ValueError(f"budget={budget!r}; choose one of {sorted(BUDGETS)} (thrlab.paper.grid.BUDGETS)")
    return {**BUDGETS[budget], **(overrides or {})}


# E4's Pass@K average, as in the paper's Table 2: the competition sets only.
E4_PASSK_SETS = ("aime24", "aime25", "amc23")


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
            cells.append((method, seed, cfg, Path(runs_root) / run_id(cfg)))
    if workers > 1:
        todo = [c for c in cells if not RunDir(c[3]).complete]
        # torch, imported when called: the tables of this module read run folders without it
        from thrlab.train.experiment import resolve_model_path
        from thrlab.train.tiny import tiny_model_dir

        models = {str(tiny_model_dir(c[2])) if c[2].model == "tiny" else c[2].model: c[2]
                  for c in todo}
        for cfg in models.values():
            resolve_model_path(cfg, progress)  # cold-start a tiny model once, not per worker
        _run_parallel(todo, workers, Path(runs_root))
    else:
        # torch, imported when called: the tables of this module read run folders without it
        from thrlab.train.experiment import run_experiment

        for method, seed, cfg, run_dir in cells:
            reused = RunDir(run_dir).complete
            t0 = time.time()
            run_experiment(cfg, run_dir, progress=progress)
            print(f"{method:<16} seed {seed}: {run_id(cfg)} "
                  f"({'reused' if reused else f'trained in {time.time() - t0:.0f} s'})")
    return pd.DataFrame([{"method": m, "seed": s, "run_id": run_id(c), "run_dir": str(d)}
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
                conf = Path(tmp) / f"{run_id(cfg)}.json"
                conf.write_text(cfg.to_json())
                log = open(logs / f"{run_id(cfg)}.log", "w")
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
                print(f"{method:<16} seed {seed}: {run_id(cfg)} ({status})", flush=True)
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


def strategy_table(runs: pd.DataFrame, set_name: str = "arithmetic") -> pd.DataFrame:
    """One row per run of the strategies task: method, seed, the entropy of its evaluation
    samples' strategy labels before and after RL (bits, thrlab.tasks.chains) and the share of each
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
    # torch, imported when called: the tables of this module read run folders without it
    from thrlab.train.experiment import eval_problems, evaluate_run, load_run_policy

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
        xs[m], ys[m] = w.index.tolist(), w.mean(axis=1).tolist()
        err[m] = w.std(axis=1, ddof=0).tolist()
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


def seed_differences(table: pd.DataFrame, column: str, baseline: str = "grpo") -> pd.DataFrame:
    """Each method's difference to `baseline` in a per-run number (a column of one row per run,
    e.g. strategy_table's), paired by seed, with the 95% t-interval over seeds (NaN with one
    seed); rows shaped like paired_table's (metric = column)."""

    base = table[table.method == baseline].set_index("seed")[column]
    rows = []
    for method, d in table.groupby("method", sort=False):
        if method == baseline:
            continue
        x = d.set_index("seed")[column].reindex(base.index)
        r = (seed_difference(base.to_numpy(), x.to_numpy()) if len(base) > 1 else
             {"mean": float((x - base).mean()), "ci_low": float("nan"), "ci_high": float("nan"),
              "se": float("nan")})
        rows.append({"method": method, "metric": column, "value": float(x.mean()),
                     baseline: float(base.mean()), "diff": r["mean"], "ci_low": r["ci_low"],
                     "ci_high": r["ci_high"], "se": r["se"],
                     "df": len(base) - 1 if len(base) > 1 else float("nan"), "seeds": len(base),
                     "problems": int(table.get("problems", pd.Series([0])).max())})
    return pd.DataFrame(rows)
