"""The strategies task: two-digit multiplication written as a short chain whose decomposition is
a choice, so the way a completion reaches its answer can be read from its text.

    Q: 47*36=? A: 40*36+7*36=1440+252=1692     split_a: the first factor's tens and units
    Q: 47*36=? A: 47*30+47*6=1410+282=1692     split_b: the second factor's tens and units
    Q: 47*36=? A: 47*40-47*4=1880-188=1692     round_b: the second factor rounded up, minus the rest

Factors run over 11..99 without multiples of ten (6,561 problems, ~10% held out by the same
question-hash rule as the other arithmetic families). The gold answer is the product; the reward
reads the number after a completion's last '=' (answer_style "chain"), so a chain with a wrong
step can still be right only by luck. The cold start trains on the three strategies mixed, one
drawn per example (`sft_target`), so the policy RL starts from uses all three; `strategy_of`
labels any completion (a strategy, "direct" for a bare number, "other" for anything else) and
`thrlab.core.stats.label_entropy` measures the diversity of a set of labels in bits (log2 3 =
1.58 at most).
"""
from __future__ import annotations

import re

STRATEGIES = ("split_a", "split_b", "round_b")
_FIRST = re.compile(r"\s*(\d+)\*(\d+)([+-])")
_QUESTION = re.compile(r"(\d+)\*(\d+)")


def factors(question: str) -> tuple[int, int]:
    """(a, b) of a question 'a*b'."""
    m = _QUESTION.fullmatch(question.strip())
    if not m:
        raise ValueError(f"{question!r} is not a strategies question 'a*b'")
    return int(m.group(1)), int(m.group(2))


def chain(a: int, b: int, strategy: str) -> str:
    """The completion (without its leading space) that computes a*b by `strategy`."""
    ta, ua, tb, ub = a // 10 * 10, a % 10, b // 10 * 10, b % 10
    if strategy == "split_a":
        return f"{ta}*{b}+{ua}*{b}={ta * b}+{ua * b}={a * b}"
    if strategy == "split_b":
        return f"{a}*{tb}+{a}*{ub}={a * tb}+{a * ub}={a * b}"
    if strategy == "round_b":
        up = tb + 10
        return f"{a}*{up}-{a}*{up - b}={a * up}-{a * (up - b)}={a * b}"
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")


def sft_target(question: str, rng) -> str:
    """A cold-start target for a strategies question: the chain of a strategy drawn by rng."""
    a, b = factors(question)
    return chain(a, b, rng.choice(STRATEGIES))


def strategy_of(question: str, completion: str) -> str:
    """The strategy a completion's first step takes: one of STRATEGIES, "direct" (no product
    written, e.g. a bare number) or "other" (a first step none of the strategies takes)."""
    a, b = factors(question)
    m = _FIRST.match(completion)
    if not m:
        return "direct" if "*" not in completion else "other"
    x, y, op = int(m.group(1)), int(m.group(2)), m.group(3)
    if op == "+" and (x, y) == (a // 10 * 10, b):
        return "split_a"
    if op == "+" and (x, y) == (a, b // 10 * 10):
        return "split_b"
    if op == "-" and (x, y) == (a, b // 10 * 10 + 10):
        return "round_b"
    return "other"
