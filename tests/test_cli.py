"""The command line's contract, on the real CLI: every expected failure is one line and exit
status 2 (--debug / THRLAB_DEBUG=1 show the traceback), nothing is written before the inputs are
checked, --help names every subcommand and lists every config field under its section with its
default, `presets` prints each preset's key values and every other field it changes, and `plan`
states the prompt length and capacity it assumed and suggests only knobs the config can turn."""
import dataclasses
import os
import re
import sys

import pytest
import torch

from thrlab import cli
from thrlab.train.config import SECTIONS, Config, field_docs
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
                        # eval_sets named: a task of its own with the default set is refused
                        ([f"task={empty}", f"eval_sets={empty}", "sft_control=false"],
                         "empty.jsonl holds no problems"),
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


def test_help_names_every_subcommand_and_groups_the_fields_by_section_with_defaults(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    header = out[:out.index("positional arguments")]
    for cmd in ("train", "evaluate", "presets", "plan"):  # the description shows each one's use
        assert re.search(rf"^    thrlab {cmd}\b", header, re.M), cmd
    docs, default = field_docs(), Config()
    assert set(docs) == {f.name for f in dataclasses.fields(Config)}
    fields = out[out.index("config fields"):]
    blocks = re.split(r"^ (\w+):$", fields, flags=re.M)[1:]  # section name, its lines, ...
    printed = dict(zip(blocks[::2], blocks[1::2]))
    assert list(printed) == [s.__name__ for s in SECTIONS] + ["Config"]
    for section in SECTIONS:
        lines = printed[section.__name__].strip("\n").splitlines()
        assert len(lines) == len(section.names()), section.__name__
        for k, line in zip(section.names(), lines):
            value = cli._value(getattr(default, k))
            assert re.fullmatch(rf"  {k}={re.escape(value)} +{re.escape(docs[k])}", line), line


def test_presets_prints_each_presets_key_values_and_every_field_it_changes(capsys):
    rc, out, _ = _main(["presets"], capsys)
    presets, methods = out.split("\nmethods")
    blocks = re.split(r"^  (\S+) +", presets, flags=re.M)[1:]  # name, its fields, name, ...
    printed = {name: dict(t.split("=", 1) for t in text.split() if "=" in t)
               for name, text in zip(blocks[::2], blocks[1::2])}
    assert rc == 0 and list(printed) == list(PRESETS)
    assert "steps=60" in blocks[1] and "model=tiny" in blocks[1]  # tiny = the Config defaults
    default = Config()
    for name, pairs in printed.items():  # key values, then exactly the other changed fields
        assert set(cli.PRESET_KEYS) <= set(pairs), name
        assert Config(preset=name).replace(**pairs) == preset_config(name), name
        assert all(getattr(preset_config(name), k) != getattr(default, k) for k in pairs
                   if k not in cli.PRESET_KEYS), name
    lines = dict(re.findall(r"^  (\S+) +(.*)$", methods, re.M))
    assert list(lines) == list(METHODS)
    base = preset_config("qwen2.5-math-1.5b")  # an off-policy schedule takes every recipe
    for name, recipe in METHODS.items():
        pairs = dict(t.split("=", 1) for t in lines[name].split() if "=" in t)
        assert base.replace(**pairs) == base.replace(**recipe), name


def test_plan_prints_each_phase_and_exits_1_naming_the_knob_when_a_phase_does_not_fit(capsys):
    assert cli.main(["plan", "--preset", "qwen2.5-math-7b", "--method", "thr_explore",
                     "--capacity-gb", "200"]) == 0
    out = capsys.readouterr().out
    assert all(p in out for p in ("generate", "update", "evaluate", "thr"))
    assert "200 GB, as given (--capacity-gb)" in out and "capacity 200.0" in out
    argv = ["plan", "--preset", "llama-3.2-3b-instruct", "--set", "eval_batch_size=64"]
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "WARNING: evaluate needs" in out and "eval_batch_size (now 64)" in out


def _assumptions(out: str) -> str:
    return " ".join(out[:out.index("memory plan")].split())  # unwrapped


def test_plan_of_the_tiny_preset_measures_its_prompts_and_says_what_it_assumed(capsys):
    """The tiny preset's prompts are ~13 characters of its character tokenizer, not the 1,800
    tokens of a MATH prompt (which planned 12 GB for a 1M-parameter model); the capacity is an
    assumption on a machine without CUDA, never "the device has"."""
    from thrlab.train import memory

    assert cli.main(["plan", "--preset", "tiny"]) == 0
    out = capsys.readouterr().out
    said = _assumptions(out)
    m = re.search(r"prompts: (\d+) tokens in training, (\d+) in evaluation: the longest", said)
    assert m and 0 < int(m[1]) < 40 and 0 < int(m[2]) < 40, said
    assert "measured with the tiny model's tokenizer" in said and "device has" not in out
    if not torch.cuda.is_available():
        assert "capacity: 80 GB, the default" in said and "no accelerator here" in said
        assert "--capacity-gb" in said
    assert max(memory.total(memory.plan(preset_config("tiny"),
                                        memory.architecture_of("tiny"), int(m[1])))
               .values()) < 1e9  # well under a GB
    assert cli.main(["plan", "--prompt-tokens", "100", "--capacity-gb", "1"]) == 0
    assert "prompts: 100 tokens, as given (--prompt-tokens)" in _assumptions(
        capsys.readouterr().out)


def test_plan_says_when_it_assumed_the_prompt_length(capsys):
    """A paper preset's prompts come from the hub: not measured, so the plan says it assumed
    1,800 tokens and how to change that."""
    assert cli.main(["plan", "--preset", "qwen2.5-math-1.5b", "--capacity-gb", "1000"]) == 0
    said = _assumptions(capsys.readouterr().out)
    assert "prompts: assumed 1,800 tokens" in said and "would load from the hub" in said
    assert "--prompt-tokens N" in said


def test_plan_never_suggests_a_knob_at_the_value_the_config_has(capsys):
    argv = ["plan", "--capacity-gb", "0.0001", "--set", "gradient_checkpointing=true",
            "--set", "eval_batch_size=1"]
    assert cli.main(argv) == 1
    warnings = {w.split()[1]: w for w in capsys.readouterr().out.splitlines()
                if w.startswith("WARNING: ")}
    assert "lower micro_batch_size (now the whole batch)" in warnings["update"]
    assert "gradient_checkpointing" not in warnings["update"]
    assert "already turned" in warnings["evaluate"] and "eval_batch_size" not in \
        warnings["evaluate"]
    assert "set kl_coef=0.0" in warnings["ref_logp"]


def test_tasks_file_registers_a_task_the_command_line_trains_on(tmp_path, capsys):
    """--tasks runs a Python file that registers a Task (docs/adding-a-task.md's diff, as a
    file); task= and eval_sets= then name it, and its held-out split is what is evaluated."""
    import json
    import re as _re
    from pathlib import Path

    from thrlab.tasks.task import _REGISTRY

    text = (Path(__file__).resolve().parents[1] / "docs" / "adding-a-task.md").read_text()
    diff = _re.search(r"```diff\n(.*?)```", text, _re.S).group(1).splitlines()
    (tmp_path / "my_tasks.py").write_text("\n".join(line[1:] for line in diff[3:]) + "\n")
    run_dir = tmp_path / "run"
    rc, out, err = _main(["train", "--tasks", str(tmp_path / "my_tasks.py"), "--quiet",
                          "--set", "task=squares", "--set", "eval_sets=squares",
                          "--set", "steps=1", "--set", "prompts_per_step=2", "--set",
                          "group_size=2", "--set", "eval_limit=4", "--set", "eval_samples=2",
                          "--set", "threads=1", "--run-dir", str(run_dir)], capsys)
    _REGISTRY.pop("squares", None)  # registered in this process by the file
    assert rc == 0, err[-2000:]
    after = json.loads((run_dir / "eval_after.json").read_text())
    assert after["problems"]["squares"]["ids"] == [f"sq/{a}" for a in range(50, 54)]
    rc, out, err = _main(["train", "--tasks", str(tmp_path / "missing.py")], capsys)
    assert rc == 2 and "no such file" in _one_error(err)
