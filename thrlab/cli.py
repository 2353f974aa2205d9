"""Command line: `python -m thrlab train|evaluate|presets`, thin wrappers over thrlab.train.experiment.

    python -m thrlab train --preset tiny [--method thr_explore] --set steps=40 [--run-dir DIR]
    python -m thrlab train --config runs/<id>/config.json [--run-dir DIR]  (a saved config)
    python -m thrlab evaluate --run-dir runs/<id> [--out FILE]       (the run's own config)
    python -m thrlab evaluate --preset tiny [--adapter runs/<id>/adapter] [--out FILE]

Expected failures (bad config or data, missing files, a run folder in use or of another config,
no CUDA, a model not cached offline) print one line, `thrlab: error: ...`, and exit with status 2;
--debug or THRLAB_DEBUG=1 shows the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import textwrap
from pathlib import Path

from thrlab.core.errors import ConfigError, ThrlabError
from thrlab.train.config import Config, field_docs, parse_overrides
from thrlab.train.presets import METHODS, PRESETS, from_preset, preset_config, run_id
from thrlab.train.runs import RunDir, write_json


def _config(args):
    overrides = parse_overrides(args.set or [])
    if getattr(args, "config", None):
        if args.preset or args.method:
            raise ConfigError("--config is a whole config; drop --preset/--method (--set still "
                              "overrides fields)")
        try:
            text = Path(args.config).read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read --config {args.config}: {err.strerror}") from None
        return Config.from_json(text).replace(**overrides)
    return from_preset(args.preset or "tiny", args.method or "grpo", **overrides)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None,
                   help="named preset (default tiny; see `python -m thrlab presets`)")
    p.add_argument("--method", default=None,
                   help="objective recipe from thrlab.train.presets.METHODS (default grpo; e.g. "
                        "thr_explore, kl_cov)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field; repeatable (unknown keys are rejected)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_train(args) -> int:
    # imported per command: `thrlab --help` and typos answer without loading torch
    from thrlab.train.experiment import format_summary, run_experiment

    cfg = _config(args)
    run_dir = Path(args.run_dir) if args.run_dir else Path(args.runs_root) / run_id(cfg)
    finished = RunDir(run_dir).complete  # run_experiment refuses it if it holds another config
    summary = run_experiment(cfg, run_dir, progress=not args.quiet)
    print(format_summary(summary))
    if finished:
        print(f"reused run folder {run_dir}: finished earlier with this config (its wall time "
              f"{summary['wall_s']:.0f} s); nothing was run")
    else:
        print(f"wall time: {summary['wall_s']:.0f} s")
        print(f"run folder: {run_dir}")
    return 0


def cmd_evaluate(args) -> int:
    # imported per command: `thrlab --help` and typos answer without loading torch
    from thrlab.train.experiment import check_inputs, evaluate_run, load_run_policy, run_config

    if args.run_dir:
        if args.preset or args.method or args.adapter:
            raise ConfigError("--run-dir evaluates the run's own config and adapter; drop "
                              "--preset/--method/--adapter (--set still overrides fields)")
        cfg = run_config(args.run_dir).replace(**parse_overrides(args.set or []))
        adapter = Path(args.run_dir) / "adapter"
    else:
        cfg, adapter = _config(args), args.adapter
    if adapter:
        # imported per command: `thrlab --help` and typos answer without loading torch
        from thrlab.train.checkpoint import check_adapter

        check_adapter(adapter, cfg)  # before the eval sets and the model
    sets = check_inputs(cfg, progress=not args.quiet, train=False).sets
    model, tok = load_run_policy(cfg, adapter, progress=not args.quiet)
    res = evaluate_run(model, tok, cfg, sets, progress=not args.quiet)
    if args.out:
        write_json(args.out, res)
    print(json.dumps(res["mean"], indent=2))
    return 0


def _value(v) -> str:
    """A config value as --set takes it (tuples comma-joined, bools lower-case)."""
    if isinstance(v, tuple):
        return ",".join(map(str, v))
    return str(v).lower() if isinstance(v, bool) else str(v)


def cmd_presets(args) -> int:
    default = Config()
    print("presets (--preset NAME), with every field that differs from the Config defaults:")
    for name in PRESETS:
        c = preset_config(name)
        diff = [f"{f.name}={_value(getattr(c, f.name))}" for f in dataclasses.fields(Config)
                if f.name != "preset" and getattr(c, f.name) != getattr(default, f.name)]
        print(textwrap.fill(" ".join(diff) or "(the Config defaults)", 100,
                            initial_indent=f"  {name:<24} ", subsequent_indent=" " * 27,
                            break_long_words=False, break_on_hyphens=False))
    print("\nmethods (--method NAME), overrides applied on top of the preset:")
    for name, recipe in METHODS.items():
        print(f"  {name:<24} " + (" ".join(f"{k}={_value(v)}" for k, v in recipe.items())
                                  or "(the preset as is)"))
    return 0


def cmd_plan(args) -> int:
    # imported per command: `thrlab --help` and typos answer without loading torch
    from thrlab.train import memory

    cfg = _config(args)
    p = memory.plan(cfg, memory.architecture_of(cfg.model), args.prompt_tokens)
    capacity = args.capacity_gb * 1e9
    print(memory.format_plan(p, capacity))
    warnings = memory.over(p, capacity)
    for w in warnings:
        print(f"WARNING: {w}")
    return 1 if warnings else 0


def _fields_help() -> str:
    return "config fields (use with --set KEY=VALUE):\n" + "\n".join(
        f"  {k:<24} {v}" for k, v in field_docs().items())


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    ap = argparse.ArgumentParser(prog="thrlab", description=__doc__, formatter_class=raw,
                                 epilog=_fields_help())
    ap.add_argument("--debug", action="store_true",
                    help="show the traceback of an expected failure (or set THRLAB_DEBUG=1)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="evaluate, GRPO-train, evaluate (resumable run folder)",
                       formatter_class=raw, epilog=_fields_help())
    _common(t)
    t.add_argument("--config", default=None, metavar="FILE",
                   help="a config JSON (e.g. a run's config.json) instead of --preset/--method")
    t.add_argument("--run-dir", default=None, help="run folder (default <runs-root>/<run_id>)")
    t.add_argument("--runs-root", default="runs", help="parent of derived run folders")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("evaluate", help="greedy accuracy and pass@k of a model (+ adapter)",
                       formatter_class=raw, epilog=_fields_help())
    _common(e)
    e.add_argument("--run-dir", default=None,
                   help="a run folder: evaluate its adapter with its own config and eval seed "
                        "(reproduces its eval_after.json)")
    e.add_argument("--adapter", default=None, help="an adapter/ folder to load")
    e.add_argument("--out", default=None, help="write the results JSON here")
    e.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("presets", help="list the presets (every non-default field) and methods")
    p.set_defaults(fn=cmd_presets)
    m = sub.add_parser("plan", help="peak GPU memory per phase of a config (no weights loaded); "
                       "exit 1 when a phase does not fit", formatter_class=raw,
                       epilog=_fields_help())
    _common(m)
    m.add_argument("--capacity-gb", type=float, default=80.0, help="the card's memory (GB)")
    m.add_argument("--prompt-tokens", type=int, default=1800,
                   help="longest prompt a batch holds (default: MATH's longest, ~1,800 tokens "
                        "with the rehearsal's tokenizer)")
    m.set_defaults(fn=cmd_plan)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.fn(args)
    except ThrlabError as err:
        if args.debug or os.environ.get("THRLAB_DEBUG", "0") not in ("", "0"):
            raise
        print(f"thrlab: error: {err}", file=sys.stderr)
        return 2
