"""THR of a policy's own rollouts, with no update: sample groups, grade them, run the old-policy
pass and THR exactly as a training step does (thrlab.train.trainer), and keep the token records
(thrlab.train.records) that the anatomy figures read (E1, E7, the token view).

This is how a user looks at THR on a model before (or without) training it: the records of a
snapshot are the records step 1 of a THR run would save, for as many batches as asked.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from thrlab.tasks.task import task_of

from .config import Config
from .experiment import build_trainer, resolve_model_path
from .old_policy import FrozenPass
from .presets import run_id
from .records import token_records
from .runs import write_json


def thr_snapshot(cfg: Config, batches: int, *, heldout: bool = True, progress: bool = True,
                 model_path: str | None = None) -> list[dict]:
    """Token records of `batches` rollout batches (cfg.prompts_per_step prompts x group_size
    samples each) of cfg's policy at its start, THR by cfg's THR settings (thr_mode must be on).

    heldout: draw the prompts from the task's held-out problems (the first ones, in their fixed
    order) instead of the training order. Each record holds every group of its batch and
    `stats`: the batch's rewards, grading counts, thr/* statistics and per-phase seconds.
    """
    from tqdm.auto import tqdm

    if not cfg.thr_on:
        raise ValueError("thr_snapshot needs THR on: build the config with a THR method, e.g. "
                         "from_preset(preset, 'thr_p0')")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    n = batches * cfg.prompts_per_step
    problems = task_of(cfg).heldout(n) if heldout else None
    with tempfile.TemporaryDirectory() as run_dir:  # the trainer's folder; nothing is kept
        trainer = build_trainer(cfg, model_path or resolve_model_path(cfg, progress), run_dir,
                                problems=problems)
        frozen = FrozenPass(trainer.model, cfg, trainer.micro, trainer.token_advantages)
        records = []
        for b in tqdm(range(batches), desc="THR snapshot", disable=not progress):
            batch, stats = trainer.rollout()  # sampled and graded, as a step does
            if batch is None:  # dynamic sampling found no group with a signal
                continue
            t1 = time.perf_counter()
            adv = trainer.response_advantages(batch.rewards)
            trainer.model.train()  # the mode a training step's old-policy pass runs in
            with torch.no_grad():
                frozen.prepare(batch)
                frozen.batch_advantages(batch, adv)
            rec = token_records(trainer.tok, batch.tokens, batch.mask, frozen.thr_parts[0],
                                frozen.entropy(), batch.rewards, adv, cfg.group_size,
                                len(batch.tokens), cfg.thr_save_tokens, batch.questions)
            stats.update(frozen.thr_stats, **{"time/old_logp_thr": time.perf_counter() - t1})
            records.append(dict(rec, step=b, stats=stats))
    return records


def snapshot_path(cfg: Config, batches: int, folder: str | Path) -> Path:
    """Where the snapshot of cfg's start policy is kept: `<folder>/snapshots/<run id>-b<N>.json`
    (the run id names the preset, method and config hash, so another config is another file)."""
    return Path(folder) / "snapshots" / f"{run_id(cfg)}-b{batches}.json"


def cached_thr_snapshot(cfg: Config, batches: int, folder: str | Path, *,
                        progress: bool = True) -> list[dict]:
    """thr_snapshot, written once under folder (atomically) and read back on later calls."""
    path = snapshot_path(cfg, batches, folder)
    if path.exists():
        return json.loads(path.read_text(encoding="utf-8"))["records"]
    t0 = time.time()
    records = thr_snapshot(cfg, batches, progress=progress)
    write_json(path, {"config": cfg.to_dict(), "wall_s": time.time() - t0, "records": records})
    return records
