"""One-line arithmetic word problems for a small pretrained chat model (docs/real-model.md).

Three tiers, each its own task, generated like the embedded arithmetic (every combination of
numbers, sentence, name and object; a fixed train/held-out split by a hash of the question
text). The tiers and their numbers were chosen by measuring SmolLM2-135M-Instruct
(benchmarks/RESULTS.md "A real pretrained model"): one-digit addition is where a group of
samples is often mixed (GRPO's signal); two-digit addition and one-digit multiplication are
harder tiers to evaluate against.

Numbers start at 2, so every noun is plural. The answer is requested after `####` (the
GSM8K form; the prompt template `chat-gsm8k` asks for it) and graded strictly: the integer on
the line after the last `####`, nothing else (thrlab.tasks.rewards.extract_gsm8k); a completion
without one counts as no_answer, a malformed answer.
"""
from __future__ import annotations

import functools
import itertools
import random

from thrlab.core.errors import DataError

from .arithmetic import SPLITS, arith_split
from .benchmarks import Problem

NAMES = ("Sam", "Mia", "Leo", "Ava", "Ben", "Zoe", "Max", "Lily")
ITEMS = ("apple", "pencil", "marble", "book", "cookie", "stamp", "card", "flower", "shell",
         "sticker")
_ADD = (
    "{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?",
    "There are {a} {item}s in a box and {name} puts in {b} more. How many {item}s are in the box?",
    "{name} bought {a} {item}s on Monday and {b} {item}s on Tuesday. How many {item}s did {name} "
    "buy in all?",
)
_MUL = (
    "{name} has {a} bags with {b} {item}s in each bag. How many {item}s does {name} have?",
    "There are {a} rows of {item}s with {b} {item}s in each row. How many {item}s are there?",
    "{name} buys {a} packs of {item}s. Each pack has {b} {item}s. How many {item}s does {name} "
    "buy?",
)
_ONE, _TWO = range(2, 10), range(10, 100)
# tier -> (sentences, range of a, range of b, answer)
WORD_OPS = {
    "word_add1": (_ADD, _ONE, _ONE, lambda a, b: a + b),
    "word_add2": (_ADD, _TWO, _TWO, lambda a, b: a + b),
    "word_mul1": (_MUL, _ONE, _ONE, lambda a, b: a * b),
}


@functools.lru_cache(maxsize=None)
def _pool(op: str, split: str) -> tuple[tuple[str, str], ...]:
    sentences, ra, rb, fn = WORD_OPS[op]
    every = len(ra) * len(rb) <= 100  # one-digit tiers: every name and object; else one of each
    rows = []
    for s, a, b in itertools.product(sentences, ra, rb):
        words = (itertools.product(NAMES, ITEMS) if every
                 else [(NAMES[(7 * a + b) % len(NAMES)], ITEMS[(a + 3 * b) % len(ITEMS)])])
        for name, item in words:
            q = s.format(name=name, item=item, a=a, b=b)
            if arith_split(q) == split:
                rows.append((q, str(fn(a, b))))
    return tuple(rows)


def word_problems(n: int | None, split: str, seed: int, op: str) -> list[Problem]:
    """n distinct word problems of tier `op` from one split, drawn with random.Random(seed)
    (n=None: the whole split, shuffled)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {SPLITS}")
    if op not in WORD_OPS:
        raise DataError(f"unknown word-problem tier {op!r}; use one of {tuple(WORD_OPS)}")
    pool = _pool(op, split)
    n = len(pool) if n is None else min(n, len(pool))
    return [Problem(id=f"{op}/{split}/{q}", question=q, answer=ans, source=op)
            for q, ans in random.Random(seed).sample(pool, n)]
