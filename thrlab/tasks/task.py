"""The Task: what a run trains and evaluates on, as one object (docs/adding-a-task.md).

A Task holds its training problems and its held-out problems (thrlab.tasks.benchmarks.Problem:
id, question, gold answer), how a completion is graded, and optionally a label per completion
(the strategies task labels how a product was decomposed). The trainer, the evaluation and the
paper layer ask the run's Task what the data is, never the config's strings.

`task_of(cfg)` builds the Task a config names: task="arithmetic" is the embedded family
`arith_op` (mul_chain is the strategies task), a name registered with `register` is that Task,
anything else is a benchmark name or a JSONL path (thrlab.tasks.benchmarks.load_benchmark). A
config's eval set is a Task by the same rule (`eval_task`). Your own data:

    task = Task.from_jsonl("my_task", "train.jsonl", heldout="test.jsonl",
                           grade=lambda completion, gold: completion.strip().endswith(gold))
    register(task)      # then task=my_task eval_sets=my_task in any config
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from thrlab.core.errors import ConfigError

from .arithmetic import arithmetic_problems
from .benchmarks import Problem, load_benchmark
from .chains import STRATEGIES, strategy_of
from .rewards import GradeResult, grade
from .word_problems import WORD_OPS, word_problems

log = logging.getLogger(__name__)

# Held-out arithmetic problems are drawn with this seed, independent of the run's seed, so runs
# with different seeds are scored on the same problems.
EVAL_SEED = 0


def _grade_with_config(cfg) -> Callable:
    """The config's own grader (exact_int or math_verify) on its answer_style."""
    return functools.partial(grade, grader=cfg.grader, timeout_s=cfg.grader_timeout_s,
                             style=cfg.answer_style)


@dataclass(frozen=True)
class Task:
    name: str  # what configs call it (task=, eval_sets=)
    train: Callable[[int], list[Problem]]  # seed -> training problems (the trainer shuffles)
    heldout: Callable[[int | None], list[Problem]]  # limit (None = all) -> held-out problems
    # (completions, golds) -> GradeResult; None grades with the config's grader and answer_style
    grade: Callable[[list[str], list[str]], GradeResult] | None = None
    label: Callable[[str, str], str] | None = None  # (question, completion) -> a label
    labels: tuple[str, ...] = field(default=())  # every label `label` returns

    def grade_fn(self, cfg) -> Callable[[list[str], list[str]], GradeResult]:
        return self.grade or _grade_with_config(cfg)

    def labels_of(self, questions: list[str], texts: list[str]) -> list[str] | None:
        """Each completion's label (None for a task without labels)."""
        if self.label is None:
            return None
        return [self.label(q, t) for q, t in zip(questions, texts, strict=True)]

    @classmethod
    def from_jsonl(cls, name: str, train: str, *, heldout: str | None = None,
                   grade: Callable[[str, str], bool | float] | None = None) -> Task:
        """A task from JSONL files of {"question" (or "problem"), "answer"} rows; `grade(completion,
        gold)` -> True/False (or a reward in [0, 1]); None grades with the config's grader. A
        grade function that raises counts as a grading error (logged, reward 0), never silently."""
        return cls(name=name, train=benchmark_task(train).train,
                   heldout=benchmark_task(heldout or train).heldout,
                   grade=None if grade is None else per_item(grade))


def per_item(fn: Callable[[str, str], bool | float]) -> Callable:
    """A batch grader from fn(completion, gold) -> bool or a reward in [0, 1]."""
    def grade_batch(completions: list[str], golds: list[str]) -> GradeResult:
        rewards, status = [], []
        for c, g in zip(completions, golds, strict=True):
            try:
                r = float(fn(c, g))
            except Exception as err:  # a user's grader: counted and logged, never a silent 0
                log.warning("grade function raised %s on %r", type(err).__name__, c[:80])
                rewards.append(0.0)
                status.append("error")
                continue
            if not 0.0 <= r <= 1.0:
                raise ValueError(f"the grade function returned {r} for {c[:80]!r}; return "
                                 "True/False or a reward in [0, 1]")
            rewards.append(r)
            status.append("correct" if r > 0 else "wrong")
        return GradeResult(rewards=rewards, status=status, errors=status.count("error"))
    return grade_batch


_REGISTRY: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Make `task` what task=<task.name> and eval_sets=<task.name> mean in this process."""
    if task.name in ("arithmetic", *WORD_OPS):
        raise ConfigError(f"task name {task.name!r} is built in; choose another name")
    _REGISTRY[task.name] = task
    return task


def arithmetic_task(op: str) -> Task:
    """The embedded synthetic family `op` (thrlab.tasks.arithmetic); mul_chain is the strategies
    task, whose completions are labelled by the strategy they take (thrlab.tasks.chains)."""
    strategies = op == "mul_chain"
    return Task(name="arithmetic",
                train=lambda seed: arithmetic_problems(None, "train", seed=seed, op=op),
                heldout=lambda limit=None: arithmetic_problems(limit, "heldout", seed=EVAL_SEED,
                                                               op=op),
                label=strategy_of if strategies else None,
                labels=(*STRATEGIES, "direct", "other") if strategies else ())


def word_task(op: str) -> Task:
    """A tier of one-line word problems (thrlab.tasks.word_problems), graded strictly on the
    integer after `####` whatever the config's grader: a completion without one is no_answer."""
    return Task(name=op, train=lambda seed: word_problems(None, "train", seed=seed, op=op),
                heldout=lambda limit=None: word_problems(limit, "heldout", seed=EVAL_SEED, op=op),
                grade=functools.partial(grade, grader="exact_int", style="gsm8k"))


def benchmark_task(name_or_path: str, *, data_dir: str | None = None,
                   levels: tuple[int, ...] | None = None) -> Task:
    """A benchmark by name or a JSONL path (thrlab.tasks.benchmarks), graded by the config."""
    return Task(name=name_or_path,
                train=lambda seed: load_benchmark(name_or_path, data_dir=data_dir, levels=levels),
                heldout=lambda limit=None: load_benchmark(name_or_path, data_dir=data_dir,
                                                          limit=limit))


def eval_task(name: str, cfg) -> Task:
    """The Task an eval set name means under cfg."""
    if name == "arithmetic":
        return arithmetic_task(cfg.arith_op)
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in WORD_OPS:
        return word_task(name)
    return benchmark_task(name, data_dir=cfg.data_dir or None)


def task_of(cfg) -> Task:
    """The Task cfg trains on (cfg.task; train_levels filter a MATH benchmark)."""
    if cfg.task in _REGISTRY or cfg.task in WORD_OPS or cfg.task == "arithmetic":
        return eval_task(cfg.task, cfg)
    return benchmark_task(cfg.task, data_dir=cfg.data_dir or None,
                          levels=tuple(cfg.train_levels) or None)
