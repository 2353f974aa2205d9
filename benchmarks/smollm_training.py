"""Training mechanics on real weights: GRPO and THR (p = 0, p = -0.1) on SmolLM2-135M-Instruct
(preset smollm2-135m, make smollm), one seed each: mechanics, not a claim.

    python benchmarks/smollm_training.py                       # ~1 h on 2 cores (3 runs)
    python benchmarks/smollm_training.py --runs-root DIR       # reuse (or resume) runs made there

Each run: 16 steps of 4 prompts x 8 samples (<= 96 tokens) at lr 1e-4, LoRA r = 16 on the fp32
base; evaluated before and after on 64 held-out word_add1 problems (greedy) and 8 samples on 32
of them. Per method: the training reward of the first and last 4 steps and the share of malformed
answers (no `#### n`) among the samples, held-out greedy accuracy and Pass@8 after minus before
with the 95% t-interval over problems (of this one run: training randomness is not in it), THR's
share of kept tokens and of advantage mass, and seconds per step by phase.
Prints a table and, on its last line, JSON.
"""
from __future__ import annotations

import argparse
import json
import platform

import numpy as np

from thrlab.core.stats import problem_difference
from thrlab.paper import grid
from thrlab.paper.paired import problem_scores

PHASES = ("time/generate", "time/old_logp", "time/thr", "time/update", "time/step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs-root", default="runs")
    ap.add_argument("--methods", nargs="+", default=["grpo", "thr_p0", "thr_explore"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    runs = grid.run_grid("smollm2-135m", args.methods, [args.seed], {"threads": args.threads},
                         args.runs_root, progress=True)
    metrics = grid.metrics_table(runs)
    rows = []
    for r in runs.itertuples():
        m = metrics[metrics.method == r.method].sort_values("step")
        row = {"method": r.method, "run_id": r.run_id,
               "reward_first4": float(m["train/reward_mean"].head(4).mean()),
               "reward_last4": float(m["train/reward_mean"].tail(4).mean()),
               "malformed_first4": float(m["reward/parse_failures"].head(4).mean() / 32),
               "malformed_last4": float(m["reward/parse_failures"].tail(4).mean() / 32)}
        one = runs[runs.method == r.method]
        for metric in ("greedy_acc", "pass@8"):
            before = problem_scores(one, metric, "eval_before")[r.method][0]
            after = problem_scores(one, metric, "eval_after")[r.method][0]
            d = problem_difference(before, after)
            row.update({f"{metric}_before": float(np.mean(before)),
                        f"{metric}_after": float(np.mean(after)),
                        f"{metric}_gain": d["mean"], f"{metric}_ci": [d["ci_low"], d["ci_high"]],
                        f"{metric}_problems": len(before)})
        if "thr/frac_kept" in m:
            row["thr_frac_kept"] = float(m["thr/frac_kept"].mean())
            row["thr_adv_mass_kept"] = float((m["thr/adv_mass_after"]
                                              / m["thr/adv_mass_before"]).mean())
        row.update({p: float(m[p].mean()) for p in PHASES if p in m})
        rows.append(row)
    cols = ["method", "reward_first4", "reward_last4", "malformed_first4", "malformed_last4",
            "greedy_acc_before", "greedy_acc_after", "greedy_acc_gain", "pass@8_before",
            "pass@8_after", "pass@8_gain", "thr_frac_kept", "thr_adv_mass_kept", *PHASES]
    print(" | ".join(c.replace("time/", "s_") for c in cols))
    for row in rows:
        print(" | ".join(f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "-"))
                         for c in cols))
        print("   greedy gain CI", np.round(row["greedy_acc_ci"], 3),
              "pass@8 gain CI", np.round(row["pass@8_ci"], 3))
    print(json.dumps({"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                      "rows": rows}))


if __name__ == "__main__":
    main()
