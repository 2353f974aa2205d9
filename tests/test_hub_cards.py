"""The hub path a first run takes: every benchmark's hub id, configs and split (tasks.BENCHMARKS)
read through tasks' own hub loader from real `datasets.Dataset` objects whose features are those
of the dataset's card (the revision in each Benchmark's `card`), built here: no network. Where a
card was not readable (its `card` says so) the rows take the shape the local copy and users' code
show, and every shape a reader accepts is tried.
"""
import datasets
import pytest

from thrlab.tasks import benchmarks as tasks

S = datasets.Value("string")
I64 = datasets.Value("int64")
F64 = datasets.Value("float64")

# name -> (features, rows, expected (question, answer, level) of the first row)
CARDS = {
    "math500": ({"problem": S, "solution": S, "answer": S, "subject": S, "level": I64,
                 "unique_id": S},
                [{"problem": "Convert the point $(0,3)$ to polar coordinates.",
                  "solution": "... $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$",
                  "answer": "\\left( 3, \\frac{\\pi}{2} \\right)", "subject": "Precalculus",
                  "level": 2, "unique_id": "test/precalculus/807.json"}],
                ("Convert the point $(0,3)$ to polar coordinates.",
                 "\\left( 3, \\frac{\\pi}{2} \\right)", 2)),
    "aime24": ({"id": I64, "problem": S, "solution": S, "answer": S, "url": S, "year": S},
               [{"id": 60, "problem": "Every morning Aya goes for a 9-kilometer-long walk...",
                 "solution": "...", "answer": "204", "url": "https://artofproblemsolving.com/",
                 "year": "2024"}],
               ("Every morning Aya goes for a 9-kilometer-long walk...", "204", None)),
    "aime25": ({"question": S, "answer": S},
               [{"question": "Find the sum of all integer bases $b>9$...", "answer": "70"}],
               ("Find the sum of all integer bases $b>9$...", "70", None)),
    "amc23": ({"id": I64, "question": S, "answer": F64, "url": S},
              [{"id": 0, "question": "How many positive perfect squares...", "answer": 27.0,
                "url": "https://artofproblemsolving.com/"}],
              ("How many positive perfect squares...", "27", None)),
    "minerva_math": ({"question": S, "answer": S},
                     [{"question": "Each of the two Magellan telescopes...", "answer": "1.6"}],
                     ("Each of the two Magellan telescopes...", "1.6", None)),
    "olympiadbench": ({"id": I64, "question": S, "final_answer": datasets.Sequence(S),
                       "is_multiple_answer": datasets.Value("bool"), "unit": S,
                       "answer_type": S},
                      [{"id": 1606, "question": "Xenia and Sergey play the following game...",
                        "final_answer": ["$1$"], "is_multiple_answer": False, "unit": None,
                        "answer_type": "Numerical"}],
                      ("Xenia and Sergey play the following game...", "1", None)),
    "gsm8k": ({"question": S, "answer": S},
              [{"question": "Janet's ducks lay 16 eggs per day...",
                "answer": "She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18"}],
              ("Janet's ducks lay 16 eggs per day...", "18", None)),
    "gsm8k_train": ({"question": S, "answer": S},
                    [{"question": "Natalia sold clips to 48 of her friends...",
                      "answer": "... 72 clips.\n#### 1,072"}],
                    ("Natalia sold clips to 48 of her friends...", "1072", None)),
    "math_train": ({"problem": S, "level": S, "type": S, "solution": S},
                   [{"problem": "Let \\[f(x) = ...\\]", "level": "Level 5", "type": "Algebra",
                     "solution": "... so $a+b=\\boxed{0}$."}],
                   ("Let \\[f(x) = ...\\]", "0", 5)),
}


def test_every_benchmark_has_a_card_shape():
    assert set(CARDS) == set(tasks.BENCHMARKS)
    assert all(b.card for b in tasks.BENCHMARKS.values())  # the revision read, or "not read"


@pytest.mark.parametrize("name", sorted(CARDS))
def test_hub_reader_on_card_shaped_rows(name, monkeypatch):
    features, rows, (question, answer, level) = CARDS[name]
    bench = tasks.BENCHMARKS[name]
    calls = []

    def load_dataset(hub_id, config, split):  # the hub itself is out of reach in tests
        calls.append((hub_id, config, split))
        return datasets.Dataset.from_list(rows, features=datasets.Features(features))

    monkeypatch.delenv("THRLAB_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    problems = tasks.load_benchmark(name)
    assert calls == [(bench.hub_id, c, bench.split) for c in bench.configs]
    p = problems[0]
    assert (p.question, p.answer, p.level) == (question, answer, level)
    assert len(problems) == len(rows) * len(bench.configs)
    assert p.source == name


def test_olympiadbench_reads_a_plain_string_final_answer_too(monkeypatch):
    # the card's features were not readable: a copy storing final_answer as a string also works
    rows = [{"question": "q", "final_answer": "$(-\\infty, 0) \\cup\\{1\\}$."}]
    monkeypatch.delenv("THRLAB_DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: datasets.Dataset.from_list(rows))
    assert tasks.load_benchmark("olympiadbench")[0].answer == "(-\\infty, 0) \\cup\\{1\\}"
