"""The CPU testbed study of one preset, read back from its run folders: is plain GRPO in the
narrowing regime, what did the study cost, how many seeds per CPU-hour.

    python benchmarks/testbed.py --preset narrowing [--runs-root runs] [--seeds 0 1 2 3 4]
    python benchmarks/testbed.py --preset strategies --json
    python benchmarks/testbed.py --preset narrowing --replicate 5 6 7 8 9   # a second seed set

Reads the finished runs of the preset in the runs root (what `make reproduce ARGS="--preset
NAME"` made with the study budget of thrlab.study.STUDY_BUDGETS; nothing is trained here), for
the study's seeds: for GRPO, the change from the start model
of greedy accuracy and Pass@K at every K (paired by seed and problem, 95% intervals), and on the
strategies task the strategy entropy before and after; then the CPU seconds of every run (its own
wall time at one thread: training plus evaluations), their sum, and seeds per CPU-hour (one seed
of the whole grid: every method once). `--replicate SEEDS` also reads a second seed set of the
same study (`make reproduce ARGS="--preset NAME -p seeds=[5,6,7,8,9]"`) and prints every claim on
the first set, the second and both pooled, with whether the two sets' verdicts agree, whether
each set's estimate lies inside the other's interval, and whether the second (confirmatory) set
confirms it. Verdicts follow thrlab.study.verdict: directional claims Holm-adjusted over the
study's family, comparable claims by equivalence within a stated margin, "not resolved" with the
interval's bound. Prints tables and, on its last line, JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# A study run has every field its preset sets (presets.PRESETS[preset]) at the preset's value;
# others (e.g. a design measurement at another schedule or without the probe) are not the study's.

def study_runs(preset: str, runs_root: str, seeds: list[int]):
    """The finished study runs of `preset` for `seeds` in runs_root: one row per run (method,
    seed, lr, run_id, run_dir, wall_s, train_s). method is thrlab.study.run_label: the recipe at
    the preset's lr, "<method>@<f>lr" on the frontier's lr ladder, study.MATCHED for GRPO at the
    step-size control's lr (measured on the first seed set's ladder, study.matched_control_lr);
    "llama:" methods are E6's Llama-architecture runs."""
    import pandas as pd

    from thrlab import study
    from thrlab.config import Config
    from thrlab.presets import PRESETS, preset_config
    from thrlab.runs import RunDir, read_json

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
        rows.append({"method": arch + study.run_label(cfg), "seed": cfg.seed, "lr": cfg.lr,
                     "run_id": d.name, "run_dir": str(d), "wall_s": s["wall_s"],
                     "train_s": s["train_wall_s"]})
    if not rows:
        raise SystemExit(f"no finished {preset} runs of seeds {seeds} in {runs_root}; "
                         f"run make reproduce ARGS=\"--preset {preset}\" first")
    runs = pd.DataFrame(rows)
    ladder = {f"grpo@{f:g}lr" for f in study.LR_FACTORS} | {"grpo", "thr_p0"}
    if runs.method.str.fullmatch(r"grpo@[0-9.e+-]+lr").any() and ladder <= set(runs.method):
        first = runs[runs.seed.isin(study.STUDY_SEED_SETS[0])]
        if ladder <= set(first.method):
            lr = study.matched_control_lr(first)["lr"]
            off = ~runs.method.isin(ladder) & runs.method.str.startswith("grpo@")
            runs.loc[off & (runs.lr - lr).abs().lt(1e-12), "method"] = study.MATCHED
    dup = runs[runs.duplicated(["method", "seed"], keep=False)]
    if len(dup):
        raise SystemExit(f"two runs of one method and seed: {dup.run_dir.tolist()}; move one out "
                         f"of {runs_root}")
    return runs


def _reading(c) -> str:
    """A claim's verdict in words: 'not resolved' names the interval's bound, 'equivalent',
    'not shown' and 'different' the margin (points; bits for strategy entropy)."""
    scale, unit = (1, " bits") if c["metric"] == "strategy_entropy" else (100, " points")
    v = c["verdict"]
    if v == "not resolved":
        word = "at most" if c["direction"] > 0 else "at least"
        return f"not resolved: the effect is {word} {scale * c['bound']:+.1f}{unit}"
    if c["direction"] == 0 and v != "one seed: mechanics only":
        return f"{v} (margin +-{scale * c['margin']:.0f}{unit})"
    return v


def _cell(c) -> str:
    """One claim's difference, interval and verdict, in points (bits for strategy entropy)."""
    scale, unit = (1, " bits") if c["metric"] == "strategy_entropy" else (100, "")
    return (f"{scale * c['diff']:+.1f}{unit} [{scale * c['ci_low']:+.1f}, {scale * c['ci_high']:+.1f}]"
            f": {_reading(c)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="narrowing")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: the study budget's seeds")
    ap.add_argument("--replicate", type=int, nargs="+", default=None, metavar="SEED",
                    help="a second seed set of the same study: claims on both and pooled")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()

    from thrlab import paper, study
    from thrlab.runs import read_json

    own = paper.preset_config(args.preset)
    seeds = args.seeds or study.STUDY_BUDGETS[args.preset]["params"]["seeds"]
    runs = study_runs(args.preset, args.runs_root, seeds)
    grpo = runs[runs.method == "grpo"]
    print(f"{len(runs)} runs: " + ", ".join(f"{m} x {n}" for m, n in
                                           runs.method.value_counts(sort=False).items()))
    ks = sorted(int(k.split("@")[1]) for k in read_json(Path(grpo.run_dir.iloc[0]) /
                                                         "eval_after.json")["mean"]
                if k.startswith("pass@"))
    gains = study.gain_table(grpo, ["greedy_acc"] + [f"pass@{k}" for k in ks])
    print(f"GRPO after minus start ({len(seeds)} seeds; 95% intervals over seeds and problems):")
    print(gains[["metric", "before", "after", "diff", "ci_low", "ci_high", "problems"]]
          .round(4).to_string(index=False))
    out = {"preset": args.preset, "seeds": seeds,
           "grpo_gain": gains.drop(columns=["method"]).to_dict("records")}
    top = gains[gains.metric == f"pass@{ks[-1]}"].iloc[0]
    greedy = gains[gains.metric == "greedy_acc"].iloc[0]
    out["greedy_rises"] = bool(greedy.ci_low > 0)
    out["passk_narrows"] = bool(top["diff"] <= 0)
    narrows = out["passk_narrows"]
    if own.arith_op == "mul_chain":
        from thrlab.stats import seed_difference

        div = paper.strategy_table(grpo)
        r = seed_difference(div.entropy_before, div.entropy_after)
        out["strategy_entropy"] = {"before": float(div.entropy_before.mean()),
                                   "after": float(div.entropy_after.mean()), "diff": r["mean"],
                                   "ci": [r["ci_low"], r["ci_high"]]}
        out["strategies_collapse"] = bool(r["ci_high"] < 0)
        narrows = narrows or out["strategies_collapse"]
        print(f"strategy entropy (bits) before {out['strategy_entropy']['before']:.3f}"
              f", after GRPO {out['strategy_entropy']['after']:.3f} (change {r['mean']:+.3f}, "
              f"95% interval over seeds [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}])")
    out["narrowing"] = bool(out["greedy_rises"] and narrows)
    claims = study.claims_table(runs)
    print(f"\nthe paper's claims (method minus baseline, {len(seeds)} seeds, paired by seed and "
          "problem; 95% interval; p two-sided, Holm-adjusted over the directional claims; "
          "comparable claims by equivalence, 90% interval inside the margin; MDE at 80% power):")
    print("| experiment | claim | metric | difference [95% interval] | p (Holm) | MDE | "
          "seeds x problems | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for c in claims.itertuples():
        if c.metric == "strategy_entropy":  # bits, one number per run
            cells = (f"{c.metric} (bits)", f"{c.diff:+.2f} [{c.ci_low:+.2f}, {c.ci_high:+.2f}]",
                     f"{c.mde:.2f}", f"{c.seeds} seeds")
        else:  # points
            cells = (c.metric, f"{100 * c.diff:+.1f} [{100 * c.ci_low:+.1f}, "
                     f"{100 * c.ci_high:+.1f}]", f"{100 * c.mde:.1f}", f"{c.seeds} x {c.problems}")
        p = "-" if c.direction == 0 or c.p_holm != c.p_holm else f"{c.p_holm:.3f}"  # NaN
        cells = (*cells[:2], p, *cells[2:])
        print(f"| {c.experiment} | {c.claim} | " + " | ".join(cells) + f" | "
              f"{_reading(c._asdict())} |")
    out["claims"] = claims.to_dict("records")
    cpu_s = float(runs.wall_s.sum())
    per_seed = cpu_s / len(seeds)
    out.update(runs=len(runs), cpu_s=cpu_s, cpu_s_per_seed=per_seed,
               seeds_per_cpu_hour=3600 / per_seed, mean_run_s=float(runs.wall_s.mean()),
               mean_train_s=float(runs.train_s.mean()))
    if args.replicate:
        again = study.claims_table(study_runs(args.preset, args.runs_root, args.replicate))
        pooled = study.claims_table(study_runs(args.preset, args.runs_root,
                                               sorted(set(seeds) | set(args.replicate))))
        rep = study.replication(claims, again, pooled)
        out["replication"] = {"seeds": args.replicate, "claims": rep,
                              "same_verdict": sum(r["same_verdict"] for r in rep),
                              "confirmed": sum(r["confirmed"] for r in rep),
                              "inside": sum(r["inside"] for r in rep), "of": len(rep)}
        print(f"\nreplication: seeds {seeds} vs {args.replicate}, and pooled")
        print("| experiment | claim | metric | first set | second set | pooled | same verdict | "
              "each inside the other's interval |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rep:
            print(f"| {r['experiment']} | {r['claim']} | {r['metric']} | {_cell(r['first'])} | "
                  f"{_cell(r['second'])} | {_cell(r['pooled'])} | "
                  f"{'yes' if r['same_verdict'] else 'no'} | {'yes' if r['inside'] else 'no'} |")
        print(f"{out['replication']['confirmed']} of {len(rep)} claims confirmed on the second "
              "set (reproduced or equivalent on both); "
              f"{out['replication']['same_verdict']} of {len(rep)} claims keep their verdict; "
              f"{out['replication']['inside']} of {len(rep)} estimates lie inside each other's "
              "interval")
    print(f"\nnarrowing regime (greedy up; Pass@{ks[-1]} at or below the start, or the "
          f"strategies collapse): {out['narrowing']}")
    print(f"{len(runs)} runs, {cpu_s / 60:.1f} CPU-minutes at one thread each (mean run "
          f"{out['mean_run_s']:.0f} s, of which training {out['mean_train_s']:.0f} s); one seed of "
          f"the grid costs {per_seed / 60:.1f} CPU-minutes: {out['seeds_per_cpu_hour']:.2f} seeds "
          "per CPU-hour")
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
