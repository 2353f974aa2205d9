"""thrlab.paper.study: paired tables, claims and verdicts on hand-made run folders with per-problem
records, against thrlab.core.stats applied by hand and naive references written here."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as scipy_t

from thrlab.paper import controls, frontier, paired, study
from thrlab.train.runs import write_json


def _records_run(root, method, seed, greedy, correct, samples=4, phase="eval_after", ids=None):
    """A run folder whose eval file holds per-problem records (what paired tables read)."""
    d = root / f"{method}-{seed}"
    ids = ids or [f"arith/heldout/{i}" for i in range(len(greedy))]
    rec = {"ids": ids, "greedy": greedy, "correct": correct, "samples": samples}
    write_json(d / f"{phase}.json", {"sets": {"arithmetic": {}}, "mean": {}, "problems":
                                     {"arithmetic": rec}})
    return {"method": method, "seed": seed, "run_id": d.name, "run_dir": str(d)}


def test_paired_table_is_paired_difference_of_the_per_problem_scores(tmp_path):
    from thrlab.core.passk import pass_at_k
    from thrlab.core.stats import minimum_detectable_effect, paired_difference

    rng = np.random.default_rng(0)
    g = {m: rng.integers(0, 2, size=(3, 12)) for m in ("grpo", "thr_p0")}
    c = {m: rng.integers(0, 5, size=(3, 8)) for m in ("grpo", "thr_p0")}
    runs = pd.DataFrame([_records_run(tmp_path, m, s, g[m][s].tolist(), c[m][s].tolist())
                         for m in ("grpo", "thr_p0") for s in (2, 0, 1)])  # any order
    t = paired.paired_table(runs, ["greedy_acc", "pass@2"]).set_index("metric")
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
        paired.paired_table(runs, ["greedy_acc"])
    runs = pd.DataFrame([_records_run(tmp_path / "b", "grpo", 0, [1, 0], [1, 1]),
                         _records_run(tmp_path / "b", "thr_p0", 0, [1, 1], [2, 1])])
    t = paired.paired_table(runs, ["greedy_acc"])
    assert t["diff"].iloc[0] == 0.5 and np.isnan(t.ci_low.iloc[0]) and t.seeds.iloc[0] == 1


def test_gain_table_pairs_each_run_with_its_start(tmp_path):
    from thrlab.core.stats import paired_difference

    rng = np.random.default_rng(1)
    before, after = rng.integers(0, 2, (2, 10)), rng.integers(0, 2, (2, 10))
    rows = []
    for s in (0, 1):
        rows.append(_records_run(tmp_path, "grpo", s, after[s].tolist(), [0] * 10))
        _records_run(tmp_path, "grpo", s, before[s].tolist(), [0] * 10, phase="eval_before")
    t = paired.gain_table(pd.DataFrame(rows), ["greedy_acc"])
    assert t["diff"].iloc[0] == pytest.approx(paired_difference(before, after)["mean"])
    assert t.before.iloc[0] == pytest.approx(before.mean())


def test_seed_differences_are_paired_by_seed():
    from thrlab.core.stats import seed_difference

    table = pd.DataFrame({"method": ["grpo"] * 3 + ["thr_explore"] * 3, "seed": [0, 1, 2] * 2,
                          "entropy_after": [1.0, 0.8, 0.9, 1.2, 0.7, 1.3], "problems": 200})
    t = study.seed_differences(table, "entropy_after")
    want = seed_difference([1.0, 0.8, 0.9], [1.2, 0.7, 1.3])
    assert t["diff"].iloc[0] == pytest.approx(want["mean"])
    assert (t.ci_low.iloc[0], t.ci_high.iloc[0]) == pytest.approx((want["ci_low"],
                                                                   want["ci_high"]))


def test_verdict_reads_the_interval_in_the_claimed_direction():
    assert study.verdict(1, 0.01, 0.05) == "reproduced"
    assert study.verdict(1, -0.05, -0.01) == "refuted"
    assert study.verdict(-1, -0.05, -0.01) == "reproduced"
    assert study.verdict(1, -0.01, 0.05) == "not resolved"
    assert study.verdict(1, float("nan"), float("nan")) == "one seed: mechanics only"
    # in a family, Holm's adjusted p decides: an interval that excludes 0 alone may not survive
    assert study.verdict(1, 0.01, 0.05, p_holm=0.2) == "not resolved"
    assert study.verdict(1, -0.05, -0.01, p_holm=0.01) == "refuted"
    assert study.bound(1, -0.032, 0.104) == 0.104 and study.bound(-1, -0.1, 0.02) == -0.1


def test_comparable_needs_equivalence_not_an_interval_that_holds_0():
    """The old rule called any interval holding 0 'consistent' (comparable) and a precise small
    difference 'refuted'. Now: a wide interval holding 0 shows nothing; equivalence needs the
    90% interval inside +-margin (TOST), whatever the 95% interval says about 0."""
    wide = dict(ci90=(-0.043, 0.047), margin=0.02)  # +0.2 [-5.1, +5.5] points
    assert study.verdict(0, -0.051, 0.055, **wide) == "not shown"
    precise = dict(ci90=(-0.017, -0.003), margin=0.02)  # small, precise, excludes 0
    assert study.verdict(0, -0.019, -0.001, **precise) == "equivalent"
    assert study.verdict(0, -0.041, -0.004, ci90=(-0.038, -0.007), margin=0.02) == "different"
    assert study.verdict(0, -0.01, 0.01, ci90=(-0.008, 0.008), margin=0.02) == "equivalent"
    with pytest.raises(ValueError, match="equivalence margin"):
        study.verdict(0, -0.01, 0.05)


def _holm_rejects(p, alpha):
    """Holm's procedure as its definition: walk the p-values upwards, reject while
    p_(i) <= alpha / (m - i), stop at the first that is not."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    out = set()
    for i, j in enumerate(order):
        if p[j] > alpha / (len(p) - i):
            break
        out.add(j)
    return out


def test_holm_adjusted_p_rejects_what_holms_procedure_rejects():
    rng = np.random.default_rng(4)
    for _ in range(200):
        p = (rng.uniform(0, 0.1, size=rng.integers(1, 9)) ** rng.uniform(0.5, 2)).tolist()
        adj = study.holm(p)
        assert all(a >= q for a, q in zip(adj, p)) and max(adj) <= 1
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, a in enumerate(adj) if a <= alpha} == _holm_rejects(p, alpha)
    assert study.holm([0.01, float("nan"), 0.04]) == pytest.approx([0.02, float("nan"), 0.04],
                                                                    nan_ok=True)


def test_claims_table_is_the_paired_table_of_each_claim(tmp_path):
    rng = np.random.default_rng(2)
    methods = ("grpo", "thr_p0", "thr_exploit")
    g = {m: rng.integers(0, 2, size=(3, 20)) for m in methods}
    g["thr_exploit"] = np.maximum(g["thr_exploit"], g["grpo"])  # above GRPO on every problem
    c = {m: rng.integers(0, 9, size=(3, 10)) for m in methods}
    runs = pd.DataFrame([_records_run(tmp_path, m, s, g[m][s].tolist(), c[m][s].tolist(),
                                      samples=8) for m in methods for s in range(3)])
    t = study.claims_table(runs)
    claims = [c for c in study.CLAIMS if {c[2], c[3]} <= set(methods)
              and c[4] not in ("strategy_entropy", "frontier")]  # no labels, no step evals
    # pass@top is Pass@K at K = samples / 2 (from 8 samples, Pass@4), not a 0/1 Pass@8
    assert len(t) == len(claims) and set(t.metric) == {"greedy_acc", "pass@4"}
    for row in t.itertuples():
        want = paired.paired_table(runs[runs.method.isin([row.method, row.baseline])],
                                  [row.metric], baseline=row.baseline).iloc[0]
        assert (row.diff, row.ci_low, row.ci_high, row.mde) == pytest.approx(
            (want["diff"], want.ci_low, want.ci_high, want.mde))
        # the 90% interval and p from the same t-distribution as the 95% interval
        t95 = (row.ci_high - row.ci_low) / 2 / row.se
        assert t95 == pytest.approx(scipy_t.ppf(0.975, row.df))
        assert (row.ci90_high - row.ci90_low) / 2 == pytest.approx(scipy_t.ppf(0.95, row.df)
                                                                   * row.se)
        assert row.p == pytest.approx(2 * scipy_t.sf(abs(row.diff) / row.se, row.df))
    directional = t[t.direction != 0]
    assert directional.p_holm.tolist() == pytest.approx(study.holm(directional.p.tolist()))
    for row in t.itertuples():
        assert row.verdict == study.verdict(
            row.direction, row.ci_low, row.ci_high, ci90=(row.ci90_low, row.ci90_high),
            margin=row.margin, p_holm=None if row.direction == 0 else row.p_holm)
    e3 = t[(t.method == "thr_exploit") & (t.baseline == "grpo")].iloc[0]
    assert e3["diff"] > 0 and e3.seeds == 3 and e3.problems == 20


def test_claims_table_reads_strategy_diversity_per_seed(tmp_path):
    from thrlab.core.stats import seed_difference

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
    t = study.claims_table(pd.DataFrame(rows)).set_index("metric")
    want = seed_difference(after["grpo"], after["thr_explore"])
    r = t.loc["strategy_entropy"]
    assert r["diff"] == pytest.approx(want["mean"]) and r.verdict == "reproduced"
    assert (r.ci_low, r.ci_high) == pytest.approx((want["ci_low"], want["ci_high"]))
    assert r.mde > 0 and r.seeds == 3


def test_paired_table_pairs_only_the_seeds_both_methods_have(tmp_path):
    from thrlab.core.stats import paired_difference

    rng = np.random.default_rng(4)
    g = {m: rng.integers(0, 2, size=(4, 10)) for m in ("grpo", "thr_p0")}
    rows = [_records_run(tmp_path, m, s, g[m][s].tolist(), [0] * 10)
            for m in ("grpo", "thr_p0") for s in range(4) if (m, s) != ("grpo", 2)]
    t = paired.paired_table(pd.DataFrame(rows), ["greedy_acc"]).iloc[0]
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
    rep = study.replication(first, second, pooled)
    assert [(r["claim"], r["same_verdict"], r["inside"], r["confirmed"]) for r in rep] == [
        ("a", True, True, True), ("b", False, False, False)]
    assert rep[1]["pooled"]["diff"] == -0.01 and rep[0]["second"]["verdict"] == "reproduced"


def _frontier_run(root, method, seed, trajectory, steps=4, samples=4):
    """A run folder with eval_before, eval_step2 (on the first 3 problems) and eval_after;
    trajectory: {step: (greedy 0/1 list of 5, correct counts list of 5)}."""
    d = root / f"{method}-{seed}"
    write_json(d / "config.json", {"steps": steps})
    ids = [f"p{i}" for i in range(5)]
    for step, name in ((0, "eval_before"), (2, "eval_step2"), (steps, "eval_after")):
        g, c = trajectory[step]
        n = 3 if name == "eval_step2" else 5
        write_json(d / f"{name}.json", {"problems": {"arith": {
            "ids": ids[:n], "greedy": g[:n], "correct": c[:n], "samples": samples}}})
    return {"method": method, "seed": seed, "run_dir": str(d)}


def test_frontier_points_read_every_evaluation_on_the_step_evaluations_problems(tmp_path):
    from thrlab.core.passk import pass_at_k

    traj = {0: ([0, 0, 1, 1, 1], [1, 2, 3, 0, 0]), 2: ([1, 0, 1], [2, 2, 4]),
            4: ([1, 1, 1, 0, 0], [4, 4, 4, 4, 4])}
    pts = frontier.frontier_points(pd.DataFrame([_frontier_run(tmp_path, "grpo", 0, traj)]), 2)
    assert pts.step.tolist() == [0, 2, 4]
    for s, (g, c) in traj.items():  # the first 3 problems only, at every step
        row = pts[pts.step == s].iloc[0]
        assert row.greedy_acc == pytest.approx(np.mean(g[:3]))
        assert row["pass@2"] == pytest.approx(np.mean([pass_at_k(4, x, 2) for x in c[:3]]))


def test_passk_at_matched_greedy_interpolates_each_run_and_pairs_seeds():
    pts = pd.DataFrame([
        dict(method="grpo", seed=s, step=t, greedy_acc=g, **{"pass@4": p})
        for s, rows in {0: [(0, 0.2, 0.8), (2, 0.4, 0.7), (4, 0.6, 0.5)],
                        1: [(0, 0.2, 0.8), (2, 0.5, 0.6), (4, 0.7, 0.5)]}.items()
        for t, g, p in rows] + [
        dict(method="thr_explore", seed=s, step=t, greedy_acc=g, **{"pass@4": p})
        for s, rows in {0: [(0, 0.2, 0.8), (2, 0.3, 0.8), (4, 0.45, 0.75)],
                        1: [(0, 0.2, 0.8), (2, 0.35, 0.8), (4, 0.38, 0.8)]}.items()
        for t, g, p in rows])
    at = frontier.passk_at_greedy(pts, 0.4, 4).set_index(["method", "seed"])["pass@4"]
    assert at[("grpo", 0)] == pytest.approx(0.7)  # reached exactly at step 2
    assert at[("grpo", 1)] == pytest.approx(0.8 + (0.4 - 0.2) / 0.3 * (0.6 - 0.8))
    assert at[("thr_explore", 0)] == pytest.approx(0.8 + (0.4 - 0.3) / 0.15 * (0.75 - 0.8))
    assert np.isnan(at[("thr_explore", 1)])  # never reaches 0.4: left out of the pairing
    t = frontier.matched_frontier(pts, 0.4, 4)
    assert t.seeds.tolist() == [1] and t["diff"].iloc[0] == pytest.approx(
        at[("thr_explore", 0)] - at[("grpo", 0)])
    assert np.isnan(t.ci_low.iloc[0])  # one seed: mechanics only


def test_passk_top_is_the_largest_power_of_2_at_most_half_the_samples():
    assert [study.passk_top(n) for n in (2, 4, 8, 64, 100, 128)] == [1, 2, 4, 32, 32, 64]


def test_frontier_claims_pair_each_method_with_grpo_by_seed_and_lr(tmp_path):
    """frontier_claims against a naive recomputation: the target is the start's greedy
    accuracy + gain; per seed, the mean over the lrs where both runs reach it of the method's
    interpolated pass@k minus GRPO's at the same lr; a t-interval over seeds."""
    from thrlab.core.passk import pass_at_k

    rng = np.random.default_rng(5)
    start = ([1, 0, 1, 0, 0], [2, 1, 3, 0, 1])
    rows, runs = [], []
    for method in ("grpo", "thr_explore"):
        for f in (0.5, 1.0, 2.0):
            label = method if f == 1 else f"{method}@{f:g}lr"
            for seed in range(3):
                traj = {0: start,
                        2: (rng.integers(0, 2, 5).tolist(), rng.integers(0, 5, 5).tolist()),
                        4: ([1, 1, 1, 0, 1], rng.integers(0, 5, 5).tolist())}
                runs.append(_frontier_run(tmp_path / label, label, seed, traj))
                rows.append((method, f, seed, traj))
    runs = pd.DataFrame(runs)
    t = controls.frontier_claims(runs, 2, gain=0.2)
    target = np.mean(start[0][:3]) + 0.2

    def at(traj):  # the first step whose greedy (first 3 problems) reaches target, interpolated
        g = [np.mean(traj[s][0][:3]) for s in (0, 2, 4)]
        p = [np.mean([pass_at_k(4, c, 2) for c in traj[s][1][:3]]) for s in (0, 2, 4)]
        for i in range(3):
            if g[i] >= target:
                return p[i] if i == 0 else p[i - 1] + (target - g[i - 1]) / (g[i] - g[i - 1]) * (
                    p[i] - p[i - 1])
        return float("nan")

    vals = {(m, f, s): at(tr) for m, f, s, tr in rows}
    d = []
    for seed in range(3):
        pairs = [(vals[("thr_explore", f, seed)], vals[("grpo", f, seed)]) for f in (0.5, 1.0, 2.0)
                 if not np.isnan(vals[("thr_explore", f, seed)] + vals[("grpo", f, seed)])]
        if pairs:
            d.append(np.mean([a - b for a, b in pairs]))
    row = t[t.method == "thr_explore"].iloc[0]
    assert len(d) == 3 and row["diff"] == pytest.approx(np.mean(d)) and row.seeds == 3
    half = scipy_t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / np.sqrt(len(d))
    assert (row.ci_low, row.ci_high) == pytest.approx((np.mean(d) - half, np.mean(d) + half))
    assert row.target == pytest.approx(target) and row.problems == 3


def test_study_cells_and_run_labels_name_each_run_of_the_controls_study():
    from thrlab.train.presets import from_preset, run_id

    own = from_preset("narrowing").lr
    front = controls.study_cells("narrowing", [0, 1], "frontier")
    assert len(front) == 2 * len(controls.FRONTIER_METHODS) * len(controls.LR_FACTORS)
    labels = {c[0] for c in front}
    assert labels == {m if f == 1 else f"{m}@{f:g}lr" for m in controls.FRONTIER_METHODS
                      for f in controls.LR_FACTORS}
    for label, seed, cfg in front:
        assert cfg.frontier_every == controls.FRONTIER["frontier_every"] and cfg.threads == 1
        assert cfg.lr == pytest.approx(own * (1 if "@" not in label else
                                              float(label.split("@")[1][:-2])))
    dose = controls.study_cells("narrowing", [0], "dose")
    assert [c[0] for c in dose] == [f"thr p={p:+g}" for p in controls.DOSE_P
                                    if p not in (-0.1, 0.0, 0.1)]
    assert [c[2].thr_p for c in dose] == [p for p in controls.DOSE_P if p not in (-0.1, 0.0, 0.1)]
    masks = controls.study_cells("narrowing", [0], "masks")
    assert [c[0] for c in masks] == list(controls.MASK_CONTROLS)
    (label, _, cfg), = controls.study_cells("narrowing", [3], "matched", matched_lr=4.1e-4)
    assert label == controls.MATCHED and cfg.lr == 4.1e-4 and cfg.seed == 3
    assert controls.run_label(cfg) == "grpo@0.82lr"  # without the matched lr: a ladder-style label
    with pytest.raises(ValueError, match="matched_lr"):
        controls.study_cells("narrowing", [0], "matched")
    # every run of one seed is a distinct run
    cells = [c for part in ("frontier", "masks", "dose") for c in controls.study_cells(
        "narrowing", [0], part)]
    assert len({run_id(c[2]) for c in cells}) == len(cells)


def _metrics_run(root, method, seed, lr, rows):
    d = root / f"{method}-{seed}"
    d.mkdir(parents=True)
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"method": method, "seed": seed, "lr": lr, "run_dir": str(d)}


def test_matched_control_lr_interpolates_grpos_distance_ladder_in_log_lr(tmp_path):
    """The lr where GRPO's seed-mean final distance equals THR p = 0's, by a naive
    log-linear interpolation between the two ladder lrs around it; the matched run itself
    (another GRPO lr) is not part of the ladder."""
    import math

    ladder = {0.25e-3: [1.0, 1.2], 0.5e-3: [2.0, 2.2], 1e-3: [4.0, 3.8]}
    runs = []
    for lr, ds in ladder.items():
        label = "grpo" if lr == 0.5e-3 else f"grpo@{lr / 0.5e-3:g}lr"
        for seed, dist in enumerate(ds):
            runs.append(_metrics_run(tmp_path / label, label, seed, lr,
                                     [{"step": 1, "train/distance": 0.1},
                                      {"step": 2, "train/distance": dist}]))
    for seed, dist in enumerate([1.4, 1.6]):
        runs.append(_metrics_run(tmp_path / "thr", "thr_p0", seed, 0.5e-3,
                                 [{"step": 2, "train/distance": dist}]))
    runs.append(_metrics_run(tmp_path / "m", "grpo@0.9lr", 0, 4.5e-4,
                             [{"step": 2, "train/distance": 99.0}]))
    m = controls.matched_control_lr(pd.DataFrame(runs))
    w = (1.5 - 1.1) / (2.1 - 1.1)
    want = math.exp(math.log(0.25e-3) + w * (math.log(0.5e-3) - math.log(0.25e-3)))
    assert m["lr_exact"] == pytest.approx(want) and m["lr"] == float(f"{want:.2g}")
    assert m["target"] == pytest.approx(1.5) and len(m["ladder"]) == 3
    mech = controls.mechanics_table(pd.DataFrame(runs))
    assert mech.distance.tolist()[:2] == [1.0, 1.2]  # the last value, not the first
    assert mech.kl_start.isna().all() and mech.frac_kept.isna().all()  # not logged: NaN


def test_dose_table_reads_p_from_each_label_and_pairs_with_grpo(tmp_path):
    rng = np.random.default_rng(4)
    methods = ("grpo", "thr_explore", "thr_p0", "thr p=+0.5")
    runs = pd.DataFrame([_records_run(tmp_path, m, s, rng.integers(0, 2, 10).tolist(),
                                      rng.integers(0, 5, 10).tolist())
                         for m in methods for s in range(2)])
    t = controls.dose_table(runs, ["greedy_acc"])
    assert t.p.tolist() == [-0.1, 0.0, 0.5]
    for r in t.itertuples():
        want = paired.paired_table(runs[runs.method.isin([r.method, "grpo"])], ["greedy_acc"])
        assert r.diff == pytest.approx(want["diff"].iloc[0])


def test_with_kl_reads_each_runs_probe_at_the_evaluated_steps(tmp_path):
    run = _metrics_run(tmp_path, "grpo", 0, 5e-4, [{"step": 10, "probe/kl_start": 0.1},
                                                   {"step": 20, "train/loss": 1.0},
                                                   {"step": 20, "probe/kl_start": 0.3}])
    pts = pd.DataFrame({"method": "grpo", "seed": 0, "step": [0, 20, 30]})
    got = frontier.with_kl(pts, pd.DataFrame([run])).kl_start.tolist()
    assert got[:2] == [0.0, 0.3] and np.isnan(got[2])
