"""pass@k against brute-force enumeration of k-subsets; per-benchmark summaries."""
import itertools
from math import comb

import pytest

from thrlab.core.passk import ks_for, pass_at_k, summarise


@pytest.mark.parametrize("n,c", [(5, 0), (5, 1), (5, 3), (6, 6), (8, 2), (7, 4)])
def test_pass_at_k_equals_subset_enumeration(n, c):
    samples = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
        assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)


def test_pass_at_k_large_n_stable_and_edge_cases():
    assert pass_at_k(256, 3, 128) == pytest.approx(1 - comb(253, 128) / comb(256, 128), rel=1e-9)
    assert pass_at_k(10, 8, 3) == 1.0  # n - c < k
    assert pass_at_k(10, 0, 10) == 0.0
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_summarise_and_ks():
    assert ks_for(8) == [1, 2, 4, 8] and ks_for(6) == [1, 2, 4, 6]
    s = summarise([1.0, 0.0], [[1, 0, 0, 0], [0, 0, 0, 0]])
    assert s["greedy_acc"] == 0.5 and s["pass@1"] == pytest.approx(0.125)
    assert s["pass@4"] == pytest.approx(0.5)
