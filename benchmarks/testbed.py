"""The CPU testbed study of one preset, read back from its run folders: is plain GRPO in the
narrowing regime, what did the study cost, how many seeds per CPU-hour.

    python benchmarks/testbed.py --preset narrowing [--runs-root runs] [--seeds 0 1 2 3 4]
    python benchmarks/testbed.py --preset strategies --json

Reads the runs `make reproduce ARGS="--preset NAME"` made (the study grid of
thrlab.paper.STUDY_BUDGETS; nothing is trained here): for GRPO, the change from the start model
of greedy accuracy and Pass@K at every K (paired by seed and problem, 95% intervals), and on the
strategies task the strategy entropy before and after; then the CPU seconds of every run (its own
wall time at one thread: training plus evaluations), their sum, and seeds per CPU-hour (one seed
of the whole grid: every method once). Prints tables and, on its last line, JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

STUDY_METHODS = ["grpo", "thr_p0", "thr_explore", "thr_exploit", "thr_random_mask",
                 "grpo_mass_matched", "passk_mixed", "kl_cov", "gspo_token", "gspo_token_thr"]
LLAMA_METHODS = ["grpo", "thr_exploit", "thr_explore"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="narrowing")
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="default: the study budget's seeds")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()

    import pandas as pd

    from thrlab import paper
    from thrlab.runs import RunDir, read_json

    budget = paper.STUDY_BUDGETS[args.preset]
    seeds = args.seeds or budget["seeds"]
    over = dict(budget["overrides"])
    cells = [(m, s, paper.grid_config(args.preset, m, s, dict(
        over, **({"cov_ratio": 0.1} if m == "kl_cov" else {})))) for s in seeds
        for m in STUDY_METHODS]
    llama_preset, llama_over = paper.llama_swap(args.preset)
    cells += [(f"llama:{m}", s, paper.grid_config(llama_preset, m, s, dict(over, **llama_over)))
              for s in seeds for m in LLAMA_METHODS]
    rows, missing = [], []
    for method, seed, cfg in cells:
        run = RunDir(Path(args.runs_root) / cfg.run_id())
        if not run.complete:
            missing.append(f"{method} seed {seed} ({cfg.run_id()})")
            continue
        s = read_json(run / "summary.json")
        rows.append({"method": method, "seed": seed, "run_id": cfg.run_id(),
                     "run_dir": str(run.path), "wall_s": s["wall_s"],
                     "train_s": s["train_wall_s"]})
    if missing:
        raise SystemExit(f"{len(missing)} study runs are not finished: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''}; run make reproduce "
                         f"ARGS=\"--preset {args.preset}\" first")
    runs = pd.DataFrame(rows)
    grpo = runs[runs.method == "grpo"]
    ks = sorted(int(k.split("@")[1]) for k in read_json(Path(grpo.run_dir.iloc[0]) /
                                                         "eval_after.json")["mean"]
                if k.startswith("pass@"))
    gains = paper.gain_table(grpo, ["greedy_acc"] + [f"pass@{k}" for k in ks])
    print(f"GRPO after minus start ({len(seeds)} seeds; 95% intervals over seeds and problems):")
    print(gains[["metric", "before", "after", "diff", "ci_low", "ci_high", "problems"]]
          .round(4).to_string(index=False))
    out = {"preset": args.preset, "seeds": seeds,
           "grpo_gain": gains.drop(columns=["method"]).to_dict("records")}
    top = gains[gains.metric == f"pass@{ks[-1]}"].iloc[0]
    greedy = gains[gains.metric == "greedy_acc"].iloc[0]
    out["narrowing"] = bool(greedy.ci_low > 0 and top["diff"] <= 0)
    if paper.preset_config(args.preset).arith_op == "mul_chain":
        div = paper.strategy_table(grpo)
        out["strategy_entropy"] = {"before": float(div.entropy_before.mean()),
                                   "after": float(div.entropy_after.mean())}
        print(f"strategy entropy (bits) before {out['strategy_entropy']['before']:.3f}, after "
              f"GRPO {out['strategy_entropy']['after']:.3f}")
    cpu_s = float(runs.wall_s.sum())
    per_seed = cpu_s / len(seeds)
    out.update(runs=len(runs), cpu_s=cpu_s, cpu_s_per_seed=per_seed,
               seeds_per_cpu_hour=3600 / per_seed, mean_run_s=float(runs.wall_s.mean()),
               mean_train_s=float(runs.train_s.mean()))
    print(f"\nnarrowing regime (greedy up, Pass@{ks[-1]} at or below the start): "
          f"{out['narrowing']}")
    print(f"{len(runs)} runs, {cpu_s / 60:.1f} CPU-minutes at one thread each (mean run "
          f"{out['mean_run_s']:.0f} s, of which training {out['mean_train_s']:.0f} s); one seed of "
          f"the grid costs {per_seed / 60:.1f} CPU-minutes: {out['seeds_per_cpu_hour']:.2f} seeds "
          "per CPU-hour")
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
