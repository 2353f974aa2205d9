"""GRPO vs equal-compute SFT control on the embedded tiny default, over seeds and learning rates.

    python benchmarks/tiny_grpo_seeds.py [--seeds 0 1 2] [--lrs 1e-4 3e-4] [--set key=value ...]

Prints a table and, on its last line, JSON. Each cell is a full `run_experiment` (reused if its run
folder is complete), so the numbers in README.md / RESULTS.md regenerate from this script.
"""
from __future__ import annotations

import argparse
import json
import statistics

from thrlab.train.config import parse_overrides
from thrlab.train.presets import from_preset, run_id
from thrlab.train.experiment import run_experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--runs-root", default="runs")
    args = ap.parse_args()
    rows = []
    for lr in args.lrs:
        for seed in args.seeds:
            cfg = from_preset("tiny", lr=lr, seed=seed, **parse_overrides(args.set))
            s = run_experiment(cfg, runs_root=args.runs_root, progress=False)
            rows.append({"lr": lr, "seed": seed, "run_id": run_id(cfg), "wall_s": s["wall_s"],
                         **{f"{ph}/{k}": s[f"eval_{ph}"][k]
                            for ph in ("before", "after", "sft_control")
                            for k in ("greedy_acc", "pass@1", "pass@8")}})
            print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'lr':>8} {'seed':>4} | {'greedy before':>13} {'GRPO':>6} {'SFT ctl':>7} | "
          f"{'pass@8 before':>13} {'GRPO':>6} {'SFT ctl':>7}")
    for r in rows:
        print(f"{r['lr']:>8.0e} {r['seed']:>4} | {r['before/greedy_acc']:>13.3f} "
              f"{r['after/greedy_acc']:>6.3f} {r['sft_control/greedy_acc']:>7.3f} | "
              f"{r['before/pass@8']:>13.3f} {r['after/pass@8']:>6.3f} "
              f"{r['sft_control/pass@8']:>7.3f}")
    summary = {}
    for lr in args.lrs:
        sub = [r for r in rows if r["lr"] == lr]
        gain = [r["after/greedy_acc"] - r["before/greedy_acc"] for r in sub]
        summary[str(lr)] = {"greedy_gain_mean": statistics.mean(gain),
                            "greedy_gain_min": min(gain), "n_seeds": len(sub)}
    print(json.dumps({"rows": rows, "summary": summary}))


if __name__ == "__main__":
    main()
