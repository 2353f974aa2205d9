"""Where a GRPO step spends its time: per-phase seconds, generation tokens/s, peak RSS, THR share.

    python benchmarks/step_breakdown.py --preset tiny --json          # the embedded tiny model
    python benchmarks/step_breakdown.py --preset tiny --set mini_batches=2   # off-policy: old pass
    python benchmarks/step_breakdown.py --quick --json                # smoke run (random model)

Runs thrlab's own GRPOTrainer (`train_step`, the real rollout, grading, reference pass and update)
with THR on (`thr_mode=thr`, `thr_p=0.1`, exact full vocabulary) on the preset's model, and reads
the phase timers the trainer logs. Phases per step (seconds, median over the measured steps after
`--warmup` discarded ones):

  generate     sampling P x G completions (`time/generate`)
  reward       grading them (`time/reward`)
  old_logp     old-policy log-probs + hidden states (`time/old_logp`; 0 on on-policy steps, where
               the update pass is the old-policy pass and THR reads its hidden states)
  ref_logp     reference log-probs, adapters disabled (`time/ref_logp`)
  thr          token hidden rewards and the reweighting (`time/thr`)
  update       forward + backward + optimizer step, THR excluded (`time/update - time/thr`
               on on-policy steps, where THR runs inside the update)
  other        the rest of `time/step` (advantages, bookkeeping)

`gen_tokens_per_s` counts real completion tokens (EOS included, padding not) per generation second;
`thr_overhead_frac` = sum of THR time / sum of step time over the measured steps (and the median of
the per-step ratio). `peak_rss_mb` is the process's peak resident memory (ru_maxrss), model load
included. The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHASES = ("generate", "reward", "old_logp", "ref_logp", "thr", "update", "other")


def machine_info() -> dict:
    """CPU model, core count, torch threads and versions: the context every timing needs."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            bf16 = "avx512_bf16" in f.read()
    except OSError:
        bf16 = None
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "avx512_bf16": bf16,
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def random_tiny_model(cfg, folder: str) -> str:
    """Save a randomly initialised model of the tiny preset's shape (no cold start) to folder."""
    from thrlab.tiny import build_model, build_tokenizer

    tok = build_tokenizer()
    build_model(cfg, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_trainer(cfg, model_path: str, run_dir: str, problems=None, grade_fn=None):
    """A GRPOTrainer with its model loaded from model_path; problems and grader default to cfg's."""
    from thrlab.experiment import make_grade_fn, train_problems
    from thrlab.model import load_policy, resolve_device
    from thrlab.runs import RunDir
    from thrlab.trainer import GRPOTrainer

    model, tok = load_policy(cfg, model_path, resolve_device(cfg))
    return GRPOTrainer(cfg, model, tok, problems or train_problems(cfg), RunDir(run_dir),
                       grade_fn or make_grade_fn(cfg))


def phase_row(stats: dict, batch: int) -> dict:
    """Per-phase seconds of one logged step (keys of PHASES plus step, tokens)."""
    g = lambda k: float(stats.get(f"time/{k}", 0.0))  # noqa: E731
    thr = g("thr")
    on_policy_thr = g("old_logp") == 0.0  # THR then runs inside the update's timer
    row = {"generate": g("generate"), "reward": g("reward"), "old_logp": g("old_logp"),
           "ref_logp": g("ref_logp"), "thr": thr,
           "update": g("update") - (thr if on_policy_thr else 0.0), "step": g("step")}
    row["other"] = row["step"] - sum(row[k] for k in PHASES if k != "other")
    row["tokens"] = float(stats.get("train/completion_len", 0.0)) * batch
    return row


def summarise(rows: list[dict]) -> dict:
    med = {k: statistics.median(r[k] for r in rows) for k in PHASES + ("step",)}
    mean = {k: statistics.fmean(r[k] for r in rows) for k in PHASES + ("step",)}
    gen = sum(r["generate"] for r in rows)
    return {"phases_s": med, "phases_mean_s": mean,
            "phase_frac": {k: mean[k] / mean["step"] for k in PHASES},
            "gen_tokens_per_s": sum(r["tokens"] for r in rows) / gen if gen else 0.0,
            "thr_overhead_frac": sum(r["thr"] for r in rows) / sum(r["step"] for r in rows),
            "thr_overhead_frac_median": statistics.median(r["thr"] / r["step"] for r in rows)}


def run(cfg, model_path: str, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tr = make_trainer(cfg, model_path, os.path.join(d, "run"))
        B = cfg.prompts_per_step * cfg.group_size
        rows = []
        for i in range(warmup + steps):
            stats = tr.train_step()
            if i >= warmup:
                rows.append(phase_row(stats, B))
    return {"rows": rows, **summarise(rows)}


def format_table(res: dict) -> str:
    med, frac = res["phases_s"], res["phase_frac"]
    lines = [f"{'phase':<10} {'median s':>9} {'share':>7}"]
    for k in PHASES:
        lines.append(f"{k:<10} {med[k]:>9.4f} {100 * frac[k]:>6.1f}%")
    lines.append(f"{'step':<10} {med['step']:>9.4f}")
    lines.append(f"generation {res['gen_tokens_per_s']:.0f} tokens/s; THR share "
                 f"{100 * res['thr_overhead_frac']:.2f}% (median per step "
                 f"{100 * res['thr_overhead_frac_median']:.2f}%); peak RSS "
                 f"{res['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--method", default="thr_exploit",
                    help="a thrlab.config.METHODS recipe (default: THR on, p = +0.1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, repeatable (e.g. --set mini_batches=2)")
    ap.add_argument("--steps", type=int, default=10, help="measured steps")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    ap.add_argument("--random-model", action="store_true",
                    help="a random model of the tiny shape instead of the cold-started one")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: random model, 2 prompts x G=4, 2 steps after 1 warm-up")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()

    from thrlab.config import from_preset, parse_overrides
    from thrlab.experiment import resolve_model_path

    over = dict(sft_control=False, thr_save_every=0, save_every=10**6, seed=0)
    if args.quick:
        over.update(prompts_per_step=2, group_size=4)
        args.steps, args.warmup, args.random_model = 2, 1, True
    over.update(parse_overrides(args.set))
    cfg = from_preset(args.preset, args.method, **over)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as d:
        if args.random_model:
            path = random_tiny_model(cfg, d)
        else:
            path = resolve_model_path(cfg, progress=False)
        t0 = time.perf_counter()
        res = run(cfg, path, args.steps, args.warmup)
        wall = time.perf_counter() - t0
    res = {"preset": cfg.preset, "method": args.method, "overrides": over,
           "model": "random" if args.random_model else cfg.model,
           "shape": {"P": cfg.prompts_per_step, "G": cfg.group_size, "T": cfg.max_new_tokens,
                     "B": cfg.prompts_per_step * cfg.group_size},
           "steps": args.steps, "warmup": args.warmup, "wall_s": wall, **res,
           "peak_rss_mb": peak_rss_mb(), "machine": machine_info()}
    print(format_table(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
