"""What each method's update does under AdamW, side by side: gradient and update norms, distance
from the start adapter, KL from the start policy, and the mask controls' overlap with THR's mask.

    python benchmarks/mechanics.py                                  # narrowing, 12 steps, seed 0
    python benchmarks/mechanics.py --seeds 0 1 --steps 24
    python benchmarks/mechanics.py --preset tiny --steps 2 --methods grpo grpo_mass_matched
    python benchmarks/mechanics.py --seeds 0 1 --methods thr_p0 --match thr_p0 thr_explore

Every method of `--methods` (a thrlab.train.presets.METHODS recipe, or `grpo@lr/N`: GRPO at the
preset's lr divided by N, the step-size reference) trains `--steps` GRPO steps from the preset's
cold start with each seed: the same LoRA initialisation and the same first batch for every
method of a seed. Per run, from its metrics rows (thrlab.train.drift): the median pre-clip gradient
norm, the first step's update norm (the mean of its optimizer steps) and the sum over all
optimizer steps, the distance from the start adapter at the end, the mean `thr/control_overlap`
of a mask control, and at the end the KL from the start policy on the first `--probe-prompts`
held-out prompts (G samples each from the final policy). `--match METHOD ...` adds GRPO at
lr x 2 and lr / 1, 2, 4, 8 and prints the lr at which GRPO's seed-mean distance and KL equal
each METHOD's: the learning rate of a step-size control (thrlab.core.stats.matched_lr). No
evaluation: this is mechanics, and one or two seeds show mechanics, never a result. One torch
thread. Prints a table, then JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch


def _config(preset: str, method: str, seed: int, steps: int):
    from thrlab.train.presets import from_preset

    if method.startswith("grpo@lr/"):
        base = from_preset(preset, "grpo", seed=seed, steps=steps, threads=1)
        return base.replace(lr=base.lr / float(method.split("/")[1]))
    return from_preset(preset, method, seed=seed, steps=steps, threads=1)


def measure(cfg, inputs, probe_prompts: int) -> dict:
    """Train cfg's steps in a throwaway folder; the mechanism numbers of the run."""
    from thrlab.train.drift import kl_probe
    from thrlab.train.experiment import _seed_phase, build_trainer

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        _seed_phase(cfg, "init")  # as run_experiment: the seed's LoRA initialisation
        tr = build_trainer(cfg, inputs.path, d, problems=inputs.problems)
        _seed_phase(cfg, "train")
        rows = [tr.train_step() for _ in range(cfg.steps)]
        tr.model.eval()
        kl = kl_probe(tr.model, tr.tok, cfg, next(iter(inputs.sets.values()))[:probe_prompts])
    stepped = [r for r in rows if not r["train/skipped"]]
    overlap = [r["thr/control_overlap"] for r in stepped if "thr/control_overlap" in r]
    return {"grad_norm_median": statistics.median(r["train/grad_norm"] for r in stepped),
            "update_norm_first": stepped[0]["train/update_norm"],
            "update_norm_sum": sum(r["train/update_norm"] * r["train/opt_steps"]
                                   for r in stepped),
            "distance": rows[-1]["train/distance"], "kl_start": kl,
            "control_overlap": statistics.mean(overlap) if overlap else None,
            "steps_skipped": len(rows) - len(stepped), "wall_s": time.perf_counter() - t0}


def _matched(results: list[dict], preset: str, ladder: list[str], methods: list[str]) -> dict:
    """{method: {distance|kl_start: {target, lr} or {target, error}}}: the lr at which GRPO's
    seed-mean of each quantity equals the method's seed-mean (stats.matched_lr)."""
    from thrlab.core.stats import matched_lr
    from thrlab.train.presets import from_preset

    def mean(method, key):
        return statistics.mean(r[key] for r in results if r["method"] == method)

    base = from_preset(preset, "grpo").lr
    lrs = [base / (float(m.split("/")[1]) if "/" in m else 1.0) for m in ladder]
    out = {}
    for method in methods:
        out[method] = {}
        for key in ("distance", "kl_start"):
            target = mean(method, key)
            try:
                got = {"lr": matched_lr(lrs, [mean(m, key) for m in ladder], target)}
            except ValueError as e:
                got = {"error": str(e)}
            out[method][key] = {"target": target, **got}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="narrowing")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+",
                    default=["grpo", "grpo_mass_matched", "grpo@lr/4", "thr_p0", "thr_random_mask",
                             "thr_lowprob_mask", "thr_entropy_mask", "thr_explore",
                             "thr_exploit"])
    ap.add_argument("--probe-prompts", type=int, default=16)
    ap.add_argument("--match", nargs="+", default=[], metavar="METHOD",
                    help="also run GRPO at lr x 2, / 1, 2, 4, 8 and report, for each METHOD, the "
                         "lr at which GRPO's mean distance and mean KL from the start equal "
                         "METHOD's (the step-size control, stats.matched_lr)")
    args = ap.parse_args(argv)
    ladder = (["grpo@lr/0.5", "grpo", "grpo@lr/2", "grpo@lr/4", "grpo@lr/8"] if args.match
              else [])
    args.methods = list(dict.fromkeys(args.methods + args.match + ladder))
    from thrlab.train.experiment import check_inputs
    from thrlab.train.runs import environment_info

    torch.set_num_threads(1)
    results = []
    for seed in args.seeds:
        inputs = None
        for method in args.methods:
            cfg = _config(args.preset, method, seed, args.steps)
            inputs = inputs or check_inputs(cfg, progress=False)  # one cold start per preset
            res = {"method": method, "seed": seed, **measure(cfg, inputs, args.probe_prompts)}
            results.append(res)
            print(f"{method:<18} seed {seed}: {res['wall_s']:.0f} s", file=sys.stderr)
    env = environment_info()
    print(f"{args.preset}, {args.steps} steps, seeds {args.seeds}, one thread ({env['cpu']}, "
          f"AVX512-BF16: {env['avx512_bf16']})")
    print("| method | seed | grad norm, median | update norm, step 1 / sum | distance from start "
          "| KL from start | overlap with THR's mask |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        ov = "-" if r["control_overlap"] is None else f"{r['control_overlap']:.2f}"
        print(f"| {r['method']} | {r['seed']} | {r['grad_norm_median']:.3f} | "
              f"{r['update_norm_first']:.4f} / {r['update_norm_sum']:.3f} | {r['distance']:.3f} | "
              f"{r['kl_start']:.4f} | {ov} |")
    matched = _matched(results, args.preset, ladder, args.match)
    for m, got in matched.items():
        print(f"GRPO's lr matching {m}: " + ", ".join(
            f"{k} {v['target']:.4f} at lr {v['lr']:.3g}" if v.get("lr") else f"{k}: {v['error']}"
            for k, v in got.items()))
    print(json.dumps({"preset": args.preset, "steps": args.steps, "seeds": args.seeds,
                      "env": env, "runs": results, "matched_lr": matched}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
