"""Problems and prompts: the arithmetic split rule against a brute-force enumeration, the shared
benchmark files against their README counts and spot values, loud errors on broken files, and the
prompt templates against literal strings."""
import json
import re
import sys
import types
import warnings
import zlib
from pathlib import Path

import pytest

from thrlab.core.errors import DataError
from thrlab.tasks.arithmetic import arithmetic_problems
from thrlab.tasks.benchmarks import BENCHMARKS, SYSTEM_BOXED, TEMPLATES, format_prompt, load_benchmark

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def data_dir():
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent (the shared data folder sits beside the repo only on the "
                    "development machines)")
    return str(DATA)


def _raw(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


# -- arithmetic ----------------------------------------------------------------------------------
SPACES = {  # each family's full question space, enumerated independently of thrlab
    "mul": {f"{a}*{b}" for a in range(100, 1000) for b in range(2, 10)},
    "mul_add": {f"{a}*{b}+{c}" for a in range(10, 100) for b in range(2, 10) for c in range(10, 100)},
}


@pytest.mark.parametrize("op", sorted(SPACES))
def test_arithmetic_splits_partition_the_space(op):
    space = SPACES[op]
    want_held = {q for q in space if zlib.crc32(q.encode()) % 10 == 0}  # the documented rule
    n_held, n_train = len(want_held), len(space) - len(want_held)
    held = {p.question for p in arithmetic_problems(n_held, "heldout", seed=0, op=op)}
    train = {p.question for p in arithmetic_problems(n_train, "train", seed=1, op=op)}
    assert held == want_held and held.isdisjoint(train) and held | train == space
    assert 0.08 < n_held / len(space) < 0.12
    for split, n in (("heldout", n_held), ("train", n_train)):
        with pytest.raises(ValueError, match=f"holds {n}; ask for at most {n}"):
            arithmetic_problems(n + 1, split, seed=0, op=op)


@pytest.mark.parametrize("op,pattern", [("mul", r"(\d+)\*(\d+)"), ("mul_add", r"(\d+)\*(\d+)\+(\d+)")])
def test_arithmetic_is_deterministic_distinct_and_correct(op, pattern):
    a = arithmetic_problems(300, "train", seed=7, op=op)
    assert a == arithmetic_problems(300, "train", seed=7, op=op)
    assert [p.question for p in a] != [p.question
                                       for p in arithmetic_problems(300, "train", seed=8, op=op)]
    assert len({p.question for p in a}) == 300 and len({p.id for p in a}) == 300
    for p in a + arithmetic_problems(100, "heldout", seed=0, op=op):
        xs = list(map(int, re.fullmatch(pattern, p.question).groups()))
        want = xs[0] * xs[1] + (xs[2] if len(xs) == 3 else 0)
        assert p.answer == str(want)
        assert p.source == "arithmetic" and p.level is None
        assert p.id == f"arith/{'train' if p in a else 'heldout'}/{p.question}"


def test_arithmetic_errors():
    with pytest.raises(ValueError, match="unknown arithmetic split 'test'.*'train', 'heldout'"):
        arithmetic_problems(5, "test", seed=0)
    with pytest.raises(ValueError, match="asked for -1"):
        arithmetic_problems(-1, "train", seed=0)
    with pytest.raises(ValueError, match="unknown arithmetic op 'div'"):
        arithmetic_problems(5, "train", seed=0, op="div")


# -- shared benchmark files ------------------------------------------------------------------------
@pytest.mark.parametrize("name, rows", [
    ("math500", 500), ("aime24", 30), ("aime25", 30), ("amc23", 40), ("minerva_math", 272),
    ("olympiadbench", 675), ("gsm8k", 1319), ("gsm8k_train", 7473),
])
def test_benchmark_row_counts(data_dir, name, rows):
    probs = load_benchmark(name, data_dir=data_dir)
    assert len(probs) == rows
    assert len({p.id for p in probs}) == rows
    assert all(p.question.strip() and p.answer and p.source == name for p in probs)


def test_math_train_skips_empty_golds_and_filters_levels(data_dir):
    raw = _raw("math_train.jsonl")
    assert len(raw) == 7500
    with pytest.warns(UserWarning, match="skipped 2 rows with an empty gold answer"):
        probs = load_benchmark("math_train", data_dir=data_dir)
    assert len(probs) == 7500 - 2
    empty = {r["id"] for r in raw if not r["answer"].strip()}
    assert empty == {"train/number_theory/7115.json", "train/number_theory/7117.json"}
    assert not {p.id for p in probs} & {f"math_train/{i}" for i in empty}
    # README: levels 3-5 hold 5,586 problems; both empty-gold rows are Level 5.
    with pytest.warns(UserWarning):
        hard = load_benchmark("math_train", data_dir=data_dir, levels=(3, 4, 5))
    assert len(hard) == 5586 - 2
    assert {p.level for p in hard} == {3, 4, 5}
    assert sum(r["level"] == "Level ?" for r in raw) == 2
    assert sum(p.level is None for p in probs) == 2  # "Level ?" reads as no level


def test_benchmark_spot_values(data_dir):
    aime24 = {p.id: p.answer for p in load_benchmark("aime24", data_dir=data_dir)}
    raw24 = {f"aime24/{r['id']}": r["answer"] for r in _raw("aime24.jsonl")}
    assert aime24 == raw24 and "025" in aime24.values()  # leading zeros kept as given
    assert load_benchmark("aime25", data_dir=data_dir)[0].answer == "70"  # stored as 70.0
    assert load_benchmark("amc23", data_dir=data_dir)[0].answer == "27"  # stored as 27.0
    gsm = load_benchmark("gsm8k", data_dir=data_dir)
    assert gsm[0].answer == "18" and gsm[146].answer == "2125"  # raw "#### 2,125"
    assert any(p.answer == "999000" for p in load_benchmark("gsm8k_train", data_dir=data_dir))
    ob = load_benchmark("olympiadbench", data_dir=data_dir)
    assert ob[1].answer == "\\frac{1}{2 n+2}"  # raw "$\frac{1}{2 n+2}$"
    assert not any(p.answer.startswith("$") or p.answer.endswith("$") for p in ob)
    assert ob[76].answer == "(-\\infty, 0) \\cup\\{1\\}"  # raw "$(-\infty, 0) \cup\{1\}$."
    assert load_benchmark("minerva_math", data_dir=data_dir)[0].answer == "1.6"
    m500 = load_benchmark("math500", data_dir=data_dir)
    assert m500[0].id == "math500/test/precalculus/807.json" and m500[0].level == 2
    assert m500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"


def test_path_env_var_and_limit(data_dir, monkeypatch, tmp_path):
    by_name = load_benchmark("gsm8k", data_dir=data_dir)
    assert load_benchmark(str(DATA / "gsm8k_test.jsonl")) == by_name  # format from the file name
    monkeypatch.setenv("THRLAB_DATA_DIR", data_dir)
    assert load_benchmark("gsm8k", limit=5) == by_name[:5]
    # An unknown file name gets the generic reader: `answer` as given, ids from `unique_id`.
    copy = tmp_path / "my_set.jsonl"
    copy.write_bytes((DATA / "math500.jsonl").read_bytes())
    mine = load_benchmark(str(copy))
    assert [p.answer for p in mine] == [p.answer for p in load_benchmark("math500")]
    assert mine[0].source == "my_set" and mine[0].id == "my_set/test/precalculus/807.json"
    monkeypatch.setenv("THRLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match=r"\$THRLAB_DATA_DIR is .* has no gsm8k_test.jsonl.*unset"):
        load_benchmark("gsm8k")


def test_generic_reader_and_empty_gold(tmp_path):
    f = tmp_path / "tiny.jsonl"
    rows = [{"question": "1+1?", "answer": 2}, {"problem": "Half?", "solution": "It is \\boxed{\\frac12}."},
            {"question": "Empty?", "answer": ""}, {"question": "3*3?", "answer": "9", "level": "Level 4"}]
    f.write_text("\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"skipped 1 rows with an empty gold answer \(lines \[3\]\)"):
        probs = load_benchmark(str(f))
    assert [(p.id, p.answer, p.level) for p in probs] == [
        ("tiny/1", "2", None), ("tiny/2", "\\frac12", None), ("tiny/4", "9", 4)]
    with pytest.warns(UserWarning):
        assert [p.id for p in load_benchmark(str(f), levels=(4,))] == ["tiny/4"]
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="has a level in \\(5,\\)"):
        load_benchmark(str(f), levels=(5,))


# Two rows as openai/gsm8k stores them: the gold is the number after "####".
GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                 "clips in May. How many clips did Natalia sell altogether in April and May?",
     "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = "
               "<<48+24=72>>72 clips altogether in April and May.\n#### 72"},
    {"question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
                 "babysitting. How much did she earn?",
     "answer": "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\nWorking 50 minutes, she earned "
               "0.2 x 50 = $<<0.2*50=10>>10.\n#### 1,000"},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_row_format_is_read_from_the_rows_not_the_file_name(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and nothing to warn about
        probs = load_benchmark(_jsonl(tmp_path / "gsm8k_copy.jsonl", GSM8K_ROWS))
    assert [p.answer for p in probs] == ["72", "1000"]
    assert probs[0].question == GSM8K_ROWS[0]["question"] and probs[0].source == "gsm8k_copy"
    ob = load_benchmark(_jsonl(tmp_path / "olymp.jsonl", [
        {"question": "q", "final_answer": ["$3$"]}]))
    assert [p.answer for p in ob] == ["3"]
    # a known benchmark's file name holding another benchmark's rows is refused, not misread
    with pytest.raises(DataError, match="named like the math500 benchmark, but its rows are in "
                                        "gsm8k's format; rename the file"):
        load_benchmark(_jsonl(tmp_path / "math500.jsonl", GSM8K_ROWS))


def test_golds_that_look_like_solutions_warn_once_with_counts_and_an_example(tmp_path):
    rows = [{"question": "q1", "answer": "Add them.\nSo the answer is 4."},
            {"question": "q2", "answer": "5"}, {"question": "q3", "answer": "x" * 301}]
    with pytest.warns(UserWarning) as rec:
        probs = load_benchmark(_jsonl(tmp_path / "worked.jsonl", rows))
    msgs = [str(w.message) for w in rec if "do not look like answers" in str(w.message)]
    assert len(msgs) == 1 and len(probs) == 3
    assert "2 of 3 gold answers" in msgs[0] and "line 1: 'Add them.\\nSo" in msgs[0]


@pytest.mark.parametrize("content", [b"", b"\n\n", b'{"question": "q", "answer": ""}\n'])
def test_empty_sets_are_refused_naming_the_file(tmp_path, content):
    path = _write(tmp_path, "empty.jsonl", content)
    with pytest.raises(DataError, match=r"empty\.jsonl holds no problems"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped-empty-gold warning of the third case
        load_benchmark(path)


def test_unknown_benchmark_lists_arithmetic_with_a_suggestion():
    with pytest.raises(DataError, match="unknown benchmark 'arithmetc' \\(did you mean "
                                        "'arithmetic'\\?\\); use one of arithmetic"):
        load_benchmark("arithmetc")


def test_hub_path_uses_the_spec(monkeypatch):
    calls = []

    def load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return [{"id": f"{config}-{i}", "question": f"q{i}", "answer": 70.0 + i} for i in range(2)]

    monkeypatch.delenv("THRLAB_DATA_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    probs = load_benchmark("aime25")
    assert calls == [("opencompass/AIME2025", "AIME2025-I", "test"),
                     ("opencompass/AIME2025", "AIME2025-II", "test")]
    assert [p.answer for p in probs] == ["70", "71", "70", "71"]
    assert probs[2].id == "aime25/AIME2025-II-0"

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError, match="HuggingFaceH4/MATH-500.*Offline\\? Pass data_dir"):
        load_benchmark("math500")


def test_benchmark_specs_are_complete():
    assert {"math500", "aime24", "aime25", "amc23", "minerva_math", "olympiadbench", "gsm8k",
            "math_train"} <= set(BENCHMARKS)
    assert BENCHMARKS["gsm8k"].filename == "gsm8k_test.jsonl"
    assert BENCHMARKS["olympiadbench"].configs == ("OE_TO_maths_en_COMP",)


# -- broken input fails loudly, naming file, line and field ----------------------------------------
def _write(tmp_path, name, content: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(content)
    return str(p)


GOOD = b'{"problem": "1+1?", "answer": "2"}\n'


@pytest.mark.parametrize("content, line, words", [
    (GOOD + b'{"problem": "2+2?", "answer": "4"\n', 2, ["malformed JSON", "one complete JSON"]),
    (GOOD + GOOD + b'{"problem": "no gold"}\n', 3, ["'answer'", "missing"]),
    (b'{"answer": "2"}\n', 1, ["'problem'", "'question'"]),
    (GOOD + b'{"problem": "   ", "answer": "4"}\n', 2, ["'problem'", "empty"]),
    (GOOD + GOOD + b'{"problem": "caf\xe9?", "answer": "4"}\n', 3, ["not UTF-8", "b'\\xe9'"]),
    (b'["problem", "answer"]\n', 1, ["JSON object"]),
    (b'{"problem": "x", "answer": [1]}\n', 1, ["'answer'", "string or number"]),
])
def test_bad_rows_name_file_line_and_field(tmp_path, content, line, words):
    path = _write(tmp_path, "broken.jsonl", content)
    with pytest.raises(ValueError) as err:
        load_benchmark(path)
    msg = str(err.value)
    assert f"{path}, line {line}:" in msg
    for w in words:
        assert w in msg


def test_known_format_errors_name_its_field(tmp_path):
    path = _write(tmp_path, "gsm8k_test.jsonl", b'{"question": "q", "answer": "no marker"}\n')
    with pytest.raises(ValueError, match=r"line 1: field 'answer': has no '####"):
        load_benchmark(path)
    path = _write(tmp_path, "olympiadbench.jsonl", b'{"question": "q", "answer": "3"}\n')
    with pytest.raises(ValueError, match=r"line 1: field 'final_answer': missing"):
        load_benchmark(path)


def test_missing_file_unknown_name_and_missing_data_dir_file(tmp_path):
    with pytest.raises(ValueError, match=r"nope\.jsonl does not exist.*math500"):
        load_benchmark(str(tmp_path / "nope.jsonl"))
    with pytest.raises(ValueError, match="unknown benchmark 'math5000'.*math500, aime24"):
        load_benchmark("math5000")
    with pytest.raises(ValueError, match=r"data_dir is .* has no aime24\.jsonl"):
        load_benchmark("aime24", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_benchmark(_write(tmp_path, "ok.jsonl", GOOD), limit=0)


# -- prompt templates ------------------------------------------------------------------------------
def test_text_templates_are_exact():
    q = "What is {x}?"  # braces must survive (no str.format)
    assert format_prompt("12*7+35", "plain") == "Q: 12*7+35=? A:"
    assert format_prompt(q, "qwen25-math-cot") == (
        "<|im_start|>system\nPlease reason step by step, and put your final answer within "
        "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is {x}?<|im_end|>\n<|im_start|>assistant\n")
    assert format_prompt(q, "qwen-boxed") == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is {x}?"
        "\nPlease reason step by step, and put your final answer within \\boxed{}.<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert format_prompt(q, "base") == (
        "What is {x}?\nPlease reason step by step, and put your final answer within \\boxed{}.\n")
    with pytest.raises(ValueError, match="unknown prompt template 'qwen'.*'plain', 'qwen25-math-cot'"):
        format_prompt(q, "qwen")
    assert set(TEMPLATES) == {"plain", "qwen25-math-cot", "qwen-boxed", "chat", "chat-gsm8k", "base"}


def _local_tokenizer(chat_template):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, "<unk>")),
                                  unk_token="<unk>")
    tok.chat_template = chat_template
    return tok


def test_chat_template_uses_the_tokenizer():
    tok = _local_tokenizer("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}[/]{% endfor %}"
                           "{% if add_generation_prompt %}[assistant]{% endif %}")
    assert format_prompt("2+2?", "chat", tok) == f"[system]{SYSTEM_BOXED}[/][user]2+2?[/][assistant]"
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        format_prompt("2+2?", "chat")
    with pytest.raises(ValueError, match="no chat_template.*'base'"):
        format_prompt("2+2?", "chat", _local_tokenizer(None))
