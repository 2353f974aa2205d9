"""Paired comparisons of two training methods that account for training randomness.

A comparison of methods A and B trains each with the same S seeds and evaluates every run on the
same N problems with the same sampling seed (common random numbers), giving per-problem scores
a[s, n], b[s, n] (0/1 correctness, or per-problem pass@k estimates). The paired differences
d[s, n] = b[s, n] - a[s, n] follow the crossed random-effects model

    d[s, n] = mu + alpha_s + beta_n + eps_sn,

alpha_s the seed effect (training randomness: the two runs of seed s differ from the two of another
seed), beta_n the problem effect (some problems favour B), eps_sn the rest. The quantity of
interest is mu, the expected difference over training seeds and over problems from the same
distribution. Its estimate is the grand mean d.., whose variance is

    Var(d..) = s2_seed / S + s2_problem / N + s2_resid / (S N).

The three components come from the two-way ANOVA mean squares (method of moments, each clamped
at 0):

    MS_seed = N sum_s (d_s. - d..)^2 / (S - 1)                      E = s2_resid + N s2_seed
    MS_problem = S sum_n (d_.n - d..)^2 / (N - 1)                   E = s2_resid + S s2_problem
    MS_resid = sum_sn (d_sn - d_s. - d_.n + d..)^2 / ((S-1)(N-1))  E = s2_resid

and the 95% interval is d.. +- t_{0.975, df} sqrt(Var), Var estimated without clamping as
(MS_seed + max(0, MS_problem - MS_resid)) / (S N): the between-seed term s2_seed / S +
s2_resid / (S N), which the S seed means estimate with S - 1 degrees of freedom, plus the problem
term, with Satterthwaite's df for the sum. With a handful
of seeds the seed term usually dominates and df is close to S - 1: an interval from problem
resampling alone (a bootstrap over problems, or a binomial standard error) ignores it and is too
narrow; coverage of both is tested by simulation in tests/test_stats.py. One seed (S = 1) cannot separate the seed term from the
difference itself, so it is refused: one or two seeds show mechanics, not a result.

`minimum_detectable_effect` turns measured components into the smallest true difference a design
(seeds, problems) detects with the given power, so a null result reads "no effect larger than X".
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
from scipy import stats as _st


def _scores(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (seeds, problems), got shape {arr.shape}; pass one row "
                         "per training seed and one column per evaluation problem")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or inf scores; every (seed, problem) needs a score")
    return arr


def variance_components(d) -> dict:
    """Method-of-moments variance components of paired differences d (seeds, problems).

    Returns {"seed", "problem", "resid"} variances (clamped at 0), the mean squares and their
    degrees of freedom, and S, N.
    """
    d = _scores(d, "d")
    S, N = d.shape
    if S < 2 or N < 2:
        raise ValueError(f"need at least 2 seeds and 2 problems to separate seed and problem "
                         f"variance, got {S} seeds x {N} problems")
    grand = d.mean()
    seed_means, prob_means = d.mean(1), d.mean(0)  # (S,), (N,)
    ms_seed = N * ((seed_means - grand) ** 2).sum() / (S - 1)
    ms_prob = S * ((prob_means - grand) ** 2).sum() / (N - 1)
    resid = d - seed_means[:, None] - prob_means[None, :] + grand  # (S, N)
    ms_res = (resid ** 2).sum() / ((S - 1) * (N - 1))
    return {"seed": max(0.0, (ms_seed - ms_res) / N), "problem": max(0.0, (ms_prob - ms_res) / S),
            "resid": float(ms_res), "ms": {"seed": float(ms_seed), "problem": float(ms_prob),
                                            "resid": float(ms_res)},
            "df": {"seed": S - 1, "problem": N - 1, "resid": (S - 1) * (N - 1)}, "S": S, "N": N}


def _satterthwaite(seed_term: float, prob_term: float, df_seed: float, df_prob: float
                   ) -> tuple[float, float]:
    """(variance, Satterthwaite df) of the sum of the between-seed and the problem term."""
    var = seed_term + prob_term
    if var <= 0:
        return 0.0, float("inf")
    den = seed_term ** 2 / df_seed + (prob_term ** 2 / df_prob if prob_term > 0 else 0.0)
    return var, var ** 2 / den


def _design_variance(comp: dict, S: int, N: int) -> tuple[float, float]:
    """(Var of the grand mean, df) of a design of S seeds and N problems from the components.

    The variance splits into the between-seed term (s2_seed + s2_resid / N) / S, which S seed
    means estimate with S - 1 degrees of freedom, and the problem term s2_problem / N (N - 1).
    Keeping the residual inside the seed term gives it the few degrees of freedom it really has:
    splitting it off with its (S-1)(N-1) df makes the interval too narrow exactly when the seed
    term is under-estimated, which undercovers with binary scores (tested).
    """
    return _satterthwaite((comp["seed"] + comp["resid"] / N) / S, comp["problem"] / N,
                          max(S - 1, 1), max(N - 1, 1))


def paired_difference(a, b, *, level: float = 0.95) -> dict:
    """Mean paired difference b - a of two methods with its interval over seeds and problems.

    a, b: array-likes (seeds, problems) of per-problem scores of two methods trained with the
    same seeds (row s of both) and evaluated on the same problems (column n of both).
    Returns mean, ci_low, ci_high (at `level`), se, df, the variance components, seeds and
    problems. The interval includes training-seed variance (module docstring).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.binomial(1, 0.4, size=(5, 300)); b = rng.binomial(1, 0.5, size=(5, 300))
    >>> r = paired_difference(a, b)
    >>> r["ci_low"] < r["mean"] < r["ci_high"], r["seeds"], r["problems"]
    (True, 5, 300)
    """
    a, b = _scores(a, "a"), _scores(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a {a.shape} and b {b.shape} must have the same (seeds, problems): "
                         "pair runs of the same seed, evaluated on the same problems")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    d = b - a
    comp = variance_components(d)
    S, N = d.shape
    ms = comp["ms"]
    # unclamped mean squares (unbiased): E[MS_seed] / (S N) = s2_seed / S + s2_resid / (S N)
    prob = max(0.0, ms["problem"] - ms["resid"])
    df_prob = (prob ** 2 / (ms["problem"] ** 2 / (N - 1) + ms["resid"] ** 2 / ((S - 1) * (N - 1)))
               if prob > 0 else 1.0)
    var, df = _satterthwaite(ms["seed"] / (S * N), prob / (S * N), S - 1, df_prob)
    se = math.sqrt(var)
    half = float(_st.t.ppf(0.5 + level / 2, df)) * se if se > 0 else 0.0
    mean = float(d.mean())
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "se": se, "df": df,
            "level": level, "seeds": S, "problems": N,
            "components": {k: comp[k] for k in ("seed", "problem", "resid")}}


def minimum_detectable_effect(components: dict, seeds: int, problems: int, *,
                              alpha: float = 0.05, power: float = 0.8, df: float | None = None
                              ) -> float:
    """Smallest true difference a design of `seeds` x `problems` detects (two-sided test at
    alpha) with probability `power`, given variance components (`variance_components` or
    `paired_difference(...)["components"]`).

    Exact for the t-test the interval inverts: the difference delta * se(design) at which a
    noncentral t with Satterthwaite's df for that design (or `df`) and noncentrality delta exceeds
    the critical value with probability `power` (tested by simulation). The common shortcut
    (t_{1-alpha/2} + t_{power}) * se is too small by 10-20% at 5 seeds.
    """
    if seeds < 2 or problems < 1:
        raise ValueError(f"a design needs >= 2 seeds and >= 1 problem, got {seeds} x {problems}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha={alpha} and power={power} must be in (0, 1)")
    var, sat_df = _design_variance(components, seeds, problems)
    df = sat_df if df is None else df
    if var == 0:
        return 0.0
    crit = _st.t.ppf(1 - alpha / 2, df)

    def short(delta):  # power at noncentrality delta, minus the target
        far = _st.nct.cdf(-crit, df, delta)  # the wrong-sign tail: ~0, NaN in scipy far out
        return _st.nct.sf(crit, df, delta) + (far if math.isfinite(far) else 0.0) - power

    from scipy.optimize import brentq

    hi = 2.0 * (crit + _st.t.ppf(power, df)) + 2.0  # beyond the shortcut (nct is NaN far out)
    return float(brentq(short, 0.0, hi) * math.sqrt(var))


def seed_difference(a, b, *, level: float = 0.95) -> dict:
    """Mean paired difference b - a of one number per training seed (e.g. a run's strategy
    entropy), with the t-interval over seeds: a, b array-likes (seeds,), row s of both trained
    with seed s."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a {a.shape} and b {b.shape} must be (seeds,) of the same length")
    if len(a) < 2:
        raise ValueError("need at least 2 seeds for an interval over seeds")
    d = b - a
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    half = float(_st.t.ppf(0.5 + level / 2, len(d) - 1)) * se
    return {"mean": float(d.mean()), "ci_low": float(d.mean()) - half,
            "ci_high": float(d.mean()) + half, "se": se, "seeds": len(d), "level": level}


def problem_difference(a, b, *, level: float = 0.95) -> dict:
    """Mean paired difference b - a over problems of ONE training run (e.g. its greedy accuracy
    after minus before, per problem), with the t-interval over problems. It is conditional on
    that run: seed-to-seed variation is not in it, so it says whether this run moved, not
    whether the method does (paired_difference needs several seeds for that)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"a {a.shape} and b {b.shape} must be (problems,) of >= 2 problems")
    return problem_mean(b - a, level=level)


def problem_mean(x, *, level: float = 0.95) -> dict:
    """Mean of one number per problem (e.g. the share of |THR| a group's top tokens carry) with
    the t-interval over problems: it describes these samples of one model, nothing about
    training seeds."""
    d = np.asarray(x, dtype=float)
    if d.ndim != 1 or len(d) < 2:
        raise ValueError(f"x {d.shape} must be (problems,) of >= 2 problems")
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    half = float(_st.t.ppf(0.5 + level / 2, len(d) - 1)) * se
    return {"mean": float(d.mean()), "ci_low": float(d.mean()) - half,
            "ci_high": float(d.mean()) + half, "se": se, "problems": len(d), "level": level}


def matched_lr(lrs, values, target: float) -> float:
    """The learning rate at which a quantity that grows with lr (a run's distance from the start,
    or its KL) reaches `target`: linear interpolation in log(lr) between the two measured lrs
    around it. lrs and values: measurements of one method (e.g. GRPO) at several lrs. Raises
    when target lies outside the measured range (measure a wider ladder), or when the values
    do not grow with lr."""
    pts = sorted(zip(lrs, values))
    v = [p[1] for p in pts]
    if any(b <= a for a, b in zip(v, v[1:])):
        raise ValueError(f"values {v} do not grow with lr {[p[0] for p in pts]}: no single lr "
                         "matches (more seeds, or more steps)")
    if not v[0] <= target <= v[-1]:
        raise ValueError(f"target {target:.4g} is outside the measured range [{v[0]:.4g}, "
                         f"{v[-1]:.4g}]: measure lower or higher learning rates")
    for (l0, a), (l1, b) in zip(pts, pts[1:]):
        if a <= target <= b:
            w = (target - a) / (b - a)
            return math.exp(math.log(l0) + w * (math.log(l1) - math.log(l0)))
    raise AssertionError("unreachable")


def label_entropy(labels) -> float:
    """Entropy in bits of the empirical distribution of labels (0 for none or one kind)."""
    counts = Counter(labels)
    n = sum(counts.values())
    return 0.0 - sum(c / n * math.log2(c / n) for c in counts.values()) if n else 0.0
