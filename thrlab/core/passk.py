"""Unbiased pass@k from n samples with c correct (Chen et al. 2021):

    pass@k = E_problems[1 - C(n - c, k) / C(n, k)]
"""
from __future__ import annotations

import math

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
