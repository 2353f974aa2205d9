"""thrlab.paper.anatomy's readers and measures (E1, E7) against naive references written here: sets for
the top-fraction overlap, a loop for the mass share, hand-made token records."""
import random

import numpy as np
import pandas as pd
import pytest

from thrlab.paper import anatomy
from thrlab.train import records


def _naive_top(scores, n):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return set(order[:n])


def test_top_overlap_against_sets():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 30)
        a = [rng.random() for _ in range(n)]
        b = [rng.choice([0.0, 0.5, 1.0]) for _ in range(n)]  # ties, broken by position
        f = rng.choice([0.05, 0.2, 0.5, 1.0])
        k = max(1, int(round(f * n)))
        assert anatomy.top_overlap(a, b, f) == len(_naive_top(a, k) & _naive_top(b, k)) / k
    assert anatomy.top_overlap([3, 2, 1], [3, 2, 1], 0.34) == 1.0
    assert anatomy.top_overlap([3, 2, 1], [1, 2, 3], 0.34) == 0.0


def test_mass_share_against_a_loop():
    v = [0.5, -3.0, 0.0, 1.5, -1.0]
    total = sum(abs(x) for x in v)
    for f, n in ((0.2, 1), (0.4, 2), (1.0, 5)):
        assert anatomy.mass_share(v, f) == pytest.approx(
            sum(sorted(map(abs, v), reverse=True)[:n]) / total)
    assert np.isnan(anatomy.mass_share([0.0, 0.0], 0.5))


def _record():
    # group 0: mixed rewards; group 1: all wrong (THR undefined, zeros)
    rows = [{"group": 0, "reward": 1.0, "tokens": ["4", "<eos>"], "thr": [0.5, 0.1],
             "entropy": [0.2, 0.1]},
            {"group": 0, "reward": 0.0, "tokens": ["7"], "thr": [-0.9], "entropy": [1.0]},
            {"group": 1, "reward": 0.0, "tokens": ["1", "2"], "thr": [0.0, 0.0],
             "entropy": [0.3, 0.3]}]
    return {"group_size": 2, "step": 10, "rows": rows}


def test_token_rows_and_example_group():
    df = pd.DataFrame(records.token_rows(_record(), "thr_p0", 1))
    assert len(df) == 5 and df.mixed.tolist() == [True, True, True, False, False]
    assert (df.step == 10).all() and df.pos.tolist() == [0, 1, 0, 0, 1]
    group = anatomy.example_group(df)
    assert group == [("correct", ["4", "<eos>"], [0.5, 0.1]), ("wrong", ["7"], [-0.9])]


def test_overlap_curve_uses_mixed_groups_per_batch():
    df = pd.DataFrame(records.token_rows(_record(), "thr_p0", 0))
    curve = anatomy.overlap_curve(df, [1 / 3, 1.0])
    # mixed tokens: |thr| = 0.5, 0.1, 0.9; entropy 0.2, 0.1, 1.0 -> the top-1 is the same token
    assert curve.overlap.tolist() == [1.0, 1.0] and curve.n.tolist() == [1, 1]


def test_token_table_without_records_says_why(tmp_path):
    runs = pd.DataFrame([{"method": "grpo", "seed": 0, "run_id": "x", "run_dir": str(tmp_path)}])
    with pytest.raises(ValueError, match="thr_mode"):
        anatomy.token_table(runs)
