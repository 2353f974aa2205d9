"""Rehearse a paper preset on CPU at real width: two GRPO steps with THR and a small evaluation
through the preset's own code path, on its model's architecture with random weights and a few
layers (thrlab.plan.rehearsal says what differs from a real run and why).

    python benchmarks/rehearse.py --preset qwen2.5-math-1.5b            # 2 layers, 2 prompts x G
    python benchmarks/rehearse.py --preset qwen2.5-math-7b --layers 1 --new-tokens 32 --json
    python benchmarks/rehearse.py --all                                  # every paper preset
    python benchmarks/rehearse.py --preset qwen2.5-math-1.5b --device cuda --layers 0 \
        --new-tokens 256                                  # the GPU check: full depth on a GPU

Prints, for the second step (the optimizer's state exists by then, as in every later step),
per-phase seconds, the phase's peak tracked tensor bytes (torch.profiler's memory trace
over step.Timers' phases, plus the tensors live before: weights, quantisation state) beside
thrlab.train.memory's plan at the same shapes (the plan's error), the process's peak RSS per stage
(load, step, evaluation), and the plan of the preset's real run (full depth and batch, on CUDA) as
`estimate_gb`. The last line is JSON with at least preset, completed, vocab_size, hidden_size,
phases, estimate_gb. The architecture comes from thrlab.train.model_cards (the model's config.json at
the revision the card names); MATH rows from --data-dir (default $THRLAB_DATA_DIR, else
../shared/data of a development checkout).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

from thrlab.train.presets import PRESETS
from thrlab.plan.rehearsal import PAPER_PRESETS, rehearse
from thrlab.train.runs import environment_info


def default_data_dir() -> str:
    here = Path(__file__).resolve().parents[1]
    return os.environ.get("THRLAB_DATA_DIR") or str(here.parent / "shared" / "data")


def table(r: dict) -> str:
    lines = [f"{r['preset']}: {r['model']} @ {r['card_revision'][:12]}, V={r['vocab_size']}, "
             f"H={r['hidden_size']}, {r['layers']} of {r['full_layers']} layers, "
             f"{r['prompts']} prompts x G={r.get('group_size')} x {r['new_tokens']} new tokens, "
             f"{r.get('compute_dtype')}; completed={r['completed']}"]
    if r.get("phases"):
        lines.append(f"  {'phase':<10}{'s':>8}{'tracked GB':>12}{'plan GB':>10}{'error':>8}")
        for k, p in r["phases"].items():
            tr, pl = p["tracked_gb"], p["plan_gb"]
            err = f"{(pl - tr) / tr:+.0%}" if tr and pl else ""
            lines.append(f"  {k:<10}{p['s']:8.2f}{tr or float('nan'):12.3f}"
                         f"{pl or float('nan'):10.3f}{err:>8}")
        lines.append("  peak RSS MB: " + ", ".join(f"{k} {v:.0f}"
                                                    for k, v in r["rss_peak_mb"].items()))
        lines.append("  real run's plan (full depth and batch, CUDA) GB: " + ", ".join(
            f"{k} {v:.1f}" for k, v in r["estimate_gb"].items()))
    if r.get("error"):
        lines.append(f"  FAILED: {r['error']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=PAPER_PRESETS)
    ap.add_argument("--all", action="store_true", help="every paper preset, one after another")
    ap.add_argument("--layers", type=int, default=2, help="decoder layers (0 = the model's own)")
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--eval-problems", type=int, default=2)
    ap.add_argument("--eval-samples", type=int, default=2)
    ap.add_argument("--dtype", default="", help="override the preset's compute_dtype")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cuda: rehearse on a GPU (with --layers 0 at full depth)")
    ap.add_argument("--data-dir", default=default_data_dir())
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args(argv)
    if not (args.preset or args.all):
        ap.error("name --preset or --all")
    if args.all:  # one process per preset: each one's peak RSS is its own
        results = []
        for preset in PAPER_PRESETS:
            argv_one = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--all"]
            out = subprocess.run([sys.executable, __file__, "--preset", preset, *argv_one],
                                 stdout=subprocess.PIPE, text=True)
            lines = out.stdout.strip().splitlines()
            print("\n".join(lines[:-1]), flush=True)
            results.append(json.loads(lines[-1]) if lines else
                           {"preset": preset, "completed": False, "error": f"rc {out.returncode}"})
        print(json.dumps({"presets": results}))
        return 0 if all(r["completed"] for r in results) else 1
    preset = args.preset
    try:
        r = rehearse(preset, layers=args.layers, prompts=args.prompts,
                     new_tokens=args.new_tokens, eval_problems=args.eval_problems,
                     eval_samples=args.eval_samples, dtype=args.dtype, threads=args.threads,
                     data_dir=args.data_dir, device=args.device)
    except Exception as e:  # a rehearsal that fails is the finding: report it
        traceback.print_exc()
        r = {"preset": preset, "model": PRESETS[preset].get("model"), "card_revision": "",
             "completed": False, "error": f"{type(e).__name__}: {e}", "vocab_size": None,
             "hidden_size": None, "phases": {}, "estimate_gb": {}, "layers": args.layers,
             "full_layers": None, "prompts": args.prompts, "new_tokens": args.new_tokens}
    print(table(r), flush=True)
    env = environment_info()
    print(json.dumps({**r, "cpu": env["cpu"], "avx512_bf16": env["avx512_bf16"],
                      "torch": env["packages"]["torch"], "threads": args.threads}))
    return 0 if r["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
