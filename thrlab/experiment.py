"""The main job: evaluate -> GRPO (4-bit NF4 + LoRA) -> evaluate, plus an equal-compute SFT
control, all in one resumable run folder. `make demo`, the CLI and the notebooks call this.

Each phase writes its result file atomically and is skipped when the file exists, so a killed
run resumes with the same command; COMPLETE is written last.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path

import torch

from .config import Config
from .runs import RunDir, environment_info, read_json, write_json

# Held-out arithmetic problems are drawn with this seed, independent of the run's seed, so runs
# with different seeds are scored on the same problems.
EVAL_SEED = 0


def load_run_policy(cfg: Config, adapter=None, progress: bool = True):
    """(model, tok): cfg's 4-bit + LoRA policy on its device, with cfg.threads applied and, when
    given, a saved adapter folder's weights loaded (e.g. a run's `adapter/`)."""
    from .model import load_policy, resolve_device

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tok = load_policy(cfg, resolve_model_path(cfg, progress), resolve_device(cfg))
    if adapter:
        from .checkpoint import load_adapter_weights

        load_adapter_weights(model, adapter)
    return model, tok


def resolve_model_path(cfg: Config, progress: bool = True) -> str:
    """Path or hub id of the base model; builds the cached tiny model for model='tiny'."""
    if cfg.model == "tiny":
        from .tiny import ensure_tiny_model

        return str(ensure_tiny_model(cfg, progress=progress))
    return cfg.model


def train_problems(cfg: Config) -> list:
    from .tasks import arithmetic_problems, load_benchmark

    if cfg.task == "arithmetic":
        return arithmetic_problems(None, "train", seed=cfg.seed, op=cfg.arith_op)
    return load_benchmark(cfg.task, data_dir=cfg.data_dir or None,
                          levels=tuple(cfg.train_levels) or None)


def eval_problems(cfg: Config) -> dict:
    from .tasks import arithmetic_problems, load_benchmark

    out = {}
    for name in cfg.eval_sets:
        if name == "arithmetic":
            out[name] = arithmetic_problems(cfg.eval_limit or None, "heldout", seed=EVAL_SEED,
                                            op=cfg.arith_op)
        else:
            out[name] = load_benchmark(name, data_dir=cfg.data_dir or None,
                                       limit=cfg.eval_limit or None)
    return out


def make_grade_fn(cfg: Config):
    from .rewards import grade

    return functools.partial(grade, grader=cfg.grader, timeout_s=cfg.grader_timeout_s,
                             style=cfg.answer_style)


_EVAL_PHASES = {"before": 11, "after": 12, "sft_control": 13}


def _seed_phase(cfg: Config, phase: int) -> None:
    # Each phase starts from its own seed, so a resumed run replays skipped phases' RNG exactly.
    torch.manual_seed(cfg.seed * 1000 + phase)


def _evaluate_phase(run: RunDir, name: str, cfg, model, tok, sets, grade_fn, progress) -> dict:
    path = run / f"eval_{name}.json"
    if path.exists():
        return read_json(path)
    from .evaluate import evaluate

    _seed_phase(cfg, _EVAL_PHASES[name])
    res = evaluate(model, tok, sets, cfg, grade_fn=grade_fn, progress=progress)
    write_json(path, res)
    return res


def run_experiment(cfg: Config, run_dir: str | Path | None = None, *, runs_root="runs",
                   progress: bool = True) -> dict:
    """Run (or resume, or reuse) the whole experiment for cfg; return summary.json's content."""
    from .model import load_policy, resolve_device
    from .trainer import GRPOTrainer

    run = RunDir(run_dir or Path(runs_root) / cfg.run_id())
    if run.complete:
        return read_json(run / "summary.json")
    if (run / "config.json").exists():
        prev = Config.from_json((run / "config.json").read_text())
        if prev.config_hash() != cfg.config_hash():
            raise ValueError(f"{run.path} holds a run with a different config; use a new run "
                             "folder (the default runs/<run_id> is derived from the config)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.time()
    write_json(run / "config.json", cfg.to_dict())
    write_json(run / "env.json", environment_info())  # torch is imported: its threads included
    device = resolve_device(cfg)
    path = resolve_model_path(cfg, progress)
    grade_fn = make_grade_fn(cfg)
    # Load (and so validate) all data before any model work: bad files fail in seconds.
    problems, sets = train_problems(cfg), eval_problems(cfg)

    _seed_phase(cfg, 1)
    model, tok = load_policy(cfg, path, device)
    before = _evaluate_phase(run, "before", cfg, model, tok, sets, grade_fn, progress)
    _seed_phase(cfg, 2)
    trainer = GRPOTrainer(cfg, model, tok, problems, run, grade_fn)
    metrics = trainer.train(progress=progress)
    from .checkpoint import save_adapter

    save_adapter(model, run / "adapter")
    after = _evaluate_phase(run, "after", cfg, model, tok, sets, grade_fn, progress)
    del model, trainer

    summary = {"preset": cfg.preset, "run_id": cfg.run_id(), "model": cfg.model,
               "steps": cfg.steps, "seed": cfg.seed, "lr": cfg.lr,
               "eval_before": before["mean"], "eval_after": after["mean"],
               "train_wall_s": sum(m["time/step"] for m in metrics)}
    if cfg.sft_control:
        ctrl = _sft_control_phase(run, cfg, path, device, problems, sets, grade_fn, progress)
        summary["eval_sft_control"] = ctrl["mean"]
    summary["wall_s"] = time.time() - t0
    write_json(run / "summary.json", summary)
    run.mark_complete()
    return summary


def _sft_control_phase(run, cfg, path, device, problems, sets, grade_fn, progress) -> dict:
    """Equal-compute control: same start, same steps and sequences per step, gold answers."""
    if (run / "eval_sft_control.json").exists():
        return read_json(run / "eval_sft_control.json")
    import random

    from tqdm.auto import tqdm

    from .model import load_policy
    from .tiny import sft_batch, sft_loss
    from .trainer import make_optimizer

    _seed_phase(cfg, 3)
    model, tok = load_policy(cfg, path, device)
    params, opt = make_optimizer(model, cfg)
    rng = random.Random(cfg.seed)
    n = cfg.prompts_per_step * cfg.group_size
    model.train()
    for _ in tqdm(range(cfg.steps), desc="SFT control", disable=not progress):
        ids, attn, labels = sft_batch(tok, rng.sample(problems, n), cfg.template)
        loss = sft_loss(model, ids.to(device), attn.to(device), labels.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
    return _evaluate_phase(run, "sft_control", cfg, model, tok, sets, grade_fn, progress)


def format_summary(summary: dict) -> str:
    """A before/after table of the headline metrics."""
    cols = [("before", summary["eval_before"]), ("after GRPO", summary["eval_after"])]
    if "eval_sft_control" in summary:
        cols.append(("SFT control", summary["eval_sft_control"]))
    keys = [k for k in summary["eval_before"] if k == "greedy_acc" or k.startswith("pass@")]
    lines = [f"{'metric':<12}" + "".join(f"{c:>14}" for c, _ in cols)]
    for k in keys:
        lines.append(f"{k:<12}" + "".join(f"{v.get(k, float('nan')):>14.3f}" for _, v in cols))
    return "\n".join(lines)
