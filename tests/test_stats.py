"""thrlab.core.stats: variance components against explicit loops, and the interval's coverage and the
minimum detectable effect's power checked by simulating the crossed (seeds x problems) design,
with and without seed-to-seed variation, on Gaussian and on 0/1 scores."""
import doctest

import numpy as np
import pytest

from thrlab.core import stats
from thrlab.core.stats import minimum_detectable_effect, paired_difference, variance_components


def test_doctests():
    assert doctest.testmod(stats).failed == 0


def test_variance_components_match_explicit_loops():
    rng = np.random.default_rng(1)
    d = rng.normal(size=(4, 7))
    S, N = d.shape
    g = sum(d[s, n] for s in range(S) for n in range(N)) / (S * N)
    rs = [sum(d[s, n] for n in range(N)) / N for s in range(S)]
    cs = [sum(d[s, n] for s in range(S)) / S for n in range(N)]
    ms_seed = N * sum((r - g) ** 2 for r in rs) / (S - 1)
    ms_prob = S * sum((c - g) ** 2 for c in cs) / (N - 1)
    ms_res = sum((d[s, n] - rs[s] - cs[n] + g) ** 2 for s in range(S) for n in range(N)) \
        / ((S - 1) * (N - 1))
    c = variance_components(d)
    assert c["ms"]["seed"] == pytest.approx(ms_seed)
    assert c["ms"]["problem"] == pytest.approx(ms_prob)
    assert c["resid"] == pytest.approx(ms_res)
    assert c["seed"] == pytest.approx(max(0, (ms_seed - ms_res) / N))
    assert c["problem"] == pytest.approx(max(0, (ms_prob - ms_res) / S))


def _gaussian(rng, mu, S, N, sd_seed, sd_prob=0.2, sd_res=0.3):
    """Paired scores whose difference follows the crossed model with known mean mu."""
    a = rng.normal(0.5, 0.2, size=(S, N))
    d = (mu + rng.normal(0, sd_seed, (S, 1)) + rng.normal(0, sd_prob, (1, N))
         + rng.normal(0, sd_res, (S, N)))
    return a, a + d


def _binary(rng, S, N, effect, sd_seed, n_mc=0):
    """0/1 correctness of two methods: logit = difficulty_n + run effect_(m, s) + method effect;
    each run answers each problem with its own Bernoulli draw (greedy on a trained model is
    deterministic per run, so the draw stands for which problems that run happens to get)."""
    diff = rng.normal(0, 1.5, (1, N))

    def scores(shift):
        run = rng.normal(0, sd_seed, (S, 1))
        p = 1 / (1 + np.exp(-(diff + run + shift)))
        return (rng.random((S, N)) < p).astype(float)

    return scores(0.0), scores(effect)


def _true_binary_mean(effect, sd_seed, n=2_000_000, seed=9):
    """E[p_b - p_a] over problems and seeds, by Monte Carlo (accurate to ~5e-4)."""
    rng = np.random.default_rng(seed)
    diff = rng.normal(0, 1.5, n)
    pa = 1 / (1 + np.exp(-(diff + rng.normal(0, sd_seed, n))))
    pb = 1 / (1 + np.exp(-(diff + rng.normal(0, sd_seed, n) + effect)))
    return float((pb - pa).mean())


def _coverage(make, mu, sims=2000, seed=0):
    rng = np.random.default_rng(seed)
    hits = naive_hits = 0
    for _ in range(sims):
        a, b = make(rng)
        r = paired_difference(a, b)
        hits += r["ci_low"] <= mu <= r["ci_high"]
        # the interval from problem resampling alone: per-problem means over seeds, binomial-style
        dn = (b - a).mean(0)
        half = 1.96 * dn.std(ddof=1) / np.sqrt(len(dn))
        naive_hits += abs(dn.mean() - mu) <= half
    return hits / sims, naive_hits / sims


@pytest.mark.parametrize("sd_seed", [0.0, 0.05])
def test_interval_covers_a_known_difference_gaussian(sd_seed):
    cov, naive = _coverage(lambda rng: _gaussian(rng, 0.02, 5, 200, sd_seed), 0.02)
    assert 0.935 <= cov <= 0.985, cov  # without seed variance: nominal or a little above
    if sd_seed:  # the problem-only interval ignores training randomness and under-covers
        assert naive < 0.8, naive


@pytest.mark.parametrize("sd_seed", [0.0, 0.15])
def test_interval_covers_a_known_difference_binary(sd_seed):
    effect = 0.2
    mu = _true_binary_mean(effect, sd_seed)
    cov, naive = _coverage(lambda rng: _binary(rng, 5, 300, effect, sd_seed), mu, sims=1500)
    assert 0.93 <= cov <= 0.985, cov
    if sd_seed:
        assert naive < cov - 0.05, (naive, cov)


def test_one_seed_is_refused_and_shapes_are_checked():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        paired_difference(np.zeros((1, 5)), np.ones((1, 5)))
    with pytest.raises(ValueError, match="same"):
        paired_difference(np.zeros((3, 5)), np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"\(seeds, problems\)"):
        paired_difference(np.zeros(5), np.ones(5))
    with pytest.raises(ValueError, match="NaN"):
        paired_difference(np.full((2, 3), np.nan), np.ones((2, 3)))


def test_minimum_detectable_effect_has_its_power():
    """At a true difference equal to the MDE, the 95% interval excludes 0 in ~80% of studies."""
    rng = np.random.default_rng(3)
    comps = {"seed": 0.03 ** 2, "problem": 0.2 ** 2, "resid": 0.3 ** 2}  # _gaussian's own
    S, N = 5, 200
    mde = minimum_detectable_effect(comps, S, N)
    rejected = 0
    sims = 1500
    for _ in range(sims):
        r = paired_difference(*_gaussian(rng, mde, S, N, 0.03))
        rejected += r["ci_low"] > 0 or r["ci_high"] < 0
    assert 0.76 <= rejected / sims <= 0.86, rejected / sims
    # more seeds shrink it; problems alone cannot remove the seed term
    assert minimum_detectable_effect(comps, 8, N) < mde
    assert minimum_detectable_effect(comps, S, 100_000) > 2.4 * np.sqrt(comps["seed"] / S)


def test_seed_and_problem_intervals_are_t_intervals():
    from scipy import stats as st

    from thrlab.core.stats import problem_difference, seed_difference

    a, b = np.array([0.3, 0.5, 0.4, 0.6]), np.array([0.4, 0.55, 0.5, 0.62])
    d = b - a
    half = st.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    r = seed_difference(a, b)
    assert (r["ci_low"], r["mean"], r["ci_high"]) == pytest.approx((d.mean() - half, d.mean(),
                                                                    d.mean() + half))
    x, y = np.random.default_rng(0).integers(0, 2, (2, 50))
    r = problem_difference(x, y)
    half = st.t.ppf(0.975, 49) * (y - x).std(ddof=1) / np.sqrt(50)
    assert r["ci_high"] - r["mean"] == pytest.approx(half) and r["problems"] == 50
    with pytest.raises(ValueError, match="2 seeds"):
        seed_difference([0.1], [0.2])
