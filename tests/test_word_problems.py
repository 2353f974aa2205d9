"""The word-problem tiers of the real-model preset: generated answers checked against the numbers
read back from the text, the fixed split, and strict grading of the `####` form."""
import re

import pytest

from thrlab.core.errors import DataError
from thrlab.tasks.benchmarks import format_prompt
from thrlab.tasks.task import eval_task, task_of, word_task
from thrlab.tasks.word_problems import WORD_OPS, word_problems
from thrlab.train.presets import from_preset


@pytest.mark.parametrize("op", list(WORD_OPS))
def test_answers_follow_from_the_text(op):
    for p in word_problems(200, "train", seed=1, op=op):
        a, b = map(int, re.findall(r"\d+", p.question))
        want = a * b if op.endswith("mul1") else a + b
        assert p.answer == str(want), p.question
        lo, hi = (10, 99) if op == "word_add2" else (2, 9)
        assert lo <= a <= hi and lo <= b <= hi


@pytest.mark.parametrize("op", list(WORD_OPS))
def test_split_is_fixed_and_disjoint(op):
    train = {p.question for p in word_problems(None, "train", seed=0, op=op)}
    held = word_problems(None, "heldout", seed=0, op=op)
    assert not train & {p.question for p in held}
    assert 0.05 < len(held) / (len(held) + len(train)) < 0.15  # ~10% held out
    # the held-out order is the task's, whatever the run's seed
    assert word_task(op).heldout(20) == word_problems(20, "heldout", seed=0, op=op)
    assert {p.question for p in word_task(op).train(3)} == train


def test_grading_is_strict_and_counts_malformed_answers():
    grade = word_task("word_add1").grade
    res = grade(["2 + 5 = 7.\n#### 7", "#### 7\nThe answer is 7.", "#### 8", "The answer is 7.",
                 "#### 7.", "#### seven", "#### 1,000"], ["7"] * 6 + ["1000"])
    assert res.status == ["correct", "correct", "wrong", "no_answer", "no_answer", "no_answer",
                          "correct"]
    assert res.parse_failures == 3 and res.rewards == [1, 1, 0, 0, 0, 0, 1]


def test_the_preset_names_the_task_everywhere():
    cfg = from_preset("smollm2-135m")
    assert task_of(cfg).name == "word_add1" == eval_task(cfg.eval_sets[0], cfg).name
    assert task_of(cfg).grade is not None  # its own strict grader, whatever cfg.grader says


def test_unknown_tier_is_refused_by_name():
    with pytest.raises(DataError, match="word_add1"):
        word_problems(3, "train", seed=0, op="word_sub1")


class _ChatTokenizer:  # a chat template that shows the turns it was given
    chat_template = "x"

    def apply_chat_template(self, turns, tokenize, add_generation_prompt):
        return "|".join(f"{t['role']}:{t['content']}" for t in turns)


def test_chat_gsm8k_template_asks_for_the_answer_after_hashes():
    text = format_prompt("Sam has 2 cards.", "chat-gsm8k", _ChatTokenizer())
    assert text.startswith("system:") and "after ####" in text
    assert text.endswith("user:Sam has 2 cards.")


def test_a_packaged_model_that_is_not_installed_is_refused_with_the_fix():
    from thrlab.core.errors import SetupError
    from thrlab.train.packaged import PackagedModel, gguf_path

    ghost = PackagedModel(name="ghost", distribution="thrlab-no-such-package",
                          gguf_file="ghost.gguf", extra="ghost", source="nothing")
    with pytest.raises(SetupError, match=r"not installed; install it with: make ghost \(or: pip"):
        gguf_path(ghost)
