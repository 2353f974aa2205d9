"""The command line's contract, on the real CLI: every expected failure is one line and exit
status 2 (--debug / THRLAB_DEBUG=1 show the traceback), nothing is written before the inputs are
checked, --help lists every config field and `presets` every field a preset changes."""
import dataclasses
import os
import re
import sys

import pytest
import torch

from thrlab import cli
from thrlab.train.config import Config, field_docs
from thrlab.train.presets import METHODS, PRESETS, preset_config
from thrlab.core.errors import DataError
from tests.fixtures import limits


def _main(argv, capsys):
    """The real CLI in this process: (exit status, stdout, stderr)."""
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("thrlab: error: "), err[-2000:]
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["train", "--set", "lrr=1"], "'lrr' (did you mean 'lr'?)"),
    (["train", "--method", "thr_explor"], "unknown method 'thr_explor' (did you mean 'thr_explore'"),
    (["train", "--preset", "tinny"], "unknown preset 'tinny' (did you mean 'tiny'"),
    (["train", "--set", "train_levels=3"], "filters MATH levels"),
    (["train", "--run-dir", "/dev/null"], "/dev/null is not a folder"),
    (["evaluate", "--run-dir", "/dev/null"], "/dev/null is not a thrlab run folder"),
    (["evaluate", "--run-dir", "/dev/null", "--preset", "tiny"], "drop --preset/--method"),
    pytest.param(["train", "--set", "device=cuda"], "no CUDA GPU is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")),
])
def test_expected_failures_are_one_line_and_exit_2(argv, words, capsys):
    rc, out, err = _main(argv, capsys)
    assert rc == 2 and out == "" and words in _one_error(err)


def test_inputs_are_checked_before_anything_is_written(tmp_path, capsys):
    """A typo or an empty file fails before the run folder exists, so the corrected command is
    not refused by a folder the failed one left behind."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    run = tmp_path / "run"
    for sets, words in ((["eval_sets=math5000"], "unknown benchmark 'math5000' (did you mean "
                                                 "'math500'?)"),
                        ([f"task={empty}", "sft_control=false"], "empty.jsonl holds no problems"),
                        ([f"eval_sets={empty}"], "empty.jsonl holds no problems"),
                        (["template=qwen"], "unknown prompt template 'qwen'")):
        argv = ["train", "--quiet", "--run-dir", str(run)] + [f"--set={s}" for s in sets]
        rc, _, err = _main(argv, capsys)
        assert rc == 2 and words in _one_error(err)
        assert not run.exists()
    with pytest.raises(DataError, match="math5000"):  # --debug lets the error through
        cli.main(["--debug", "train", "--run-dir", str(run), "--set", "eval_sets=math5000"])


def test_offline_hub_set_is_one_line_and_debug_shows_the_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "THRLAB_DATA_DIR"}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    cmd = [sys.executable, "-m", "thrlab", "train", "--run-dir", str(tmp_path / "run"),
           "--set", "eval_sets=math500"]
    out = limits.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 2
    msg = _one_error(out.stderr)
    assert "could not load 'math500' from the hub" in msg and "Pass data_dir=" in msg
    assert not (tmp_path / "run").exists()
    dbg = limits.run(cmd, capture_output=True, text=True, env=dict(env, THRLAB_DEBUG="1"))
    assert dbg.returncode == 1 and "Traceback" in dbg.stderr and "DataError" in dbg.stderr


def test_help_lists_every_config_field_with_its_doc(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    docs = field_docs()
    assert set(docs) == {f.name for f in dataclasses.fields(Config)}
    for k, doc in docs.items():
        assert re.search(rf"^  {k} +{re.escape(doc)}$", out, re.M), k


def test_presets_prints_every_field_a_preset_changes_and_every_recipe(capsys):
    rc, out, _ = _main(["presets"], capsys)
    presets, methods = out.split("\nmethods")
    blocks = re.split(r"^  (\S+) +", presets, flags=re.M)[1:]  # name, its fields, name, ...
    printed = {name: dict(t.split("=", 1) for t in text.split() if "=" in t)
               for name, text in zip(blocks[::2], blocks[1::2])}
    assert rc == 0 and list(printed) == list(PRESETS)
    default = Config()
    for name, pairs in printed.items():  # exactly the changed fields, and they rebuild the preset
        assert Config(preset=name).replace(**pairs) == preset_config(name), name
        assert all(getattr(preset_config(name), k) != getattr(default, k) for k in pairs), name
    lines = dict(re.findall(r"^  (\S+) +(.*)$", methods, re.M))
    assert list(lines) == list(METHODS)
    base = preset_config("qwen2.5-math-1.5b")  # an off-policy schedule takes every recipe
    for name, recipe in METHODS.items():
        pairs = dict(t.split("=", 1) for t in lines[name].split() if "=" in t)
        assert base.replace(**pairs) == base.replace(**recipe), name


def test_plan_prints_each_phase_and_exits_1_naming_the_knob_when_a_phase_does_not_fit(capsys):
    from thrlab import cli

    assert cli.main(["plan", "--preset", "qwen2.5-math-7b", "--method", "thr_explore",
                     "--capacity-gb", "200"]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in ("generate", "update", "evaluate", "thr"))
    argv = ["plan", "--preset", "llama-3.2-3b-instruct", "--set", "eval_batch_size=64"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "WARNING: evaluate needs" in out and "eval_batch_size" in out
