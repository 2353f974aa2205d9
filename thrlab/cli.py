"""Command line: `thrlab train|evaluate|presets|plan` (or `python -m thrlab ...`), thin wrappers
over thrlab.train.experiment and thrlab.train.memory.

    thrlab train --preset tiny [--method thr_explore] --set steps=40 [--run-dir DIR]
    thrlab train --config runs/<id>/config.json [--run-dir DIR]    (a saved config)
    thrlab evaluate --run-dir runs/<id> [--out FILE]                (the run's own config)
    thrlab evaluate --preset tiny [--adapter runs/<id>/adapter] [--out FILE]
    thrlab presets                                                  (each preset's values; methods)
    thrlab plan --preset NAME [--capacity-gb GB] [--prompt-tokens N]  (peak GPU memory per phase)

Expected failures (bad config or data, missing files, a run folder in use or of another config,
no CUDA, a model not cached offline) print one line, `thrlab: error: ...`, and exit with status 2;
--debug or THRLAB_DEBUG=1 shows the traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import runpy
import sys
import textwrap
from pathlib import Path

from thrlab.core.errors import ConfigError, ThrlabError
from thrlab.train.config import SECTIONS, Config, field_docs, parse_overrides
from thrlab.train.presets import METHODS, PRESETS, from_preset, preset_config, run_id
from thrlab.train.runs import RunDir, write_json


def _load_tasks(paths) -> None:
    """Run each Python file of --tasks, so the Tasks it registers (thrlab.tasks.task.register)
    are names task= and eval_sets= can use in this command."""
    for path in paths or []:
        if not Path(path).is_file():
            raise ConfigError(f"--tasks {path}: no such file; give a Python file that calls "
                              "thrlab.tasks.task.register (docs/adding-a-task.md)")
        runpy.run_path(path, run_name="__thrlab_tasks__")


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
    p.add_argument("--tasks", action="append", metavar="FILE",
                   help="a Python file that registers Tasks (thrlab.tasks.task.register), whose "
                        "names task= and eval_sets= may then use; repeatable")
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


# What `thrlab presets` prints for every preset, tiny included (whose values are the Config
# defaults): the model, the task, the training budget and the evaluation. Other fields follow
# where a preset changes them.
PRESET_KEYS = ("model", "task", "steps", "prompts_per_step", "group_size", "lr", "max_new_tokens",
               "eval_sets", "eval_limit", "eval_samples", "eval_max_new_tokens")


def _wrap(text: str, head: str, indent: int = 27) -> str:
    return textwrap.fill(text, 100, initial_indent=head, subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False)


def cmd_presets(args) -> int:
    default = Config()
    print("presets (--preset NAME): each one's key values, then every other field it sets "
          "apart from\nthe Config defaults (`thrlab --help` lists every field with its default):")
    for name in PRESETS:
        c = preset_config(name)
        keys = " ".join(f"{k}={_value(getattr(c, k))}" for k in PRESET_KEYS)
        other = [f"{f.name}={_value(getattr(c, f.name))}" for f in dataclasses.fields(Config)
                 if f.name != "preset" and f.name not in PRESET_KEYS
                 and getattr(c, f.name) != getattr(default, f.name)]
        print(_wrap(keys, f"  {name:<24} "))
        print(_wrap(" ".join(other) if other else "(every other field at its Config default)",
                    " " * 27 + ("also: " if other else "")))
    print("\nmethods (--method NAME), overrides applied on top of the preset:")
    for name, recipe in METHODS.items():
        print(f"  {name:<24} " + (" ".join(f"{k}={_value(v)}" for k, v in recipe.items())
                                  or "(the preset as is)"))
    return 0


DEFAULT_CAPACITY_GB = 80.0  # one 80 GB A100/H100, the card the paper presets are sized for


def cmd_plan(args) -> int:
    """Print the plan with the assumptions it rests on: the prompt length (given, measured or
    assumed) and the capacity (given, the visible GPU's, or the default when there is none)."""
    # imported per command: `thrlab --help` and typos answer without loading torch
    import torch

    from thrlab.train import memory  # per command too: it imports torch

    cfg = _config(args)
    train_tokens, eval_tokens, prompts = memory.prompt_assumption(cfg, args.prompt_tokens)
    arch = memory.architecture_of(cfg.model, cfg)
    if args.capacity_gb is not None:
        capacity = args.capacity_gb * 1e9
        device = f"{args.capacity_gb:g} GB, as given (--capacity-gb)"
    elif torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        capacity = float(props.total_memory)
        device = (f"{capacity / 1e9:.1f} GB, the visible GPU's ({props.name}); --capacity-gb GB "
                  "plans for another card")
    else:
        capacity = DEFAULT_CAPACITY_GB * 1e9
        device = (f"{DEFAULT_CAPACITY_GB:g} GB, the default, for a CUDA card: there is no "
                  "accelerator here (no CUDA GPU is visible), so on this machine the run goes on "
                  "the CPU, whose RAM this plan does not bound; --capacity-gb GB plans for "
                  "another card")
    if cfg.eval_batch_size == 0:  # what evaluate() will choose on a card of this capacity
        cfg = cfg.replace(eval_batch_size=memory.eval_batch_size_on_card(
            cfg, arch, eval_tokens, capacity))
        prompts += (f"; eval_batch_size=0: {cfg.eval_batch_size} prompts per evaluation call, "
                    f"what fits {memory.EVAL_MEMORY_FRAC:.0%} of the memory left by the model")
    p = memory.plan(cfg, arch, train_tokens, eval_prompt_tokens=eval_tokens)
    print("assumptions:")
    print(_wrap(prompts, "  prompts:   ", 13))
    print(_wrap(device, "  capacity:  ", 13))
    print(memory.format_plan(p, capacity))
    warnings = memory.over(p, capacity, cfg)
    for w in warnings:
        print(f"WARNING: {w}")
    return 1 if warnings else 0


def _fields_help() -> str:
    """Every config field, grouped by its section (thrlab.train.config.SECTIONS), with its
    default and its doc."""
    docs, default = field_docs(), Config()
    lines = ["config fields (--set KEY=VALUE), by section, with their defaults (the tiny preset):"]
    for section in SECTIONS:
        lines.append(f"\n {section.__name__}:")
        lines += [f"  {f'{k}={_value(getattr(default, k))}':<32} {docs[k]}"
                  for k in section.names()]
    lines.append("\n Config:")
    lines.append(f"  {'preset=' + default.preset:<32} {docs['preset']}; set by --preset")
    return "\n".join(lines)


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
    p = sub.add_parser("presets", help="each preset's key values and the fields it changes; "
                       "the methods")
    p.set_defaults(fn=cmd_presets)
    m = sub.add_parser("plan", help="peak GPU memory per phase of a config (no weights loaded); "
                       "exit 1 when a phase does not fit", formatter_class=raw,
                       epilog=_fields_help())
    _common(m)
    m.add_argument("--capacity-gb", type=float, default=None,
                   help="the card's memory in GB (default: the visible GPU's; without one, "
                        f"{DEFAULT_CAPACITY_GB:g})")
    m.add_argument("--prompt-tokens", type=int, default=None,
                   help="longest prompt a batch holds (default: measured from the config's own "
                        "prompts and tokenizer when both are on this machine, else "
                        "1,800, MATH's longest with the Qwen2.5 tokenizer)")
    m.set_defaults(fn=cmd_plan)
    return ap


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        _load_tasks(getattr(args, "tasks", None))
        return args.fn(args)
    except ThrlabError as err:
        if args.debug or os.environ.get("THRLAB_DEBUG", "0") not in ("", "0"):
            raise
        print(f"thrlab: error: {err}", file=sys.stderr)
        return 2
