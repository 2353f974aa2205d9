"""The strategies task (thrlab.tasks.chains): every chain computes its product, labels read the strategy
back, the reward reads the final number, and the entropy is Shannon's."""
import math
import random

import pytest

from thrlab.core.stats import label_entropy
from thrlab.tasks.chains import STRATEGIES, chain, sft_target, strategy_of
from thrlab.tasks.rewards import extract_answer, grade
from thrlab.tasks.arithmetic import arithmetic_problems


def _eval_chain(text: str) -> int:
    """Evaluate a chain naively: each '='-separated part must be an arithmetic expression of the
    same value; return that value."""
    parts = text.split("=")
    vals = {eval(p, {"__builtins__": {}}) for p in parts}  # digits, * + - only (checked below)
    assert set(text) <= set("0123456789*+-=")
    assert len(vals) == 1, text
    return vals.pop()


def test_every_chain_is_a_correct_computation_of_its_strategy():
    for a in range(11, 100):
        for b in range(11, 100):
            if a % 10 == 0 or b % 10 == 0:
                continue
            for s in STRATEGIES:
                text = chain(a, b, s)
                assert _eval_chain(text) == a * b
                assert strategy_of(f"{a}*{b}", " " + text) == s
                assert len(" " + text) <= 26  # fits max_new_tokens=28 with the EOS


def test_strategy_labels_of_other_completions():
    assert strategy_of("47*36", " 1692") == "direct"
    assert strategy_of("47*36", " 47*35+47*1=1645+47=1692") == "other"  # a split no one teaches
    assert strategy_of("47*36", " 40*36-7*36=1440") == "other"  # split_a's factors, wrong sign
    assert strategy_of("47*36", "") == "direct"


def test_problems_split_and_sft_targets_mix_the_strategies():
    train = arithmetic_problems(None, "train", seed=0, op="mul_chain")
    held = arithmetic_problems(None, "heldout", seed=0, op="mul_chain")
    assert len(train) + len(held) == 81 * 81 and not {p.question for p in train} & \
        {p.question for p in held}
    assert 500 <= len(held) <= 800  # enough held-out problems for a 500-problem greedy eval
    rng = random.Random(0)
    labels = [strategy_of(p.question, " " + sft_target(p.question, rng)) for p in train[:3000]]
    for s in STRATEGIES:  # uniform mix: 1000 expected each
        assert 900 < labels.count(s) < 1100


def test_chain_answer_style_reads_the_number_after_the_last_equals():
    assert extract_answer(" 40*36+7*36=1440+252=1692", "chain") == "1692"
    assert extract_answer(" 1692", "chain") == "1692"
    res = grade([" 40*36+7*36=1440+252=1692", " 40*36+7*36=1440+252=1691", " 40*36+7*3"],
                ["1692"] * 3, grader="exact_int", style="chain")
    assert res.rewards == [1.0, 0.0, 0.0]


def test_strategy_entropy_is_shannons_in_bits():
    assert label_entropy([]) == 0.0 and label_entropy(["a"] * 5) == 0.0
    assert label_entropy(["a", "b"]) == pytest.approx(1.0)
    labels = ["a"] * 2 + ["b"] * 3 + ["c"] * 5
    assert label_entropy(labels) == pytest.approx(
        -sum(p * math.log2(p) for p in (0.2, 0.3, 0.5)))
    assert label_entropy(list(STRATEGIES)) == pytest.approx(math.log2(3))
