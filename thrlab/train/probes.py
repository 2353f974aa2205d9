"""What a run measures along the way without changing it: the trainer's on_step callbacks that
experiment.run_experiment installs. Each samples and evaluates under torch.random.fork_rng, so a
run trains exactly as without it (tested), and each keeps what a resumed run needs on disk.

  likelihood_probe      probe/loglik and probe/kl_start every probe_every steps
  frontier_evaluations  eval_step<N>.json every frontier_every steps (the greedy-vs-Pass@K frontier)
"""
from __future__ import annotations

import torch

from thrlab.core.seeds import stage_seed
from thrlab.tasks.benchmarks import format_prompt

from .config import Config
from .drift import kl_probe
from .model import completion_forward
from .rollout import generate
from .runs import RunDir, write_json


def likelihood_probe(run: RunDir, cfg: Config, model, tok, sets: dict, grade_fn):
    """The on_step callback that logs, every cfg.probe_every steps, `probe/loglik`: the mean
    per-token log-likelihood of a fixed probe set of correct responses (the start policy's first
    correct sample on each of the first probe_prompts problems of the first eval set, graded by
    grade_fn; probe_set), the lazy-likelihood-displacement curve of the run; and
    `probe/kl_start`: the KL from the start policy to the current one on the same prompts
    (drift.kl_probe). The probe, and its value at step 0, are made from the start model once and
    kept in probe.json, so a resumed run probes the same responses."""
    path = run / "probe.json"
    problems = next(iter(sets.values()))[:cfg.probe_prompts]
    with torch.random.fork_rng():
        probe = probe_set(model, tok, cfg, problems, grade_fn)
        if not path.exists():
            write_json(path, {"start": probe_loglik(model, probe, cfg.temperature),
                              "size": len(probe.tokens), "texts": probe.texts})

    def on_step(trainer, row: dict) -> None:
        if trainer.step % cfg.probe_every == 0 or trainer.step == cfg.steps:
            was = trainer.model.training
            trainer.model.eval()  # the policy itself, no dropout noise
            with torch.random.fork_rng():
                row["probe/loglik"] = probe_loglik(trainer.model, probe, cfg.temperature)
            row["probe/kl_start"] = kl_probe(trainer.model, tok, cfg, problems)
            trainer.model.train(was)

    return on_step


def frontier_evaluations(run: RunDir, cfg: Config, tok, sets: dict, evaluate):
    """The on_step callback that evaluates the policy every cfg.frontier_every steps (before the
    last, which eval_after covers) into eval_step<N>.json: greedy accuracy and Pass@K along the
    run, for the frontier of Pass@K against greedy accuracy (frontier.frontier_points).
    `evaluate` is the run's own evaluation (experiment.evaluate_run, seeded with eval_seed(cfg):
    common random numbers with before and after), here on the first frontier_limit problems of
    each set, greedy and sampled (0: the run's own limits); a file already there (a resumed
    run) is kept."""
    n = cfg.frontier_limit
    subset = {k: v[:n] for k, v in sets.items()} if n else sets
    ecfg = cfg.replace(eval_passk_limit=min(cfg.eval_passk_limit or n, n)) if n else cfg

    def on_step(trainer, row: dict) -> None:
        path = run / f"eval_step{trainer.step}.json"
        if trainer.step % cfg.frontier_every or trainer.step >= cfg.steps or path.exists():
            return
        was = trainer.model.training
        with torch.random.fork_rng():
            write_json(path, evaluate(trainer.model, tok, ecfg, subset, progress=False))
        trainer.model.train(was)

    return on_step


# -- the lazy-likelihood-displacement probe ---------------------------------------------------
def sample_groups(model, tok, cfg: Config, problems, grade_fn):
    """G sampled completions of each problem at the rollout's settings, graded (B rows)."""
    prompts = [format_prompt(p.question, cfg.template, tok) for p in problems]
    batch = generate(model, tok, prompts, n=cfg.group_size, do_sample=True,
                     temperature=cfg.temperature, top_p=cfg.top_p,
                     max_new_tokens=cfg.max_new_tokens, sampler=cfg.sampler)
    res = grade_fn(batch.texts, [problems[i].answer for i in batch.problem_index])
    batch.rewards = torch.tensor(res.rewards, dtype=torch.float32, device=batch.tokens.device)
    return batch


def probe_set(model, tok, cfg: Config, problems, grade_fn):
    """Correct responses of the policy on `problems` (G samples each, the first correct one per
    problem; seeded, so methods sharing an initial policy share the probe)."""
    torch.manual_seed(stage_seed("probe", cfg.seed))
    batch = sample_groups(model, tok, cfg, problems, grade_fn)
    rows = [g * cfg.group_size + int(k) for g, grp in
            enumerate(batch.rewards.view(-1, cfg.group_size)) for k in grp.nonzero()[:1].flatten()]
    if not rows:
        raise ValueError(f"no correct response among {len(batch.tokens)} samples on "
                         f"{len(problems)} "
                         "probe problems: the policy cannot build a probe set (more probe "
                         "problems, or a stronger starting model)")
    return batch.select(rows)


@torch.no_grad()
def probe_loglik(model, probe, temperature: float) -> float:
    """Mean over the probe responses of their per-token log-likelihood (1/|y|) log pi(y)."""
    return float(loglik_rows(model, probe, torch.arange(len(probe.tokens)), temperature).mean())


def loglik_rows(model, batch, rows, temperature) -> torch.Tensor:
    """Per-token mean log-likelihood (1/|y|) log pi(y) of the batch's `rows`, (n,)."""
    o = completion_forward(model, batch.input_ids[rows], batch.attention_mask[rows],
                           batch.prompt_len, temperature, need_entropy=False)
    m = batch.mask[rows].float()
    return (o["logp"] * m).sum(1) / m.sum(1).clamp(min=1)  # (n,)
