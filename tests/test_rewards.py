"""Answer extraction and grading: hand cases, the shared benchmark golds graded against themselves,
and a worker pool that must survive hung, crashing and raising verifiers."""
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path

import pytest

from tests.fixtures import slow_verify
from thrlab.tasks.rewards import (GradeResult, MathVerifyPool, extract_answer, extract_boxed,
                            extract_gsm8k, grade)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _data(name: str) -> list[dict]:
    if not (DATA / name).is_file():
        pytest.skip(f"{DATA / name} is absent (the shared data folder sits beside the repo only on "
                    "the development machines)")
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def pool():
    with MathVerifyPool(2) as p:  # 2 workers: the test machines have 2 cores
        yield p


# -- extraction ----------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("so \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first \\boxed{1} then \\boxed{2} finally \\boxed{ 3 }", "3"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),  # escaped braces inside
    ("\\boxed{\\left\\{ x \\right.}", "\\left\\{ x \\right."),  # an unpaired escaped brace
    ("$\\fbox{7}$", "7"),
    ("The answer is $\\boxed 5$.", "5"),
    ("\\boxed {9}", "9"),
    ("\\boxed{}", ""),
    ("no box here", None),
    ("\\boxed{1} and then \\boxed{2", None),  # the last box is truncated: no final answer
    ("\\boxed{{{", None),
    ("\\boxedtext{3}", None),  # a different macro
    ("}}}} \\boxed{a{b}c} }}", "a{b}c"),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_adversarial_sizes_are_fast():
    # CPU time of this process, which a loaded machine does not inflate as it does wall time:
    # linear scanning takes ~0.04 s; a quadratic one takes minutes on these 140k-character inputs
    t0 = time.process_time()
    assert extract_boxed("\\boxed{" * 20_000) is None
    assert extract_boxed("".join(f"\\boxed{{{i}}}" for i in range(20_000))) == "19999"
    assert extract_boxed("\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}") == "{" * 50_000 + "}" * 50_000
    assert time.process_time() - t0 < 2.0


def test_extract_boxed_reproduces_math_answer_fields():
    # README: math_train `answer` is the last \boxed{} of `solution`, and MATH-500's `answer` equals
    # it in 500/500 rows; both were derived by other code, so they are an independent reference.
    rows = _data("math_train.jsonl") + _data("math500.jsonl")
    wrong = [r.get("id", r.get("unique_id")) for r in rows
             if extract_boxed(r["solution"]) != r["answer"].strip()]
    assert wrong == []


def test_extract_gsm8k():
    assert extract_gsm8k("so 2+2=4\n#### 1,234") == "1234"
    assert extract_gsm8k("#### 1\n#### 2") == "2"
    assert extract_gsm8k("#### 72\n\nQuestion: next one #") == "72"
    assert extract_gsm8k("no marker") is None
    assert extract_gsm8k("####") == ""


def test_extract_answer_styles():
    assert extract_answer("  119\n", "plain") == "119"
    assert extract_answer("x \\boxed{3}", "boxed") == "3"
    assert extract_answer("#### 3", "gsm8k") == "3"
    with pytest.raises(ValueError, match="boxed"):
        extract_answer("3", "latex")


# -- exact integers ------------------------------------------------------------------------------
def test_exact_int_grading():
    comps = [" 119", "119\n", " -5", " 12", " 1 19", "", " abc", " 7", "9" * 5000]
    golds = ["119", "119", "-5", "13", "119", "3", "3", "x", "9"]
    res = grade(comps, golds, grader="exact_int")
    assert res.status == ["correct", "correct", "correct", "wrong", "no_answer", "no_answer",
                          "no_answer", "gold_unparsed", "no_answer"]
    assert res.rewards == [1.0, 1.0, 1.0, 0, 0, 0, 0, 0, 0]
    assert (res.parse_failures, res.gold_parse_failures, res.timeouts, res.errors) == (4, 1, 0, 0)


def test_as_metrics_keys_and_values():
    res = GradeResult.from_status(["correct", "wrong", "timeout", "error", "no_answer",
                                   "gold_unparsed", "correct", "correct"])
    assert res.as_metrics() == {"reward/timeouts": 1, "reward/parse_failures": 1,
                                "reward/errors": 1, "reward/gold_parse_failures": 1,
                                "reward/mean": 3 / 8}
    assert set(res.as_metrics(prefix="")) == {"timeouts", "parse_failures", "errors",
                                              "gold_parse_failures", "mean"}
    assert GradeResult.from_status([]).as_metrics()["reward/mean"] == 0.0


def test_bad_grade_arguments():
    with pytest.raises(ValueError, match="exact_int"):
        grade(["1"], ["1"], grader="sympy")
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        grade(["1", "2"], ["1"], grader="exact_int")
    with pytest.raises(ValueError, match="unknown answer style"):
        grade(["1"], ["1"], grader="exact_int", style="latex")


# -- math-verify -----------------------------------------------------------------------------------
def test_math_verify_equivalent_and_wrong_forms(pool):
    cases = [  # (completion, gold, expected status)
        ("so \\boxed{0.5}", "\\frac{1}{2}", "correct"),
        ("\\boxed{\\dfrac{1}{2}}", "\\frac12", "correct"),
        ("\\boxed{25}", "025", "correct"),  # AIME golds keep leading zeros
        ("\\boxed{70.0}", "70", "correct"),
        ("\\boxed{1+x^2}", "x^2+1", "correct"),
        ("\\boxed{\\$18}", "18", "correct"),
        ("\\boxed{3}", "4", "wrong"),
        ("\\boxed{(2,1)}", "(1,2)", "wrong"),
        # math-verify is asymmetric: an interval answers an inequality gold, not the reverse.
        ("\\boxed{(1,2)}", "1<x<2", "correct"),
        ("\\boxed{1<x<2}", "(1,2)", "wrong"),
        ("I think it is 3", "3", "no_answer"),  # no \boxed{}
        ("\\boxed{}", "3", "no_answer"),
        ("\\boxed{3}", "", "gold_unparsed"),
    ]
    res = grade([c for c, _, _ in cases], [g for _, g, _ in cases], grader="math_verify", pool=pool)
    assert res.status == [s for _, _, s in cases]
    assert res.rewards == [float(s == "correct") for _, _, s in cases]
    assert (res.parse_failures, res.gold_parse_failures) == (2, 1)


def test_math_verify_gsm8k_style(pool):
    res = grade(["2+2 is 4\n#### 1,234", "#### 1233", "no marker 1234"], ["1234"] * 3,
                grader="math_verify", style="gsm8k", pool=pool)
    assert res.status == ["correct", "wrong", "no_answer"]


def test_real_golds_grade_themselves(pool):
    from thrlab.tasks.benchmarks import BENCHMARKS, load_benchmark

    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent (the shared data sits beside the repo on dev machines only)")
    golds = []
    for name in BENCHMARKS:  # 5 evenly spaced rows of each: ~45 real gold answers
        with pytest.warns(UserWarning) if name == "math_train" else nullcontext():
            probs = load_benchmark(name, data_dir=str(DATA))
        golds += [p.answer for p in probs[:: len(probs) // 5][:5]]
    right = [f"We get it.\n\\boxed{{{g}}}" for g in golds]
    perturbed = [f"\\boxed{{{g}+1}}" for g in golds]  # gold + 1 is never gold (nor unparsable gold)
    res = grade(right + perturbed, golds + golds, grader="math_verify", pool=pool, timeout_s=10.0)
    n = len(golds)
    assert res.gold_parse_failures == 0 and res.timeouts == 0 and res.errors == 0
    assert [g for g, r in zip(golds, res.rewards[:n]) if r != 1.0] == []
    assert [g for g, s in zip(golds, res.status[n:]) if s != "wrong"] == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_hung_items_are_killed_and_counted(tmp_path, caplog):
    hang, stubborn = str(tmp_path / "hang.pid"), str(tmp_path / "stubborn.pid")
    comps = [f"\\boxed{{{x}}}" for x in ("1", "HANG", "3", "STUBBORN", "5", "6", "7", "8")]
    golds = ["1", hang, "3", stubborn, "5", "6", "7", "9"]
    with MathVerifyPool(2, verify_fn=slow_verify.misbehaving_verify) as p:
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="thrlab.tasks.rewards"):
            res = p.grade(comps, golds, timeout_s=1.0)
        # Both hangs sleep 30 s; the batch comes back after ~2 s on a quiet machine (1 s limit,
        # +1 s for SIGKILL escalation, worker restarts). Well under 30 s shows the workers were
        # killed rather than waited for; 25 s leaves a loaded machine its slow restarts.
        elapsed = time.monotonic() - t0
        assert elapsed < 25.0, f"the batch took {elapsed:.1f} s: were the hung workers waited for?"
        assert res.status == ["correct", "timeout", "correct", "timeout", "correct", "correct",
                              "correct", "wrong"]
        assert res.timeouts == 2 and res.errors == 0
        for path in (hang, stubborn):
            assert not _alive(int(Path(path).read_text())), f"worker of {path} still runs"
        assert "grading item 1: timeout" in caplog.text and "'HANG'" in caplog.text
        again = p.grade(["\\boxed{2}", "\\boxed{3}"], ["2", "2"], timeout_s=5.0)  # still works
        assert again.status == ["correct", "wrong"]


def test_raising_and_dying_verifiers_count_as_errors(caplog):
    comps = ["\\boxed{RAISE}", "\\boxed{DIE}", "\\boxed{3}", "\\boxed{NONE}"]
    with MathVerifyPool(1, verify_fn=slow_verify.misbehaving_verify) as p:
        with caplog.at_level(logging.WARNING, logger="thrlab.tasks.rewards"):
            res = p.grade(comps, ["1", "1", "3", "1"], timeout_s=5.0)
        assert res.status == ["error", "error", "correct", "error"]
        assert res.errors == 3 and res.rewards == [0.0, 0.0, 1.0, 0.0]
        assert "verifier exploded" in caplog.text and "worker died (exit code 3)" in caplog.text
        assert "returned None" in caplog.text  # a verifier that returns nothing is an error
        assert "failure burst" in caplog.text  # 3 of 4 > max_failure_frac 0.5
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="thrlab.tasks.rewards"):
            ok = p.grade(["\\boxed{RAISE}", "\\boxed{3}", "\\boxed{4}"], ["1", "3", "4"])
        assert ok.errors == 1 and "failure burst" not in caplog.text


def test_closed_pool_refuses_work_and_lambdas_are_refused():
    with pytest.raises(ValueError, match="top-level function"):
        MathVerifyPool(1, verify_fn=lambda g, p: True)
    p = MathVerifyPool(1, verify_fn=slow_verify.misbehaving_verify)
    p.close()
    p.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        p.grade(["\\boxed{1}"], ["1"])
