"""thrlab.paper: the readers behind the paper notebooks, on hand-made run folders, against naive
references written here (sets, loops, sorting)."""
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from thrlab import paper
from thrlab.presets import from_preset
from thrlab.runs import write_json


def test_grid_config_is_preset_then_method_then_overrides():
    cfg = paper.grid_config("tiny", "thr_explore", 3, {"eval_limit": 7})
    assert cfg == from_preset("tiny", "thr_explore", seed=3, eval_limit=7)
    assert cfg.thr_p == -0.1 and cfg.seed == 3
    with pytest.raises(ValueError, match="unknown config key"):
        paper.grid_config("tiny", "grpo", 0, {"nope": 1})


def test_e4_passk_average_is_table_2s_sets_on_paper_presets():
    """The paper's Table 2 averages Pass@K over AIME24, AIME25 and AMC23 only."""
    from thrlab.presets import PRESETS

    for preset in set(PRESETS) - {"tiny", "narrowing", "strategies"}:
        sets = paper.exploration_sets(preset, [])
        assert sets == ["aime24", "aime25", "amc23"]
        assert set(sets) < set(from_preset(preset).eval_sets)  # a subset of what the runs evaluate
    for preset in ("tiny", "narrowing", "strategies"):
        assert paper.exploration_sets(preset, []) is None  # the runs' own (arithmetic) set
    assert paper.exploration_sets("qwen2.5-math-7b", ["math500"]) == ["math500"]


def test_llama_swap():
    assert paper.llama_swap("tiny") == ("tiny", {"tiny_arch": "llama"})
    assert paper.llama_swap("qwen2.5-math-1.5b") == ("llama-3.2-3b-instruct", {})
    preset, extra = paper.llama_swap("tiny")
    assert from_preset(preset, **extra).tiny_arch == "llama"


def _fake_run(root, method, seed, greedy, passk, on_policy=True, times=None):
    d = root / f"{method}-{seed}"
    sets = {"a": {"greedy_acc": greedy, **{f"pass@{k}": v for k, v in passk.items()},
                  "n_problems": 10}, "b": {"greedy_acc": greedy / 2, "n_problems": 10}}
    mean = {"greedy_acc": 0.75 * greedy, **{f"pass@{k}": v for k, v in passk.items()}}
    write_json(d / "eval_after.json", {"sets": sets, "mean": mean})
    write_json(d / "config.json", {"epochs": 1, "mini_batches": 1 if on_policy else 4})
    rows = [dict({"step": s, "train/skipped": 0, "time/step": 10.0}, **(times or {}))
            for s in (1, 2)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"method": method, "seed": seed, "run_id": d.name, "run_dir": str(d)}


@pytest.fixture()
def runs(tmp_path):
    return pd.DataFrame([
        _fake_run(tmp_path, "grpo", 0, 0.4, {1: 0.3, 2: 0.5}, times={"time/generate": 4.0,
                                                                       "time/update": 3.0}),
        _fake_run(tmp_path, "grpo", 1, 0.6, {1: 0.5, 2: 0.7}, times={"time/generate": 4.0,
                                                                       "time/update": 3.0}),
        _fake_run(tmp_path, "thr_p0", 0, 0.5, {1: 0.4, 2: 0.6},
                  times={"time/generate": 4.0, "time/update": 3.0, "time/thr": 1.0}),
        _fake_run(tmp_path, "kl_cov", 0, 0.5, {1: 0.4, 2: 0.6}, on_policy=False,
                  times={"time/generate": 4.0, "time/update": 3.0, "time/old_logp": 1.0}),
    ])


def test_eval_tables(runs):
    long = paper.eval_table(runs)
    assert paper.by_method(long, "greedy_acc", "a") == {"grpo": [0.4, 0.6], "thr_p0": [0.5],
                                                        "kl_cov": [0.5]}
    assert paper.by_method(long, "greedy_acc")["grpo"] == [0.75 * 0.4, 0.75 * 0.6]
    table = paper.mean_std_table(long, "greedy_acc")
    assert list(table.columns) == ["a", "b", "average"]
    assert table.loc["grpo", "a"] == f"{0.5:.3f} ± {0.1:.3f} (n=2)"
    xs, ys, err = paper.curves_from_long(paper.passk_long(long))
    assert xs["grpo"] == [1, 2] and ys["grpo"] == pytest.approx([0.4, 0.6])
    assert err["grpo"] == pytest.approx([0.1, 0.1]) and err["thr_p0"] == [0.0, 0.0]


def test_passk_curve_sorts_by_k():
    assert paper.passk_curve({"pass@16": 0.9, "pass@2": 0.5, "greedy_acc": 0.1,
                              "pass@1": 0.3}) == ([1, 2, 16], [0.3, 0.5, 0.9])


def test_runtime_table_splits_thr_out_of_on_policy_updates(runs):
    t = paper.runtime_table(paper.metrics_table(runs), runs)
    assert t.loc["thr_p0", "update"] == 2.0 and t.loc["thr_p0", "thr"] == 1.0  # inside update
    assert t.loc["kl_cov", "update"] == 3.0 and t.loc["kl_cov", "old_logp"] == 1.0
    assert t.loc["grpo", "other"] == pytest.approx(10.0 - 7.0)
    assert (t.sum(1) == 10.0).all()  # the phases and 'other' add up to the step


def test_metrics_and_reward_curve(runs):
    m = paper.metrics_table(runs)
    assert len(m) == 8 and set(m.method) == {"grpo", "thr_p0", "kl_cov"}
    xs, ys, err = paper.curve_by_method(m, "time/step")
    assert xs["grpo"] == [1, 2] and ys["grpo"] == [10.0, 10.0] and err["grpo"] == [0.0, 0.0]


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
        assert paper.top_overlap(a, b, f) == len(_naive_top(a, k) & _naive_top(b, k)) / k
    assert paper.top_overlap([3, 2, 1], [3, 2, 1], 0.34) == 1.0
    assert paper.top_overlap([3, 2, 1], [1, 2, 3], 0.34) == 0.0


def test_mass_share_against_a_loop():
    v = [0.5, -3.0, 0.0, 1.5, -1.0]
    total = sum(abs(x) for x in v)
    for f, n in ((0.2, 1), (0.4, 2), (1.0, 5)):
        assert paper.mass_share(v, f) == pytest.approx(
            sum(sorted(map(abs, v), reverse=True)[:n]) / total)
    assert np.isnan(paper.mass_share([0.0, 0.0], 0.5))


def _record():
    # group 0: mixed rewards; group 1: all wrong (THR undefined, zeros)
    rows = [{"group": 0, "reward": 1.0, "tokens": ["4", "<eos>"], "thr": [0.5, 0.1],
             "entropy": [0.2, 0.1]},
            {"group": 0, "reward": 0.0, "tokens": ["7"], "thr": [-0.9], "entropy": [1.0]},
            {"group": 1, "reward": 0.0, "tokens": ["1", "2"], "thr": [0.0, 0.0],
             "entropy": [0.3, 0.3]}]
    return {"group_size": 2, "step": 10, "rows": rows}


def test_token_rows_and_example_group():
    df = pd.DataFrame(paper.token_rows(_record(), "thr_p0", 1))
    assert len(df) == 5 and df.mixed.tolist() == [True, True, True, False, False]
    assert (df.step == 10).all() and df.pos.tolist() == [0, 1, 0, 0, 1]
    group = paper.example_group(df)
    assert group == [("correct", ["4", "<eos>"], [0.5, 0.1]), ("wrong", ["7"], [-0.9])]


def test_overlap_curve_uses_mixed_groups_per_batch():
    df = pd.DataFrame(paper.token_rows(_record(), "thr_p0", 0))
    curve = paper.overlap_curve(df, [1 / 3, 1.0])
    # mixed tokens: |thr| = 0.5, 0.1, 0.9; entropy 0.2, 0.1, 1.0 -> the top-1 is the same token
    assert curve.overlap.tolist() == [1.0, 1.0] and curve.n.tolist() == [1, 1]


def test_write_outputs(tmp_path):
    (tmp_path / "f.png").write_bytes(b"png")
    path = paper.write_outputs(tmp_path, figures=["f"], run_ids=["b", "a", "b"],
                               headline={"x": np.float64(0.5)},
                               tables={"t": pd.DataFrame({"v": [1]})})
    out = json.loads(path.read_text())
    assert out == {"figures": ["f"], "run_ids": ["a", "b"], "headline": {"x": 0.5},
                   "tables": ["t"]}
    assert (tmp_path / "t.csv").exists()
    with pytest.raises(FileNotFoundError, match="missing"):
        paper.write_outputs(tmp_path, figures=["missing"], run_ids=[], headline={})


def test_token_table_without_records_says_why(tmp_path):
    runs = pd.DataFrame([{"method": "grpo", "seed": 0, "run_id": "x", "run_dir": str(tmp_path)}])
    with pytest.raises(ValueError, match="thr_mode"):
        paper.token_table(runs)



def _records_run(root, method, seed, greedy, correct, samples=4, phase="eval_after", ids=None):
    """A run folder whose eval file holds per-problem records (what paired tables read)."""
    d = root / f"{method}-{seed}"
    ids = ids or [f"arith/heldout/{i}" for i in range(len(greedy))]
    rec = {"ids": ids, "greedy": greedy, "correct": correct, "samples": samples}
    write_json(d / f"{phase}.json", {"sets": {"arithmetic": {}}, "mean": {}, "problems":
                                     {"arithmetic": rec}})
    return {"method": method, "seed": seed, "run_id": d.name, "run_dir": str(d)}


def test_paired_table_is_paired_difference_of_the_per_problem_scores(tmp_path):
    from thrlab.evaluate import pass_at_k
    from thrlab.stats import minimum_detectable_effect, paired_difference

    rng = np.random.default_rng(0)
    g = {m: rng.integers(0, 2, size=(3, 12)) for m in ("grpo", "thr_p0")}
    c = {m: rng.integers(0, 5, size=(3, 8)) for m in ("grpo", "thr_p0")}
    runs = pd.DataFrame([_records_run(tmp_path, m, s, g[m][s].tolist(), c[m][s].tolist())
                         for m in ("grpo", "thr_p0") for s in (2, 0, 1)])  # any order
    t = paper.paired_table(runs, ["greedy_acc", "pass@2"]).set_index("metric")
    want = paired_difference(g["grpo"], g["thr_p0"])
    assert t.loc["greedy_acc", "diff"] == pytest.approx(want["mean"])
    assert (t.loc["greedy_acc", "ci_low"], t.loc["greedy_acc", "ci_high"]) == \
        pytest.approx((want["ci_low"], want["ci_high"]))
    assert t.loc["greedy_acc", "mde"] == pytest.approx(
        minimum_detectable_effect(want["components"], 3, 12))
    pk = {m: np.vectorize(lambda x: pass_at_k(4, int(x), 2))(c[m]) for m in c}
    assert t.loc["pass@2", "diff"] == pytest.approx(paired_difference(pk["grpo"],
                                                                      pk["thr_p0"])["mean"])
    assert t.loc["pass@2", "problems"] == 8 and t.loc["greedy_acc", "seeds"] == 3


def test_paired_table_refuses_runs_on_other_problems_and_one_seed_has_no_interval(tmp_path):
    runs = pd.DataFrame([_records_run(tmp_path, "grpo", 0, [1, 0], [1, 1]),
                         _records_run(tmp_path, "thr_p0", 0, [1, 1], [2, 1], ids=["x", "y"])])
    with pytest.raises(ValueError, match="same problems"):
        paper.paired_table(runs, ["greedy_acc"])
    runs = pd.DataFrame([_records_run(tmp_path / "b", "grpo", 0, [1, 0], [1, 1]),
                         _records_run(tmp_path / "b", "thr_p0", 0, [1, 1], [2, 1])])
    t = paper.paired_table(runs, ["greedy_acc"])
    assert t["diff"].iloc[0] == 0.5 and np.isnan(t.ci_low.iloc[0]) and t.seeds.iloc[0] == 1


def test_gain_table_pairs_each_run_with_its_start(tmp_path):
    from thrlab.stats import paired_difference

    rng = np.random.default_rng(1)
    before, after = rng.integers(0, 2, (2, 10)), rng.integers(0, 2, (2, 10))
    rows = []
    for s in (0, 1):
        rows.append(_records_run(tmp_path, "grpo", s, after[s].tolist(), [0] * 10))
        _records_run(tmp_path, "grpo", s, before[s].tolist(), [0] * 10, phase="eval_before")
    t = paper.gain_table(pd.DataFrame(rows), ["greedy_acc"])
    assert t["diff"].iloc[0] == pytest.approx(paired_difference(before, after)["mean"])
    assert t.before.iloc[0] == pytest.approx(before.mean())


def test_seed_differences_are_paired_by_seed():
    from thrlab.stats import seed_difference

    table = pd.DataFrame({"method": ["grpo"] * 3 + ["thr_explore"] * 3, "seed": [0, 1, 2] * 2,
                          "entropy_after": [1.0, 0.8, 0.9, 1.2, 0.7, 1.3], "problems": 200})
    t = paper.seed_differences(table, "entropy_after")
    want = seed_difference([1.0, 0.8, 0.9], [1.2, 0.7, 1.3])
    assert t["diff"].iloc[0] == pytest.approx(want["mean"])
    assert (t.ci_low.iloc[0], t.ci_high.iloc[0]) == pytest.approx((want["ci_low"],
                                                                   want["ci_high"]))


def test_verdict_reads_the_interval_in_the_claimed_direction():
    assert paper.verdict(1, 0.01, 0.05) == "reproduced"
    assert paper.verdict(1, -0.05, -0.01) == "refuted"
    assert paper.verdict(-1, -0.05, -0.01) == "reproduced"
    assert paper.verdict(1, -0.01, 0.05) == "not resolved"
    assert paper.verdict(0, -0.01, 0.05) == "consistent"
    assert paper.verdict(0, 0.01, 0.05) == "refuted"
    assert paper.verdict(1, float("nan"), float("nan")) == "one seed: mechanics only"


def test_claims_table_is_the_paired_table_of_each_claim(tmp_path):
    rng = np.random.default_rng(2)
    methods = ("grpo", "thr_p0", "thr_exploit")
    g = {m: rng.integers(0, 2, size=(3, 20)) for m in methods}
    g["thr_exploit"] = np.maximum(g["thr_exploit"], g["grpo"])  # above GRPO on every problem
    c = {m: rng.integers(0, 9, size=(3, 10)) for m in methods}
    runs = pd.DataFrame([_records_run(tmp_path, m, s, g[m][s].tolist(), c[m][s].tolist(),
                                      samples=8) for m in methods for s in range(3)])
    t = paper.claims_table(runs)
    claims = [c for c in paper.CLAIMS if {c[2], c[3]} <= set(methods)
              and c[4] != "strategy_entropy"]  # no strategy labels on this task
    assert len(t) == len(claims) and set(t.metric) == {"greedy_acc", "pass@8"}
    for row in t.itertuples():
        want = paper.paired_table(runs[runs.method.isin([row.method, row.baseline])],
                                  [row.metric], baseline=row.baseline).iloc[0]
        assert (row.diff, row.ci_low, row.ci_high, row.mde) == pytest.approx(
            (want["diff"], want.ci_low, want.ci_high, want.mde))
        assert row.verdict == paper.verdict(row.direction, row.ci_low, row.ci_high)
    e3 = t[(t.method == "thr_exploit") & (t.baseline == "grpo")].iloc[0]
    assert e3["diff"] > 0 and e3.seeds == 3 and e3.problems == 20


def test_claims_table_reads_strategy_diversity_per_seed(tmp_path):
    from thrlab.stats import seed_difference

    after = {"grpo": [0.2, 0.5, 0.3], "thr_explore": [0.9, 1.1, 1.0]}
    rows = []
    for m, ents in after.items():
        for s, e in enumerate(ents):
            row = _records_run(tmp_path, m, s, [1, 0, 1], [2, 3], samples=4)
            for phase, ent in (("eval_before", 1.5), ("eval_after", e)):
                path = Path(row["run_dir"]) / f"{phase}.json"
                ev = json.loads(path.read_text()) if path.exists() else {
                    "mean": {}, "problems": json.loads((Path(row["run_dir"]) /
                                                        "eval_after.json").read_text())["problems"]}
                ev["sets"] = {"arithmetic": {"strategy_entropy": ent, "n_passk_problems": 2,
                                             "strategy_counts": {"split_a": 3, "split_b": 5}}}
                write_json(path, ev)
            rows.append(row)
    t = paper.claims_table(pd.DataFrame(rows)).set_index("metric")
    want = seed_difference(after["grpo"], after["thr_explore"])
    r = t.loc["strategy_entropy"]
    assert r["diff"] == pytest.approx(want["mean"]) and r.verdict == "reproduced"
    assert (r.ci_low, r.ci_high) == pytest.approx((want["ci_low"], want["ci_high"]))
    assert r.mde > 0 and r.seeds == 3


def test_paired_table_pairs_only_the_seeds_both_methods_have(tmp_path):
    from thrlab.stats import paired_difference

    rng = np.random.default_rng(4)
    g = {m: rng.integers(0, 2, size=(4, 10)) for m in ("grpo", "thr_p0")}
    rows = [_records_run(tmp_path, m, s, g[m][s].tolist(), [0] * 10)
            for m in ("grpo", "thr_p0") for s in range(4) if (m, s) != ("grpo", 2)]
    t = paper.paired_table(pd.DataFrame(rows), ["greedy_acc"]).iloc[0]
    keep = [0, 1, 3]  # GRPO's seed 2 is unfinished: thr_p0's seed 2 has no partner
    want = paired_difference(g["grpo"][keep], g["thr_p0"][keep])
    assert t.seeds == 3 and t["diff"] == pytest.approx(want["mean"])
    assert (t.ci_low, t.ci_high) == pytest.approx((want["ci_low"], want["ci_high"]))


def test_replication_pairs_each_claim_across_seed_sets():
    """A claim keeps its verdict or not, and each set's estimate lies in the other's interval or
    not; a claim one table lacks is left out."""
    def table(*rows):
        return pd.DataFrame([dict(experiment=e, claim=c, metric="greedy_acc", diff=d, ci_low=lo,
                                  ci_high=hi, verdict=v) for e, c, d, lo, hi, v in rows])

    first = table(("E3", "a", 0.03, 0.01, 0.05, "reproduced"),
                  ("E4", "b", -0.04, -0.07, -0.01, "refuted"), ("E5", "c", 0.0, -0.1, 0.1, "x"))
    second = table(("E3", "a", 0.02, 0.00, 0.04, "reproduced"),
                   ("E4", "b", 0.02, -0.01, 0.05, "not resolved"))
    pooled = table(("E3", "a", 0.025, 0.01, 0.04, "reproduced"),
                   ("E4", "b", -0.01, -0.03, 0.01, "not resolved"))
    rep = paper.replication(first, second, pooled)
    assert [(r["claim"], r["same_verdict"], r["inside"]) for r in rep] == [
        ("a", True, True), ("b", False, False)]
    assert rep[1]["pooled"]["diff"] == -0.01 and rep[0]["second"]["verdict"] == "reproduced"
