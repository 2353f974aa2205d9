"""Exploration comparison (E4) on the embedded tiny task: Pass@K curves of GRPO, THR p < 0 and the
baselines (Pass@K-mixed, KL-Cov, entropy forking), over seeds.

    python benchmarks/exploration_baselines.py [--seeds 0 1 2] [--methods grpo thr_explore ...]
        [--eval-limit 100] [--eval-samples 256] [--set key=value ...]

Each (method, seed) is a full `run_experiment` (reused when its run folder is complete), evaluated
with `eval_samples` samples per problem so pass@k is estimated for k = 1, 2, 4, ... eval_samples.
Prints a table of pass@k (mean and std over seeds, and the change from the shared start model)
and, on its last line, JSON.

Scaled for tiny batches (~700 completion tokens per step): KL-Cov's `cov_ratio` is 1e-2 instead of
the paper's 2e-4 (2e-4 of a tiny batch is under one token; at the paper's ~6M tokens per batch it
is ~1,200). With 2 mini-batches of ~350 tokens, 1e-2 still selects only 3-4 tokens each; the E4
notebook uses 0.1 (~0.6 tokens per response, the paper's density) instead. Every method takes the
same `--mini-batches` optimizer steps per rollout batch (default 2; KL-Cov's penalty acts from the
second), so no method gets more updates than another.
"""
from __future__ import annotations

import argparse
import json
import statistics

from thrlab.config import from_preset, parse_overrides
from thrlab.experiment import run_experiment

METHODS = ("grpo", "thr_explore", "passk_mixed", "kl_cov", "entropy_fork")
TINY_SCALED = {"kl_cov": {"cov_ratio": 1e-2}, "clip_cov": {"cov_ratio": 1e-2}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--eval-limit", type=int, default=100)
    ap.add_argument("--eval-samples", type=int, default=256)
    ap.add_argument("--mini-batches", type=int, default=2,
                    help="optimizer steps per rollout batch, for every method")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--runs-root", default="runs")
    args = ap.parse_args()
    rows = []
    for method in args.methods:
        for seed in args.seeds:
            over = dict(TINY_SCALED.get(method, {}), seed=seed, sft_control=False,
                        eval_limit=args.eval_limit, eval_samples=args.eval_samples,
                        mini_batches=args.mini_batches,
                        **parse_overrides(args.set))
            cfg = from_preset("tiny", method, **over)
            s = run_experiment(cfg, runs_root=args.runs_root, progress=False)
            rows.append({"method": method, "seed": seed, "run_id": cfg.run_id(),
                         "wall_s": s["wall_s"], "before": s["eval_before"],
                         "after": s["eval_after"]})
            print(json.dumps({k: rows[-1][k] for k in ("method", "seed", "run_id", "wall_s")}),
                  flush=True)
    ks = sorted((int(k[5:]) for k in rows[0]["after"] if k.startswith("pass@")))
    keys = ["greedy_acc"] + [f"pass@{k}" for k in ks]
    start = rows[0]["before"]  # the cold-started model, the same for every run
    curves = {}
    for method in args.methods:
        sub = [r["after"] for r in rows if r["method"] == method]
        curves[method] = {k: {"mean": statistics.fmean(r[k] for r in sub),
                              "std": statistics.pstdev([r[k] for r in sub])} for k in keys}
    print(f"\n{'metric':<11}{'start':>8}" + "".join(f"{m:>20}" for m in args.methods))
    for k in keys:
        print(f"{k:<11}{start[k]:>8.3f}" + "".join(
            f"{curves[m][k]['mean']:>12.3f} ± {curves[m][k]['std']:.3f}" for m in args.methods))
    print(f"(mean ± population std over seeds {args.seeds}; {args.eval_limit} held-out problems, "
          f"{args.eval_samples} samples each)")
    print(json.dumps({"start": {k: start[k] for k in keys}, "curves": curves, "rows": rows,
                      "seeds": args.seeds, "eval_limit": args.eval_limit,
                      "eval_samples": args.eval_samples}))


if __name__ == "__main__":
    main()
