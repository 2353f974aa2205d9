"""The real entry points (experiment, CLI) end to end with tiny budgets: cold start, evaluation,
GRPO, SFT control, run folder, resume/reuse, and what a run folder refuses."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from thrlab import cli
from thrlab.train.presets import from_preset, run_id
from thrlab.core.errors import RunFolderError
from thrlab.train.experiment import format_summary, run_experiment
from thrlab.train.runs import RunDir
from tests.fixtures import limits

# Budgets shrunk so the whole pipeline runs in seconds; the model learns little at this size.
SMOKE = dict(sft_steps=30, sft_batch=32, steps=3, prompts_per_step=4, group_size=4,
             eval_limit=24, eval_samples=4, save_every=2)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("THRLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_run_folder_complete_and_reused(tmp_path, cache):
    cfg = from_preset("tiny", **SMOKE)
    s = run_experiment(cfg, runs_root=tmp_path / "runs", progress=False)
    run = RunDir(tmp_path / "runs" / run_id(cfg))
    for f in ("config.json", "env.json", "metrics.jsonl", "eval_before.json", "eval_after.json",
              "eval_sft_control.json", "summary.json", "COMPLETE",
              "adapter/adapter_model.safetensors", "checkpoint/COMPLETE"):
        assert (run / f).exists(), f
    assert [r["step"] for r in run.metrics()] == [1, 2, 3]
    for phase in ("eval_before", "eval_after", "eval_sft_control"):
        assert set(s[phase]) >= {"greedy_acc", "pass@1", "pass@4"}
        assert 0 <= s[phase]["greedy_acc"] <= 1
    assert s["preset"] == "tiny" and s["steps"] == 3 and s["wall_s"] > 0
    assert s["method"] == "grpo" and run.path.name.startswith("tiny-grpo-")
    assert json.loads((run / "config.json").read_text())["lr"] == cfg.lr
    assert (next(cache.glob("tiny-*")) / "COMPLETE").exists()
    # re-running a finished run reuses it (no new work, same summary)
    mtime = (run / "summary.json").stat().st_mtime
    assert run_experiment(cfg, runs_root=tmp_path / "runs", progress=False) == s
    assert (run / "summary.json").stat().st_mtime == mtime


def test_start_model_evaluation_is_shared_by_methods_of_one_seed(tmp_path, cache):
    """Every method trained with one seed from one model evaluates the same start model with the
    same sampling seed: it is evaluated once, cached, and the cache equals a fresh evaluation."""
    a = from_preset("tiny", **SMOKE)
    run_experiment(a, tmp_path / "a", progress=False)
    files = list((cache / "evals").glob("start-*.json"))
    assert len(files) == 1
    before = json.loads((tmp_path / "a" / "eval_before.json").read_text())
    files[0].unlink()  # a fresh evaluation of the same start by another method: identical
    run_experiment(from_preset("tiny", "thr_p0", **SMOKE), tmp_path / "b", progress=False)
    fresh = json.loads((tmp_path / "b" / "eval_before.json").read_text())
    assert {k: v for k, v in fresh.items() if k != "wall_s"} == \
        {k: v for k, v in before.items() if k != "wall_s"}
    run_experiment(from_preset("tiny", "clip_higher", **SMOKE), tmp_path / "c", progress=False)
    assert json.loads((tmp_path / "c" / "eval_before.json").read_text()) == fresh  # the cache
    # another seed or another evaluation setting is another start evaluation
    run_experiment(from_preset("tiny", **dict(SMOKE, seed=1)), tmp_path / "d", progress=False)
    run_experiment(from_preset("tiny", **dict(SMOKE, eval_samples=2)), tmp_path / "e",
                   progress=False)
    assert len(list((cache / "evals").glob("start-*.json"))) == 3


def test_same_folder_different_config_refused(tmp_path, cache):
    cfg = from_preset("tiny", **SMOKE)
    RunDir(tmp_path / "r").path.mkdir()
    (tmp_path / "r" / "config.json").write_text(cfg.replace(lr=1.0).to_json())
    with pytest.raises(RunFolderError, match=r"different config \(lr: 1.0 -> 0.0003\)"):
        run_experiment(cfg, tmp_path / "r", progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not a thrlab run folder"):
        run_experiment(cfg, tmp_path / "other", progress=False)
    assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["notes.txt"]


# One finished run (two eval sets, no SFT control) that the tests below only read. It starts from
# the shipped cold start (cached in $THRLAB_CACHE, shared with the notebook tests), which solves
# some problems, so sampled results depend on the sampling stream. threads=1 is in its config, so
# an in-process run and a CLI process compute with the same kernels.
SHIPPED = {k: v for k, v in SMOKE.items() if not k.startswith("sft_")}
FINISHED = dict(SHIPPED, sft_control=False, threads=1)
MUL = [{"question": f"{a}*{b}", "answer": str(a * b)}
       for a, b in [(123, 4), (250, 3), (611, 7), (902, 9), (345, 2), (777, 8)]]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    root = tmp_path_factory.mktemp("finished")
    (root / "mul.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MUL))
    cfg = from_preset("tiny", **FINISHED, eval_sets=("arithmetic", str(root / "mul.jsonl")))
    summary = run_experiment(cfg, runs_root=root / "runs", progress=False)
    return {"cfg": cfg, "run": RunDir(root / "runs" / run_id(cfg)), "summary": summary}


def _main(argv, capsys):
    """The real CLI in this process: (exit status, stdout, stderr)."""
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error(err: str) -> str:
    """The CLI's failure output must be one line, `thrlab: error: ...`, with no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thrlab: error: "), err[-2000:]
    return lines[0]


def test_a_finished_folder_of_another_config_is_refused_naming_the_keys(finished, capsys):
    run = finished["run"]
    mtime = (run / "summary.json").stat().st_mtime
    other = from_preset("tiny", "thr_explore", **FINISHED, eval_sets=finished["cfg"].eval_sets)
    with pytest.raises(RunFolderError, match=r"thr_mode: 'off' -> 'thr'; thr_p: 0.0 -> -0.1\); "
                                             r"use another --run-dir.* run folder runs/tiny-thr_"):
        run_experiment(other, run.path, progress=False)
    sets = ",".join(finished["cfg"].eval_sets)
    args = [f"--set={k}={v}" for k, v in FINISHED.items()] + [f"--set=eval_sets={sets}"]
    rc, out, err = _main(["train", "--method", "thr_explore", "--run-dir", str(run.path), *args],
                         capsys)
    assert rc == 2 and out == "" and "holds a run of a different config" in _one_error(err)
    # the same config is reused, and the CLI says so
    rc, out, err = _main(["train", "--run-dir", str(run.path), *args], capsys)
    assert rc == 0 and f"reused run folder {run.path}" in out
    assert (run / "summary.json").stat().st_mtime == mtime


def test_summary_prints_each_set_their_mean_and_grading_failures(finished):
    s, run = finished["summary"], finished["run"]
    after = json.loads((run / "eval_after.json").read_text())
    names = sorted(finished["cfg"].eval_sets)  # [<tmp_path>/mul.jsonl, "arithmetic"]
    assert sorted(after["grading_by_set"]) == names == sorted(s["sets"]["after"])
    for k, total in after["grading"].items():  # per-set counts add up to the old total
        assert total == sum(after["grading_by_set"][n][k] for n in names)
    lines = format_summary(s).splitlines()
    assert lines[0].split() == ["metric", "set", "before", "after", "grpo"]
    from thrlab.core.stats import problem_difference  # the run's own greedy gain, paired per problem

    recs = [json.loads((run / f"eval_{p}.json").read_text())["problems"] for p in ("before", "after")]
    gain = problem_difference(*([x for n in names for x in r[n]["greedy"]] for r in recs))
    assert s["greedy_gain"] == pytest.approx(gain)
    assert f"greedy accuracy {100 * gain['mean']:+.1f} points" in format_summary(s)
    cells, metric = {}, None
    for line in lines[1:lines.index(next(x for x in lines if x.startswith("grading")))]:
        words = line.split()
        if not line.startswith(" "):
            metric, words = words[0], words[1:]
        cells[metric, words[0]] = words[1:]
    for name in ("arithmetic", names[0]):
        assert cells["greedy_acc", Path(name).name] == [
            f"{s['sets'][p][name]['greedy_acc']:.3f}" for p in ("before", "after")]
    assert cells["pass@4", "mean"] == [f"{s[f'eval_{p}']['pass@4']:.3f}"
                                       for p in ("before", "after")]
    assert "(timeouts / errors / parse failures / gold parse failures" in lines[-3]
    for line, name in zip(lines[-2:], names):  # each set's counts, before and after
        assert line.split() == [Path(name).name] + [
            "/".join(str(s["grading"][p][name][k]) for k in ("timeouts", "errors",
                                                            "parse_failures",
                                                            "gold_parse_failures"))
            for p in ("before", "after")]


def test_evaluate_run_dir_reproduces_eval_after_and_refuses_contradicting_sets(finished, tmp_path,
                                                                              capsys):
    run = finished["run"]
    out = limits.run([sys.executable, "-m", "thrlab", "evaluate", "--quiet", "--run-dir",
                      str(run.path), "--out", str(tmp_path / "e.json")], capture_output=True,
                     text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "e.json").read_text())
    after = json.loads((run / "eval_after.json").read_text())
    res.pop("wall_s"), after.pop("wall_s")
    assert res == after  # greedy and sampled: the run's config, adapter and eval seed
    assert 0 < after["mean"]["pass@4"] < 1  # so the samples depend on the stream
    rc, _, err = _main(["evaluate", "--run-dir", str(run.path), "--set", "lora_alpha=64"], capsys)
    assert rc == 2 and "lora_alpha=64 (the adapter has 32) contradicts" in _one_error(err)
    rc, _, err = _main(["evaluate", "--adapter", str(run / "adapter"), "--set", "lora_r=8"], capsys)
    assert rc == 2 and "lora_r=8 (the adapter has 16)" in _one_error(err)
    # checked before the model loads: a model that cannot load is never reached
    nomodel = ["--set", f"model={tmp_path / 'no_model'}"]
    rc, _, err = _main(["evaluate", "--adapter", str(tmp_path), *nomodel], capsys)
    assert rc == 2 and "adapter_model.safetensors not found" in _one_error(err)
    rc, _, err = _main(["evaluate", "--set", f"eval_sets={tmp_path / 'nope.jsonl'}", *nomodel],
                       capsys)
    assert rc == 2 and "nope.jsonl does not exist" in _one_error(err)


def test_a_steps_0_run_evaluates_before_and_after_identically(tmp_path):
    """Every evaluation of a run draws experiment.eval_seed(cfg): an unchanged model scores the
    same before and after, greedy and sampled (common random numbers)."""
    cfg = from_preset("tiny", **dict(SHIPPED, steps=0, sft_control=False, threads=1))
    s = run_experiment(cfg, runs_root=tmp_path / "runs", progress=False)
    run = RunDir(tmp_path / "runs" / run_id(cfg))
    before, after = (json.loads((run / f"eval_{p}.json").read_text()) for p in ("before", "after"))
    before.pop("wall_s"), after.pop("wall_s")
    assert before == after and 0 < before["mean"]["pass@4"] < 1
    assert "after 0 steps" in format_summary(s).splitlines()[0]


def test_second_process_on_a_run_folder_refuses_and_a_dead_holder_does_not_block(tmp_path):
    """The same command twice on one folder: the second refuses with the holder's pid and writes
    nothing; once the holder is killed, its lock file does not block the next run."""
    run = RunDir(tmp_path / "run")
    cmd = [sys.executable, "-m", "thrlab", "train", "--quiet", "--run-dir", str(run.path),
           *[f"--set={k}={v}" for k, v in dict(FINISHED, steps=6).items()]]
    holder = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    def holding():  # config.json is written once the holder has the folder
        assert holder.poll() is None, holder.stderr.read()[-2000:]
        return (run / "config.json").exists()

    limits.wait_for(holding, "the first train process taking its run folder")
    os.kill(holder.pid, signal.SIGSTOP)  # the holder is mid-run for as long as we need
    try:
        second = limits.run(cmd, capture_output=True, text=True)
        assert second.returncode == 2, second.stderr[-2000:]
        assert _one_error(second.stderr) == (f"thrlab: error: another thrlab process (pid "
                                             f"{holder.pid}) is running in {run.path}; wait for "
                                             "it or use another --run-dir")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        holder.stderr.close()
    assert (run / ".lock").read_text().strip() == str(holder.pid)  # left behind by the dead
    third = limits.run(cmd, capture_output=True, text=True)
    assert third.returncode == 0, third.stderr[-2000:]
    assert [r["step"] for r in run.metrics()] == [1, 2, 3, 4, 5, 6] and run.complete


def test_cli_train_and_errors(tmp_path, cache):
    env_args = [f"--set={k}={v}" for k, v in SMOKE.items()] + ["--set=sft_control=false"]
    out = limits.run([sys.executable, "-m", "thrlab", "train", "--quiet", "--runs-root",
                      str(tmp_path / "runs"), *env_args], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "greedy_acc" in out.stdout and "run folder:" in out.stdout
    bad = limits.run([sys.executable, "-m", "thrlab", "train", "--set", "lrr=1"],
                     capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'lr'" in bad.stderr


def test_cli_evaluate_loads_a_run_adapter(tmp_path, cache):
    cfg = from_preset("tiny", **SMOKE, sft_control=False)
    run_experiment(cfg, runs_root=tmp_path / "runs", progress=False)
    adapter = tmp_path / "runs" / run_id(cfg) / "adapter"
    args = [f"--set={k}={v}" for k, v in SMOKE.items()]
    out = limits.run([sys.executable, "-m", "thrlab", "evaluate", "--quiet", *args,
                      "--adapter", str(adapter), "--out", str(tmp_path / "e.json")],
                     capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "e.json").read_text())
    # greedy decoding is deterministic: the CLI with the adapter reproduces the run's eval_after
    after = json.loads((tmp_path / "runs" / run_id(cfg) / "eval_after.json").read_text())
    assert res["mean"]["greedy_acc"] == after["mean"]["greedy_acc"]
    bad = limits.run([sys.executable, "-m", "thrlab", "evaluate", "--quiet", *args,
                      "--adapter", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and "adapter_model.safetensors" in _one_error(bad.stderr)


def test_thr_run_end_to_end(tmp_path, cache):
    """A THR-GRPO run through the same entry point: thr metrics logged, token records saved at
    the last step although the run is shorter than thr_save_every (10)."""
    cfg = from_preset("tiny", "thr_explore", **dict(SMOKE, sft_control=False))
    s = run_experiment(cfg, runs_root=tmp_path / "runs", progress=False)
    run = RunDir(tmp_path / "runs" / run_id(cfg))
    rows = run.metrics()
    assert all("thr/tau" in r or r["train/skipped"] for r in rows)
    assert s["method"] == "thr_explore" and "after thr_explore" in format_summary(s)
    (rec,) = json.loads((run / "thr_tokens" / "step_000003.json").read_text())["rows"][:1]
    assert re.fullmatch(r"\d{3}\*\d", rec["question"]) and run.complete


def test_a_grid_in_parallel_processes_equals_the_grid_in_one(tmp_path, cache):
    """run_grid(workers=2) trains the cells in two `thrlab train --config` processes; results do
    not depend on it (same eval files and metrics as one process, threads 1 in both)."""
    from thrlab.paper import grid

    over = dict(SMOKE, threads=1, sft_control=False)
    seq = grid.run_grid("tiny", ["grpo", "thr_p0"], [0], over, tmp_path / "seq")
    par = grid.run_grid("tiny", ["grpo", "thr_p0"], [0], over, tmp_path / "par", workers=2)
    assert seq.run_id.tolist() == par.run_id.tolist()
    for a, b in zip(seq.run_dir, par.run_dir):
        ea, eb = (json.loads((Path(x) / "eval_after.json").read_text()) for x in (a, b))
        assert {k: v for k, v in ea.items() if k != "wall_s"} == \
            {k: v for k, v in eb.items() if k != "wall_s"}
        ma, mb = ([{k: v for k, v in r.items() if not k.startswith("time/")}
                   for r in RunDir(x).metrics()] for x in (a, b))
        assert ma == mb
    assert len(list((tmp_path / "par" / ".logs").glob("*.log"))) == 2


def test_frontier_evaluations_are_the_evaluation_of_the_policy_at_that_step(tmp_path, cache):
    """eval_step1.json of a 2-step run equals eval_after.json of the same run stopped after
    step 1 (same seed: same training, same evaluation stream), and evaluating along the way
    leaves the training itself unchanged; frontier_limit evaluates fewer problems."""
    small = dict(SMOKE, steps=1, sft_control=False)
    one = run_experiment(from_preset("tiny", **small), tmp_path / "one", progress=False)
    two = from_preset("tiny", **dict(small, steps=2))
    run_experiment(two, tmp_path / "plain", progress=False)
    run_experiment(two.replace(frontier_every=1), tmp_path / "front", progress=False)
    step1 = json.loads((tmp_path / "front" / "eval_step1.json").read_text())
    after1 = json.loads((tmp_path / "one" / "eval_after.json").read_text())
    step1.pop("wall_s"), after1.pop("wall_s")
    assert step1 == after1 and one["steps"] == 1
    assert not (tmp_path / "front" / "eval_step2.json").exists()  # eval_after covers the last

    def rows(name):
        return [{k: v for k, v in r.items() if not k.startswith("time/")}
                for r in RunDir(tmp_path / name).metrics()]

    assert rows("front") == rows("plain")
    run_experiment(two.replace(frontier_every=1, frontier_limit=5), tmp_path / "few",
                   progress=False)
    few = json.loads((tmp_path / "few" / "eval_step1.json").read_text())["problems"]
    assert all(len(r["greedy"]) == 5 and len(r["correct"]) <= 5 for r in few.values())
