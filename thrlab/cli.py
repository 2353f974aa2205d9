"""Command line: `python -m thrlab train|evaluate|presets`, thin wrappers over thrlab.experiment.

    python -m thrlab train --preset tiny [--method thr_explore] --set steps=40 [--run-dir DIR]
    python -m thrlab evaluate --preset tiny [--adapter runs/<id>/adapter] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import sys


def _config(args):
    from .config import from_preset, parse_overrides

    return from_preset(args.preset, args.method, **parse_overrides(args.set or []))


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="tiny", help="named preset (see `python -m thrlab presets`)")
    p.add_argument("--method", default="grpo",
                   help="objective recipe from thrlab.config.METHODS (e.g. thr_explore, kl_cov)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field; repeatable (unknown keys are rejected)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_train(args) -> int:
    from .experiment import format_summary, run_experiment

    cfg = _config(args)
    summary = run_experiment(cfg, args.run_dir, runs_root=args.runs_root, progress=not args.quiet)
    from pathlib import Path

    run_dir = args.run_dir or str(Path(args.runs_root) / cfg.run_id())
    print(format_summary(summary))
    print(f"wall time: {summary['wall_s']:.0f} s")
    print(f"run folder: {run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate
    from .experiment import eval_problems, load_run_policy, make_grade_fn
    from .runs import write_json

    cfg = _config(args)
    model, tok = load_run_policy(cfg, args.adapter, progress=not args.quiet)
    res = evaluate(model, tok, eval_problems(cfg), cfg, grade_fn=make_grade_fn(cfg),
                   progress=not args.quiet)
    if args.out:
        write_json(args.out, res)
    print(json.dumps(res["mean"], indent=2))
    return 0


def cmd_presets(args) -> int:
    from .config import METHODS, PRESETS, from_preset

    for name in PRESETS:
        c = from_preset(name)
        print(f"{name:<24} model={c.model} lr={c.lr} lora_r={c.lora_r} "
              f"P={c.prompts_per_step} G={c.group_size} steps={c.steps} "
              f"max_new_tokens={c.max_new_tokens}")
    print("\nmethods (--method NAME):")
    for name, recipe in METHODS.items():
        print(f"{name:<24} " + (" ".join(f"{k}={v}" for k, v in recipe.items()) or "(defaults)"))
    return 0


def main(argv=None) -> int:
    from .config import field_docs

    docs = "\n".join(f"  {k:<24} {v}" for k, v in field_docs().items())
    ap = argparse.ArgumentParser(prog="thrlab", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="config fields (use with --set):\n" + docs)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="evaluate, GRPO-train, evaluate (resumable run folder)")
    _common(t)
    t.add_argument("--run-dir", default=None, help="run folder (default runs/<run_id>)")
    t.add_argument("--runs-root", default="runs", help="parent of derived run folders")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("evaluate", help="greedy accuracy and pass@k of a model (+ adapter)")
    _common(e)
    e.add_argument("--adapter", default=None, help="a run's adapter/ folder to load")
    e.add_argument("--out", default=None, help="write the results JSON here")
    e.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("presets", help="list the named presets and method recipes")
    p.set_defaults(fn=cmd_presets)
    args = ap.parse_args(argv)
    from .errors import ThrlabError

    try:
        return args.fn(args)
    except (ThrlabError, ValueError, TypeError, FileNotFoundError) as err:
        print(f"thrlab: error: {err}", file=sys.stderr)
        return 2
