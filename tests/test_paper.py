"""thrlab.paper.grid: the readers behind the paper notebooks, on hand-made run folders, against naive
references written here (sets, loops, sorting)."""
import json

import numpy as np
import pandas as pd
import pytest

from thrlab.paper import grid
from thrlab.train.presets import from_preset
from thrlab.train.runs import write_json


def test_grid_config_is_preset_then_method_then_overrides():
    cfg = grid.grid_config("tiny", "thr_explore", 3, {"eval_limit": 7})
    assert cfg == from_preset("tiny", "thr_explore", seed=3, eval_limit=7)
    assert cfg.thr_p == -0.1 and cfg.seed == 3
    with pytest.raises(ValueError, match="unknown config key"):
        grid.grid_config("tiny", "grpo", 0, {"nope": 1})


def test_e4_passk_average_is_table_2s_sets_on_paper_presets():
    """The paper's Table 2 averages Pass@K over AIME24, AIME25 and AMC23 only."""
    from thrlab.plan.rehearsal import PAPER_PRESETS

    for preset in PAPER_PRESETS:
        sets = grid.exploration_sets(preset, [])
        assert sets == ["aime24", "aime25", "amc23"]
        assert set(sets) < set(from_preset(preset).eval_sets)  # a subset of what the runs evaluate
    for preset in ("tiny", "narrowing", "strategies"):
        assert grid.exploration_sets(preset, []) is None  # the runs' own (arithmetic) set
    assert grid.exploration_sets("qwen2.5-math-7b", ["math500"]) == ["math500"]


def test_llama_swap():
    assert grid.llama_swap("tiny") == ("tiny", {"tiny_arch": "llama"})
    assert grid.llama_swap("qwen2.5-math-1.5b") == ("llama-3.2-3b-instruct", {})
    preset, extra = grid.llama_swap("tiny")
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
    long = grid.eval_table(runs)
    assert grid.by_method(long, "greedy_acc", "a") == {"grpo": [0.4, 0.6], "thr_p0": [0.5],
                                                        "kl_cov": [0.5]}
    assert grid.by_method(long, "greedy_acc")["grpo"] == [0.75 * 0.4, 0.75 * 0.6]
    table = grid.mean_std_table(long, "greedy_acc")
    assert list(table.columns) == ["a", "b", "average"]
    assert table.loc["grpo", "a"] == f"{0.5:.3f} ± {0.1:.3f} (n=2)"
    xs, ys, err = grid.curves_from_long(grid.passk_long(long))
    assert xs["grpo"] == [1, 2] and ys["grpo"] == pytest.approx([0.4, 0.6])
    assert err["grpo"] == pytest.approx([0.1, 0.1]) and err["thr_p0"] == [0.0, 0.0]


def test_passk_curve_sorts_by_k():
    assert grid.passk_curve({"pass@16": 0.9, "pass@2": 0.5, "greedy_acc": 0.1,
                              "pass@1": 0.3}) == ([1, 2, 16], [0.3, 0.5, 0.9])


def test_runtime_table_reads_disjoint_phases(runs):
    """runs.STEP_PHASES are disjoint timers (THR is never inside time/update): each phase is its
    own mean and 'other' is the step minus their sum."""
    t = grid.runtime_table(grid.metrics_table(runs), runs)
    assert t.loc["thr_p0", "update"] == 3.0 and t.loc["thr_p0", "thr"] == 1.0
    assert t.loc["kl_cov", "update"] == 3.0 and t.loc["kl_cov", "old_logp"] == 1.0
    assert t.loc["grpo", "other"] == pytest.approx(10.0 - 7.0)
    assert t.loc["thr_p0", "other"] == pytest.approx(10.0 - 8.0)
    assert (t.sum(1) == 10.0).all()  # the phases and 'other' add up to the step


def test_metrics_and_reward_curve(runs):
    m = grid.metrics_table(runs)
    assert len(m) == 8 and set(m.method) == {"grpo", "thr_p0", "kl_cov"}
    xs, ys, err = grid.curve_by_method(m, "time/step")
    assert xs["grpo"] == [1, 2] and ys["grpo"] == [10.0, 10.0] and err["grpo"] == [0.0, 0.0]


def test_write_outputs(tmp_path):
    (tmp_path / "f.png").write_bytes(b"png")
    path = grid.write_outputs(tmp_path, figures=["f"], run_ids=["b", "a", "b"],
                               headline={"x": np.float64(0.5)},
                               tables={"t": pd.DataFrame({"v": [1]})})
    out = json.loads(path.read_text())
    assert out == {"figures": ["f"], "run_ids": ["a", "b"], "headline": {"x": 0.5},
                   "tables": ["t"]}
    assert (tmp_path / "t.csv").exists()
    with pytest.raises(FileNotFoundError, match="missing"):
        grid.write_outputs(tmp_path, figures=["missing"], run_ids=[], headline={})
