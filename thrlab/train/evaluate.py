"""Evaluation: greedy accuracy and unbiased pass@k (thrlab.core.passk) per benchmark, averaged
over benchmarks."""
from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace

import numpy as np

from thrlab.core.passk import summarise
from thrlab.core.stats import label_entropy
from thrlab.tasks.benchmarks import format_prompt
from thrlab.tasks.task import eval_task

from .memory import Architecture, check, eval_batch_size, prompt_tokens
from .model import available_memory
from .rollout import generate

log = logging.getLogger(__name__)


def batch_size(cfg, model, tok, problems) -> int:
    """cfg.eval_batch_size, or with 0 the most prompts per generate() call that the memory
    plan fits in the memory free now (memory.eval_batch_size), at the longest prompt."""
    if cfg.eval_batch_size:
        return cfg.eval_batch_size
    device = next(model.parameters()).device
    size = eval_batch_size(cfg, Architecture.of(model.config),
                           prompt_tokens(problems, tok, cfg.template), available_memory(device),
                           device.type)
    log.info("evaluation: %d prompts per generate() call (the memory plan's fit)", size)
    return size


def evaluate(model, tok, problems_by_set: dict, cfg, *, grade_fn, progress: bool = True) -> dict:
    """Evaluate on each set: greedy decoding, then cfg.eval_samples samples per problem of the
    first cfg.eval_passk_limit problems (0 = all).

    problems_by_set: {name: [Problem]}; grade_fn(texts, golds) -> GradeResult.
    Returns {"sets": {name: summary}, "mean": {metric: mean over sets}, "grading": failure
    counts summed over sets, "grading_by_set": {name: counts}, "problems": {name: per-problem
    record}, "wall_s"}; counts cover the greedy and the sampled completions
    (rewards.GradeResult.as_metrics without the mean). A per-problem record holds the problem
    ids, greedy correctness (0/1) per problem and the number correct of the `samples` samples
    per sampled problem: what paired comparisons (thrlab.core.stats) need. A set whose Task labels
    its completions (the strategies task) also reports the labels its samples take
    (`strategy_counts`, and `strategy_entropy` in bits).
    """
    from tqdm.auto import tqdm

    everything = [p for ps in problems_by_set.values() for p in ps]
    cfg = replace(cfg, eval_batch_size=batch_size(cfg, model, tok, everything))
    check(cfg, model, tok, everything, phases=("evaluate",))  # on CUDA: the plan, and a warning
    t0 = time.time()
    sets, by_set, records = {}, {}, {}
    for name, problems in tqdm(problems_by_set.items(), desc="evaluate", disable=not progress):
        prompts = [format_prompt(p.question, cfg.template, tok) for p in problems]
        golds = [p.answer for p in problems]
        common = dict(max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                      sampler=cfg.sampler)
        greedy = generate(model, tok, prompts, n=1, do_sample=False, temperature=1.0, top_p=1.0,
                          **common)
        g = grade_fn(greedy.texts, golds)
        n, m = cfg.eval_samples, min(cfg.eval_passk_limit or len(problems), len(problems))
        sampled = generate(model, tok, prompts[:m], n=n, do_sample=True,
                           temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, **common)
        s = grade_fn(sampled.texts, [a for a in golds[:m] for _ in range(n)])
        per_problem = [s.rewards[i * n:(i + 1) * n] for i in range(m)]
        sets[name] = summarise(g.rewards, per_problem)
        sets[name]["n_passk_problems"] = m
        sets[name]["mean_completion_len"] = float(sampled.lengths.float().mean())
        records[name] = {"ids": [p.id for p in problems], "greedy": [int(x) for x in g.rewards],
                         "correct": [int(sum(c)) for c in per_problem], "samples": n}
        labels = eval_task(name, cfg).labels_of([problems[i // n].question
                                                 for i in range(len(sampled.texts))], sampled.texts)
        if labels is not None:  # e.g. the strategies task
            sets[name]["strategy_entropy"] = label_entropy(labels)
            sets[name]["strategy_counts"] = dict(sorted(Counter(labels).items()))
        counts = by_set[name] = {}
        for res in (g, s):
            for k, v in res.as_metrics(prefix="").items():
                if k != "mean":
                    counts[k] = counts.get(k, 0) + v
    keys = {k for k in set.intersection(*(set(v) for v in sets.values()))
            if isinstance(next(iter(sets.values()))[k], (int, float))} - {"n_problems",
                                                                           "n_passk_problems"}
    mean = {k: float(np.mean([v[k] for v in sets.values()])) for k in sorted(keys)}
    total = {k: sum(c[k] for c in by_set.values()) for k in next(iter(by_set.values()))}
    return {"sets": sets, "mean": mean, "grading": total, "grading_by_set": by_set,
            "problems": records, "wall_s": time.time() - t0}
