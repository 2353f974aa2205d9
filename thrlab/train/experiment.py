"""The main job: evaluate -> GRPO (4-bit NF4 + LoRA) -> evaluate, plus an equal-compute SFT
control, all in one resumable run folder. `make demo`, the CLI and the notebooks call this.

Each phase writes its result file atomically and is skipped when the file exists, so a killed
run resumes with the same command; COMPLETE is written last. Before anything is written, the
folder is checked against the config (a folder of another config is refused, a finished one of
the same config reused) and every input that can be checked is (device, data, model, template);
the run then holds the folder's lock, so a second process refuses instead of interleaving.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NamedTuple

import torch

from thrlab.core.errors import DataError, RunFolderError, SetupError
from thrlab.core.seeds import draw_seed, stage_seed
from thrlab.core.stats import problem_difference
from thrlab.tasks.benchmarks import format_prompt
from thrlab.tasks.task import eval_task, task_of

from .checkpoint import check_adapter, load_adapter_weights, save_adapter
from .config import Config, LossConfig, OptimConfig, RolloutConfig, THRConfig, config_diff
from .evaluate import evaluate
from .model import load_policy, load_tokenizer, resolve_device
from .packaged import PACKAGED, ensure_packaged_model
from .presets import method_of, run_id
from .probes import frontier_evaluations, likelihood_probe
from .runs import RunDir, cache_root, environment_info, read_json, write_json
from .step import make_optimizer
from .tiny import ensure_tiny_model, sft_loop
from .tracking import check_tracker
from .trainer import GRPOTrainer


def eval_seed(cfg: Config) -> int:
    """The torch seed of every evaluation of cfg: a run's before, after and SFT-control phases,
    paper.passk_eval and `thrlab evaluate`.

    It depends on cfg.seed alone (common random numbers): the phases of one run, and runs of
    different methods with the same seed, draw the same sampling stream, so before/after and
    method-vs-method differences are paired rather than sampling noise (a steps=0 run evaluates
    identically before and after). The value is the former "before" seed, so eval_before files
    of earlier versions still match.
    """
    return stage_seed("eval", cfg.seed)


def evaluate_run(model, tok, cfg: Config, sets: dict, progress: bool = True) -> dict:
    """Evaluate model on sets ({name: [Problem]}) under cfg, seeded with eval_seed(cfg)."""

    torch.manual_seed(eval_seed(cfg))
    return evaluate(model, tok, sets, cfg, grade_fn=make_grade_fn(cfg), progress=progress)


def load_run_policy(cfg: Config, adapter=None, progress: bool = True):
    """(model, tok): cfg's 4-bit + LoRA policy on its device, with cfg.threads applied and, when
    given, a saved adapter folder's weights loaded (e.g. a run's `adapter/`). The adapter is
    checked against cfg before the model is loaded."""

    if adapter:
        check_adapter(adapter, cfg)
    device = resolve_device(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tok = load_policy(cfg, resolve_model_path(cfg, progress), device)
    if adapter:
        load_adapter_weights(model, adapter)
    return model, tok


def run_config(run_dir: str | Path) -> Config:
    """The config a run folder was made with (its config.json)."""
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise RunFolderError(f"{run_dir} is not a thrlab run folder (no config.json); pass a "
                             "folder made by `thrlab train`")
    return Config.from_dict(read_json(p))


def resolve_model_path(cfg: Config, progress: bool = True) -> str:
    """Path or hub id of the base model; builds the cached tiny model for model='tiny' and converts
    a packaged model (thrlab.train.packaged) once."""
    if cfg.model == "tiny":
        return str(ensure_tiny_model(cfg, progress=progress))
    if cfg.model in PACKAGED:
        return str(ensure_packaged_model(cfg.model, progress=progress))
    return cfg.model


def train_problems(cfg: Config) -> list:
    """The training problems of cfg's Task (thrlab.tasks.task)."""
    return task_of(cfg).train(cfg.seed)


def eval_problems(cfg: Config) -> dict:
    """{eval set: its held-out problems (the first eval_limit, 0 = all)}."""
    return {name: eval_task(name, cfg).heldout(cfg.eval_limit or None) for name in cfg.eval_sets}


def make_grade_fn(cfg: Config):
    """The grader of cfg's Task: its own function, else cfg's grader and answer_style."""
    return task_of(cfg).grade_fn(cfg)


class Inputs(NamedTuple):
    """What a run reads, resolved and checked before anything is written."""

    device: torch.device
    path: str  # model folder or hub id
    problems: list  # training problems ([] when not asked for)
    sets: dict  # {eval set name: [Problem]}


def build_trainer(cfg: Config, model_path: str, run_dir: str | Path, problems=None,
                  grade_fn=None):
    """A GRPOTrainer on the model at model_path (LoRA added); problems and grader default to
    cfg's (train_problems, make_grade_fn). For benchmarks and notebooks that drive steps."""

    model, tok = load_policy(cfg, model_path, resolve_device(cfg))
    return GRPOTrainer(cfg, model, tok, problems or train_problems(cfg), RunDir(run_dir),
                       grade_fn or make_grade_fn(cfg))


def check_inputs(cfg: Config, progress: bool = True, *, train: bool = True) -> Inputs:
    """Resolve and check everything cfg needs that can be checked without loading the model:
    the device, the training problems (when train) and eval sets (empty ones refused), the model
    path (the tiny model is built and cached once) and its tokenizer, and the prompt template
    rendered for one problem, and the report_to tracker's package (when train). Cheapest first,
    so a typo fails in milliseconds."""

    if train:
        check_tracker(cfg.report_to)
    device = resolve_device(cfg)
    problems = train_problems(cfg) if train else []
    sets = eval_problems(cfg)
    path = resolve_model_path(cfg, progress)
    try:
        tok = load_tokenizer(path)
    except (OSError, ValueError) as err:  # not cached offline, no such folder, not a model
        why = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SetupError(f"cannot load the tokenizer of model={cfg.model!r}: {why}. Offline? "
                         "Download the model once with network access, or set model= to a "
                         "local folder") from err
    format_prompt((problems or next(iter(sets.values())))[0].question, cfg.template, tok)
    check_readable(tok, problems[:64], f"task={cfg.task}", cfg)
    for name, ps in sets.items():
        check_readable(tok, ps[:64], f"eval set {name}", cfg)
    return Inputs(device, path, problems, sets)


def check_readable(tok, problems: list, where: str, cfg: Config) -> None:
    """Refuse problems whose text the tokenizer cannot represent (it would train and score on
    <pad>s and report 0.000 everywhere): each question and gold answer must survive encode and
    decode, whitespace aside."""
    texts = [text for p in problems for text in (p.question, p.answer)]
    ids = tok(texts, add_special_tokens=False).input_ids if texts else []
    for i, back in enumerate(tok.batch_decode(ids, skip_special_tokens=True)):
        p, text = problems[i // 2], texts[i]
        if "".join(back.split()) != "".join(text.split()):
            lost = sorted(set("".join(text.split())) - set("".join(back.split())))[:8]
            reads = (" (it reads only digits, spaces and + - * = ? : Q A)"
                     if cfg.model == "tiny" else "")
            raise DataError(
                f"model={cfg.model!r}'s tokenizer cannot represent {''.join(lost)!r} in "
                f"problem {p.id!r} of {where} ({text[:60]!r}){reads}: the run would read "
                "<pad>s. Use a model that reads your text (--set model=...; "
                "docs/your-own-data.md)")


def check_folder(run: RunDir, cfg: Config, own: Path) -> None:
    """Refuse a run folder that cannot hold cfg's run, before anything is written to it: not a
    folder, a run of another config (naming the differing keys, old -> new), or a folder of
    other files. own is cfg's default folder, suggested in the message."""
    p = run.path
    if p.exists() and not p.is_dir():
        raise RunFolderError(f"{p} is not a folder; pass a new folder, or a run folder of this "
                             "config, as --run-dir")
    if not p.is_dir():
        return
    if (p / "config.json").exists():
        diff = config_diff(read_json(p / "config.json"), cfg)
        if diff:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(diff.items())[:8])
            more = f"; and {len(diff) - 8} more" if len(diff) > 8 else ""
            raise RunFolderError(
                f"{p} holds a run of a different config ({shown}{more}); use another --run-dir, "
                f"or leave --run-dir out to use this config's own run folder {own}")
    elif any(not x.name.startswith(".") for x in p.iterdir()):  # .lock, temp files, .DS_Store
        raise RunFolderError(f"{p} is not a thrlab run folder (it holds files but no "
                             "config.json); pass a new or empty folder as --run-dir")


def _seed_phase(cfg: Config, phase: str) -> None:
    # Each training phase starts from its own seed, so a resumed run replays skipped phases'
    # RNG exactly; evaluations all use eval_seed(cfg).
    torch.manual_seed(stage_seed(phase, cfg.seed))


def _evaluate_phase(run: RunDir, name: str, cfg, model, tok, sets, progress,
                    cache: Path | None = None) -> dict:
    path = run / f"eval_{name}.json"
    if path.exists():
        return read_json(path)
    if cache is not None and cache.exists():
        res = read_json(cache)
    else:
        res = evaluate_run(model, tok, cfg, sets, progress)
        if cache is not None:
            write_json(cache, res)
    write_json(path, res)
    return res


# Fields that cannot change the evaluation of the start model: it runs before any training step,
# with eval_seed(cfg), and the fresh LoRA adapters add exactly 0 (their B matrices start at 0).
_TRAINING_ONLY = ({"preset", "task", "train_levels", "gradient_checkpointing"}
                  | set(RolloutConfig.names()) | set(LossConfig.names()) | set(THRConfig.names())
                  | (set(OptimConfig.names()) - {"seed", "probe_every", "probe_prompts"}))
# Modules whose code decides what an evaluation returns: a change to any invalidates the cache.
_EVAL_CODE = ("train/evaluate.py", "train/rollout.py", "train/model.py", "train/experiment.py",
              "tasks/rewards.py", "tasks/benchmarks.py", "tasks/chains.py", "tasks/task.py",
              "core/passk.py")


def start_eval_cache(cfg: Config, model_path: str) -> Path:
    """Where the evaluation of cfg's start model is cached on this machine: every method trained
    with the same seed (the same eval_seed) from the same model shares it, so a grid of methods
    evaluates each start once. The key hashes every field but the training-only ones, the model
    path (the tiny model's folder names its cold-start settings), the package versions and the
    code of the evaluation modules; `thrlab.train.runs.cache_root()/evals/`."""
    import hashlib
    from importlib import metadata


    here = Path(__file__).parent.parent  # thrlab/
    key = {k: v for k, v in cfg.result_dict().items() if k not in _TRAINING_ONLY}
    key["model_path"] = str(model_path)
    key["versions"] = {p: metadata.version(p) for p in ("torch", "transformers", "peft",
                                                        "bitsandbytes")}
    key["code"] = hashlib.sha256(b"".join((here / f).read_bytes() for f in _EVAL_CODE)).hexdigest()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "evals" / f"start-{digest}.json"


def run_experiment(cfg: Config, run_dir: str | Path | None = None, *, runs_root="runs",
                   progress: bool = True) -> dict:
    """Run (or resume, or reuse) the whole experiment for cfg; return summary.json's content.

    The folder (default runs_root/<run_id>) is compared with cfg first, always; inputs are
    checked before anything is written; the run holds the folder's lock throughout.
    """
    own = Path(runs_root) / run_id(cfg)
    run = RunDir(run_dir or own)
    check_folder(run, cfg, own)
    if run.complete:
        return read_json(run / "summary.json")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    inputs = check_inputs(cfg, progress)
    with run.lock():
        check_folder(run, cfg, own)  # another process may have started or finished it since
        if run.complete:
            return read_json(run / "summary.json")
        return _run(run, cfg, inputs, progress)


def _run(run: RunDir, cfg: Config, inputs: Inputs, progress: bool) -> dict:
    t0 = time.time()
    write_json(run / "config.json", cfg.to_dict())
    write_json(run / "env.json", environment_info())  # torch is imported: its threads included
    _seed_phase(cfg, "init")
    model, tok = load_policy(cfg, inputs.path, inputs.device)
    before = _evaluate_phase(run, "before", cfg, model, tok, inputs.sets, progress,
                             cache=start_eval_cache(cfg, inputs.path))
    callbacks = ([likelihood_probe(run, cfg, model, tok, inputs.sets, make_grade_fn(cfg))]
                 if cfg.probe_every else []) + (
        [frontier_evaluations(run, cfg, tok, inputs.sets, evaluate_run)]
        if cfg.frontier_every else [])

    def on_step(trainer, row: dict) -> None:
        for callback in callbacks:
            callback(trainer, row)

    _seed_phase(cfg, "train")
    trainer = GRPOTrainer(cfg, model, tok, inputs.problems, run, make_grade_fn(cfg))
    metrics = trainer.train(progress=progress, on_step=on_step)
    save_adapter(model, run / "adapter")
    evals = {"before": before,
             "after": _evaluate_phase(run, "after", cfg, model, tok, inputs.sets, progress)}
    del model, trainer
    if cfg.sft_control:
        evals["sft_control"] = _sft_control_phase(run, cfg, inputs, progress)
    summary = {"preset": cfg.preset, "method": method_of(cfg), "run_id": run_id(cfg),
               "greedy_gain": greedy_gain(evals["before"], evals["after"]),
               "model": cfg.model, "steps": cfg.steps, "seed": cfg.seed, "lr": cfg.lr,
               **{f"eval_{k}": v["mean"] for k, v in evals.items()},
               "sets": {k: v["sets"] for k, v in evals.items()},
               "grading": {k: v["grading_by_set"] for k, v in evals.items()},
               "train_wall_s": sum(m["time/step"] for m in metrics), "wall_s": time.time() - t0}
    write_json(run / "summary.json", summary)
    run.mark_complete()
    return summary


def _sft_control_phase(run, cfg, inputs: Inputs, progress) -> dict:
    """Equal-compute control: same start, same steps and sequences per step, gold answers."""
    if (run / "eval_sft_control.json").exists():
        return read_json(run / "eval_sft_control.json")
    import random


    _seed_phase(cfg, "sft_control")
    model, tok = load_policy(cfg, inputs.path, inputs.device)
    params, opt = make_optimizer(model, cfg)
    sft_loop(model, tok, opt, inputs.problems, random.Random(draw_seed("sft_control", cfg.seed)),
             steps=cfg.steps, batch_size=cfg.prompts_per_step * cfg.group_size,
             template=cfg.template, op=cfg.arith_op, clip=(params, cfg.max_grad_norm),
             device=inputs.device, desc="SFT control", progress=progress)
    return _evaluate_phase(run, "sft_control", cfg, model, tok, inputs.sets, progress)


def greedy_gain(before: dict, after: dict) -> dict | None:
    """The run's greedy accuracy after minus before over all its eval problems, paired per
    problem, with the 95% t-interval over problems (stats.problem_difference: this run only,
    not seed-to-seed variation); None for eval files without per-problem records."""

    if "problems" not in before or "problems" not in after:
        return None
    a = [x for rec in before["problems"].values() for x in rec["greedy"]]
    b = [x for rec in after["problems"].values() for x in rec["greedy"]]
    return problem_difference(a, b) if len(a) > 1 else None


_GRADING = ("timeouts", "errors", "parse_failures", "gold_parse_failures")


def format_summary(summary: dict) -> str:
    """A table of the headline metrics per eval set (and their mean when there are several),
    one column per phase labelled by the run's method, then grading failures per set."""
    phases = [p for p in ("before", "after", "sft_control") if f"eval_{p}" in summary]
    after = (f"after {summary['steps']} steps" if summary.get("steps") == 0
             else f"after {summary.get('method', 'training')}")
    label = {"before": "before", "after": after, "sft_control": "SFT control"}
    # per set where the summary has them (older summaries hold means only)
    sets = {p: dict(summary.get("sets", {}).get(p, {})) for p in phases}
    set_names = sorted(sets[phases[0]])  # as the eval files list them (sorted keys)
    names = set_names if len(set_names) == 1 else [*set_names, "mean"]
    for p in phases:
        sets[p]["mean"] = summary[f"eval_{p}"]
    keys = [k for k in summary["eval_before"] if k == "greedy_acc" or k.startswith("pass@")]
    shown = {n: Path(n).name for n in names}  # a JSONL set by its file name
    w = max(14, *(len(label[p]) + 2 for p in phases))
    sw = max(6, *(len(n) for n in shown.values())) + 2
    lines = [f"{'metric':<12}{'set':<{sw}}" + "".join(f"{label[p]:>{w}}" for p in phases)]
    for k in keys:
        for i, n in enumerate(names):
            vals = "".join(f"{sets[p].get(n, {}).get(k, float('nan')):>{w}.3f}" for p in phases)
            lines.append(f"{k if i == 0 else '':<12}{shown[n]:<{sw}}" + vals)
    gain = summary.get("greedy_gain")
    if gain:
        lines.append(f"greedy accuracy {100 * gain['mean']:+.1f} points "
                     f"[{100 * gain['ci_low']:+.1f}, {100 * gain['ci_high']:+.1f}] after minus "
                     f"before (95% interval over the {gain['problems']} problems, paired; this "
                     "run only: seeds vary it too)")
    grading = summary.get("grading")
    if grading:
        lines.append("grading failures per set (timeouts / errors / parse failures / gold parse "
                     "failures; greedy and samples):")
        for n in set_names:
            cells = ("/".join(str(int(grading[p].get(n, {}).get(c, 0))) for c in _GRADING)
                     for p in phases)
            lines.append(f"{'':<12}{shown[n]:<{sw}}" + "".join(f"{c:>{w}}" for c in cells))
    return "\n".join(lines)
