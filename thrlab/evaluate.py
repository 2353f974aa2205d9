"""Evaluation: greedy accuracy and unbiased pass@k per benchmark, averaged over benchmarks.

pass@k = E_problems[1 - C(n - c, k) / C(n, k)] from n samples with c correct (Chen et al. 2021).
"""
from __future__ import annotations

import math
import time

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n (n={n} samples), got k={k}; draw more samples")
    if n - c < k:
        return 1.0
    # Product form: stable for large n where the binomials overflow floats.
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def ks_for(n: int) -> list[int]:
    """The k values reported for n samples: powers of two up to n, and n itself."""
    ks = [2 ** i for i in range(int(math.log2(n)) + 1)]
    return ks if ks[-1] == n else ks + [n]


def summarise(greedy_correct: list[float], sample_correct: list[list[float]]) -> dict:
    """Greedy accuracy, mean sample accuracy and pass@k for one benchmark."""
    n = len(sample_correct[0]) if sample_correct else 0
    out = {"n_problems": len(greedy_correct), "greedy_acc": float(np.mean(greedy_correct))}
    if n:
        counts = [int(sum(s)) for s in sample_correct]
        for k in ks_for(n):
            out[f"pass@{k}"] = float(np.mean([pass_at_k(n, c, k) for c in counts]))
    return out


def evaluate(model, tok, problems_by_set: dict, cfg, *, grade_fn, progress: bool = True) -> dict:
    """Evaluate on each set: greedy decoding, then cfg.eval_samples samples per problem.

    problems_by_set: {name: [Problem]}; grade_fn(texts, golds) -> GradeResult.
    Returns {"sets": {name: summary}, "mean": {metric: mean over sets}, "grading": failure
    counts summed over sets, "grading_by_set": {name: counts}, "wall_s"}; counts cover the greedy
    and the sampled completions (rewards.GradeResult.as_metrics without the mean).
    """
    from tqdm.auto import tqdm

    from .rollout import generate
    from .tasks import format_prompt

    t0 = time.time()
    sets, by_set = {}, {}
    for name, problems in tqdm(problems_by_set.items(), desc="evaluate", disable=not progress):
        prompts = [format_prompt(p.question, cfg.template, tok) for p in problems]
        golds = [p.answer for p in problems]
        common = dict(max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size)
        greedy = generate(model, tok, prompts, n=1, do_sample=False, temperature=1.0, top_p=1.0,
                          **common)
        g = grade_fn(greedy.texts, golds)
        n = cfg.eval_samples
        sampled = generate(model, tok, prompts, n=n, do_sample=True,
                           temperature=cfg.eval_temperature, top_p=cfg.eval_top_p, **common)
        s = grade_fn(sampled.texts, [a for a in golds for _ in range(n)])
        per_problem = [s.rewards[i * n:(i + 1) * n] for i in range(len(problems))]
        sets[name] = summarise(g.rewards, per_problem)
        sets[name]["mean_completion_len"] = float(sampled.lengths.float().mean())
        counts = by_set[name] = {}
        for res in (g, s):
            for k, v in res.as_metrics(prefix="").items():
                if k != "mean":
                    counts[k] = counts.get(k, 0) + v
    keys = set.intersection(*(set(v) for v in sets.values())) - {"n_problems"}
    mean = {k: float(np.mean([v[k] for v in sets.values()])) for k in sorted(keys)}
    total = {k: sum(c[k] for c in by_set.values()) for k in next(iter(by_set.values()))}
    return {"sets": sets, "mean": mean, "grading": total, "grading_by_set": by_set,
            "wall_s": time.time() - t0}
