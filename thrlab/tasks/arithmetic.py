"""Synthetic arithmetic for the embedded tiny model: the problem families, their fixed
train/held-out split, sampling, and the supervised targets of the cold start.
"""
from __future__ import annotations

import functools
import random
import zlib

from thrlab.core.errors import DataError

from .benchmarks import Problem
from .chains import sft_target

# Two families. "mul" (the tiny default): a*b with three-digit a and one-digit b, 900*8 = 7,200
# problems. "mul_add": a*b+c with two-digit a, c and one-digit b, 64,800 problems. Measured on the
# tiny model (2 cores, SFT batch 64, lr 1e-3): "mul" climbs gradually (5% greedy after 300 steps,
# 26% after 500, units digit right 64-89%), which leaves room for RL; "mul_add" stays near 5-8%
# after 1,500 steps because the units digit, a lookup over three operands, stays at chance (10%).
# The split rule is a stable hash of the question text: crc32(question) % 10 == 0 is held out
# (~10%); it depends on nothing but the question, so no seed or sample size can mix the splits.
# "mul_chain" (the strategies task, thrlab.tasks.chains): a*b with two two-digit factors that are not
# multiples of ten, answered as a chain of partial products whose decomposition is a choice.
_NOT_TENS = tuple(x for x in range(11, 100) if x % 10)
ARITH_OPS = {
    "mul": ((range(100, 1000), range(2, 10)), "{}*{}", lambda a, b: a * b),
    "mul_add": ((range(10, 100), range(2, 10), range(10, 100)), "{}*{}+{}",
                lambda a, b, c: a * b + c),
    "mul_chain": ((_NOT_TENS, _NOT_TENS), "{}*{}", lambda a, b: a * b),
}
SPLITS = ("train", "heldout")


def arith_split(question: str) -> str:
    """The split a synthetic question belongs to (a pure function of its text)."""
    return "heldout" if zlib.crc32(question.encode()) % 10 == 0 else "train"


@functools.lru_cache(maxsize=None)
def _arith_pool(op: str, split: str) -> tuple[tuple[str, str], ...]:
    import itertools

    ranges, fmt, fn = ARITH_OPS[op]
    return tuple((fmt.format(*xs), str(fn(*xs))) for xs in itertools.product(*ranges)
                 if arith_split(fmt.format(*xs)) == split)


def arithmetic_problems(n: int | None, split: str, seed: int, op: str = "mul") -> list[Problem]:
    """Sample n distinct synthetic problems of one split and operation with random.Random(seed).

    n=None returns the whole split, shuffled.
    """
    if split not in SPLITS:
        raise DataError(f"unknown arithmetic split {split!r}; use one of {SPLITS}")
    if op not in ARITH_OPS:
        raise DataError(f"unknown arithmetic op {op!r}; use one of {tuple(ARITH_OPS)}")
    pool = _arith_pool(op, split)
    n = len(pool) if n is None else n
    if not 0 <= n <= len(pool):
        raise DataError(f"asked for {n} arithmetic problems but the {split!r} split of {op!r} "
                         f"holds {len(pool)}; ask for at most {len(pool)}")
    return [Problem(id=f"arith/{split}/{q}", question=q, answer=ans, source="arithmetic")
            for q, ans in random.Random(seed).sample(pool, n)]


def sft_targets(problems: list[Problem], op: str, rng) -> list[str] | None:
    """Supervised targets for arithmetic problems of family `op`: the chains of a strategy drawn
    by rng for "mul_chain", None (the gold answer itself) for the others, whose rng is untouched."""
    if op != "mul_chain":
        return None

    return [sft_target(p.question, rng) for p in problems]
