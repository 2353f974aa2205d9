"""The Task object (thrlab.tasks.task) against the loaders it replaces, your own data end to end,
the guards against silent no-ops, and the two docs pages that show how to extend thrlab, run as
written."""
import json
import logging
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

from thrlab.core.errors import ConfigError, DataError
from thrlab.tasks.arithmetic import arithmetic_problems
from thrlab.tasks.benchmarks import load_benchmark
from thrlab.tasks.chains import STRATEGIES, strategy_of
from thrlab.tasks.task import _REGISTRY, Task, eval_task, per_item, register, task_of
from thrlab.train.presets import from_preset

ROOT = Path(__file__).resolve().parents[1]
OWN = ROOT / "examples" / "own_data"


@pytest.fixture(autouse=True)
def _clean_registry():
    yield
    _REGISTRY.clear()


def test_builtin_tasks_are_the_loaders():
    cfg = from_preset("tiny")
    task = task_of(cfg)
    assert task.train(3) == arithmetic_problems(None, "train", seed=3, op="mul")
    assert task.heldout(50) == arithmetic_problems(50, "heldout", seed=0, op="mul")
    assert task.label is None and task.labels_of(["1*2"], ["2"]) is None
    strategies = task_of(from_preset("strategies"))
    q, c = "12*34", "12*30+12*4=408"
    assert strategies.labels_of([q], [c]) == [strategy_of(q, c)]
    assert set(STRATEGIES) < set(strategies.labels)
    path = str(OWN / "test.jsonl")
    assert eval_task(path, cfg).heldout(7) == load_benchmark(path, limit=7)


def test_a_grade_function_counts_its_failures():
    def grade(completion, gold):
        if completion == "boom":
            raise RuntimeError("bad parse")
        return completion == gold

    res = per_item(grade)(["3", "4", "boom"], ["3", "5", "6"])
    assert res.rewards == [1.0, 0.0, 0.0] and res.errors == 1
    assert res.as_metrics()["reward/errors"] == 1
    with pytest.raises(ValueError, match="reward in"):
        per_item(lambda c, g: 2.0)(["1"], ["1"])


def test_own_task_needs_its_eval_sets_and_drops_the_sft_control():
    with pytest.raises(ConfigError, match="eval_sets is the default"):
        from_preset("tiny", task=str(OWN / "train.jsonl"))
    cfg = from_preset("tiny", task=str(OWN / "train.jsonl"), eval_sets=str(OWN / "test.jsonl"))
    assert cfg.sft_control is False
    with pytest.raises(ConfigError, match="built in"):
        register(Task("arithmetic", train=lambda s: [], heldout=lambda n=None: []))


def test_text_the_tiny_tokenizer_cannot_read_is_refused(tmp_path):
    from thrlab.train.experiment import check_inputs

    rows = [{"question": "What is two plus three?", "answer": "5"}] * 3
    path = tmp_path / "words.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_preset("tiny", task=str(path), eval_sets=str(OWN / "test.jsonl"))
    with pytest.raises(DataError, match="cannot represent .*W.*words.jsonl"):
        check_inputs(cfg, progress=False)


def test_steps_without_signal_are_logged(caplog):
    from thrlab.train.trainer import GRPOTrainer

    trainer = types.SimpleNamespace(steps_without_signal=0, step=1,
                                    cfg=types.SimpleNamespace(group_size=8))
    flat = {"train/frac_zero_adv_groups": 1.0, "train/reward_mean": 0.0}
    with caplog.at_level(logging.WARNING, logger="thrlab.train.trainer"):
        for _ in range(4):  # a short streak is common with few prompts per step: no warning
            GRPOTrainer.warn_without_signal(trainer, flat)
        assert not caplog.records
        for _ in range(21):
            GRPOTrainer.warn_without_signal(trainer, flat)
    assert len(caplog.records) == 2 and "no learning signal in 5 steps" in caplog.records[0].message
    assert "in 25 steps" in caplog.records[1].message
    GRPOTrainer.warn_without_signal(trainer, {"train/frac_zero_adv_groups": 0.5})
    assert trainer.steps_without_signal == 0


def test_your_own_data_trains_and_evaluates_with_its_grade_function(tmp_path):
    """The Python example of docs/your-own-data.md, shortened: a registered JSONL task with a
    grade function trains, and its held-out split is what evaluation scores."""
    from thrlab.train.experiment import run_experiment
    from thrlab.train.presets import run_id

    calls = []

    def grade(completion, gold):
        calls.append(gold)
        return completion.strip().split()[-1:] == [gold]

    register(Task.from_jsonl("products", str(OWN / "train.jsonl"),
                             heldout=str(OWN / "test.jsonl"), grade=grade))
    cfg = from_preset("tiny", "thr_explore", task="products", eval_sets="products", steps=2,
                      prompts_per_step=4, group_size=4, eval_limit=12, eval_passk_limit=4,
                      eval_samples=2, threads=1)
    run_experiment(cfg, runs_root=tmp_path, progress=False)
    after = json.loads((tmp_path / run_id(cfg) / "eval_after.json").read_text())
    assert after["sets"]["products"]["n_problems"] == 12
    golds = {json.loads(line)["answer"] for line in (OWN / "test.jsonl").read_text().splitlines()}
    assert golds & set(calls) and len(calls) >= 2 * 4 * 4 + 12  # training and evaluation


def test_the_adding_a_task_page_runs():
    text = (ROOT / "docs" / "adding-a-task.md").read_text()
    diff = re.search(r"```diff\n(.*?)```", text, re.S).group(1).splitlines()
    assert diff[:2] == ["--- /dev/null", "+++ b/my_tasks.py"]  # a new file, thrlab unchanged
    code = "\n".join(line[1:] for line in diff[3:])
    exec(compile(code, "adding-a-task.md", "exec"), {})
    cfg = from_preset("tiny", "grpo", task="squares", eval_sets="squares")
    task = task_of(cfg)
    assert [p.answer for p in task.heldout(3)] == ["2500", "2601", "2704"]
    assert task.grade_fn(cfg)(["2500", "1"], ["2500", "2601"]).rewards == [1.0, 0.0]


def test_the_adding_an_objective_diff_applies_and_trains(tmp_path):
    text = (ROOT / "docs" / "adding-an-objective.md").read_text()
    diff = re.search(r"```diff\n(.*?)```", text, re.S).group(1)
    shutil.copytree(ROOT / "thrlab", tmp_path / "thrlab",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "rloo.diff").write_text(diff)
    applied = subprocess.run(["git", "apply", "rloo.diff"], cwd=tmp_path, capture_output=True,
                             text=True)
    assert applied.returncode == 0, applied.stderr
    check = """
import torch
from thrlab.core.loss import response_advantages
from thrlab.train.config import Config, field_docs
cfg = Config(adv_estimator="rloo", group_size=4)
r = torch.tensor([1., 0., 0., 1., 1., 1., 0., 1.])
got = response_advantages(r, 4, cfg).tolist()
want = [x - (sum(r[g:g + 4].tolist()) - x) / 3 for g in (0, 4) for x in r[g:g + 4].tolist()]
assert all(abs(a - b) < 1e-6 for a, b in zip(got, want)), (got, want)
assert "rloo" in field_docs()["adv_estimator"]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
