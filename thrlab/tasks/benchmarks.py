"""Training and evaluation problems: math benchmarks from local JSONL files or the Hugging Face
hub, and prompt templates (the embedded model's synthetic arithmetic is thrlab.tasks.arithmetic).

Every benchmark row becomes a `Problem` whose `answer` is the gold string the grader receives, read
per benchmark as in Qwen2.5-Math's `parse_ground_truth` (see BENCHMARKS). Bad data fails here,
before training, with the file, line and field in the message.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from thrlab.core.errors import ConfigError, DataError

from .rewards import extract_boxed, extract_gsm8k


@dataclass(frozen=True)
class Problem:
    """One question with its gold answer."""

    id: str  # stable, e.g. "math500/test/precalculus/807.json" or "arith/train/12*7+35"
    question: str  # raw question text, not templated
    answer: str  # gold answer string, as the grader receives it
    source: str  # benchmark name, file stem, or "arithmetic"
    level: int | None = None


# -- benchmark rows ----------------------------------------------------------------------------------
class RowError(Exception):
    """A row lacks a usable field; the loader adds where (file and line, or hub row)."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field {field!r}: {problem}")
        self.field = field


Row = tuple[str, str, object, "int | None"]  # (question, answer, row id or None, level)


def _question(row: dict) -> str:
    key = "problem" if "problem" in row else "question"  # Qwen's files carry one or both
    if key not in row:
        raise RowError("problem", "missing; each row needs a 'problem' or 'question' string")
    q = row[key]
    if not isinstance(q, str) or not q.strip():
        raise RowError(key, f"empty or not a string ({q!r}); give the question text")
    return q


def _field(row: dict, key: str):
    if key not in row or row[key] is None:
        raise RowError(key, f"missing; this benchmark reads its gold answer from '{key}'")
    return row[key]


def _number(x) -> str:
    """Render a gold answer; integral floats (AIME25/AMC23 store 70.0) lose the ".0"."""
    if isinstance(x, bool) or not isinstance(x, (str, int, float)):
        raise RowError("answer", f"expected a string or number, got {type(x).__name__} {x!r}")
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x).strip()


def _boxed_of(row: dict, key: str = "solution") -> str:
    box = extract_boxed(str(_field(row, key)))
    if box is None:
        raise RowError(key, "has no \\boxed{...} answer; add one or give an 'answer' field")
    return box


def _level(x) -> int | None:
    """Parse a MATH level: 3 or "Level 3" -> 3; "Level ?" or absent -> None."""
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    m = re.fullmatch(r"\s*(?:Level\s*)?(\d+)\s*", str(x)) if x is not None else None
    return int(m.group(1)) if m else None


def _rowid(row: dict, *keys: str):
    return next((row[k] for k in keys if row.get(k) is not None), None)


def read_math500(row: dict) -> Row:
    """MATH-500: `problem`, `answer` (equals the last \\boxed{} of `solution`)."""
    return _question(row), _number(_field(row, "answer")), _rowid(row, "unique_id"), \
        _level(row.get("level"))


def read_answer_field(row: dict) -> Row:
    """AIME24/AIME25/AMC23: `problem`|`question`, `answer` as given ("025" stays; 70.0 -> "70")."""
    return _question(row), _number(_field(row, "answer")), _rowid(row, "id"), None


def read_minerva(row: dict) -> Row:
    """Minerva: the last \\boxed{} of `solution` (hub copies may carry `answer` instead)."""
    ans = _boxed_of(row) if "solution" in row or "answer" not in row else _number(row["answer"])
    return _question(row), ans, _rowid(row, "idx", "id"), None


def read_olympiadbench(row: dict) -> Row:
    """OlympiadBench: `final_answer[0]` with its surrounding `$` (and a period after it) stripped."""
    fa = _field(row, "final_answer")
    if isinstance(fa, list):
        if not fa:
            raise RowError("final_answer", "empty list; it must hold one answer string")
        fa = fa[0]
    ans = _number(fa)
    ans = ans[:-1] if ans.endswith("$.") else ans  # one row reads "$(-\\infty, 0) \\cup\\{1\\}$."
    return _question(row), ans.strip("$").strip(), _rowid(row, "id"), None


def read_gsm8k(row: dict) -> Row:
    """GSM8K: the text after `####` in `answer`, commas removed ("999,000" -> "999000")."""
    ans = extract_gsm8k(str(_field(row, "answer")))
    if ans is None:
        raise RowError("answer", "has no '#### <number>' line; GSM8K answers end with one")
    return _question(row), ans, _rowid(row, "idx", "id"), None


def read_math_train(row: dict) -> Row:
    """MATH train: `answer` (the last \\boxed{} of `solution`, derived if absent); level 1-5."""
    ans = _number(row["answer"]) if row.get("answer") is not None else _boxed_of(row)
    return _question(row), ans, _rowid(row, "id", "unique_id"), _level(row.get("level"))


def read_generic(row: dict) -> Row:
    """Any JSONL: `question`|`problem`, and `answer` or else the last \\boxed{} of `solution`."""
    if row.get("answer") is None and "solution" not in row:
        raise RowError("answer", "missing; give an 'answer' field or a 'solution' with \\boxed{}")
    ans = _number(row["answer"]) if row.get("answer") is not None else _boxed_of(row)
    return _question(row), ans, _rowid(row, "id", "unique_id", "idx"), _level(row.get("level"))


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark lives (local file name, hub id) and how to read one row."""

    filename: str
    hub_id: str
    split: str
    read: Callable[[dict], Row]
    configs: tuple[str | None, ...] = (None,)  # several configs are concatenated in order
    # The hub card as checked (tests/test_hub_cards.py reads rows of this shape): the revision
    # read and what it showed; "not read" where no page of it was reachable.
    card: str = ""


# Hub copies are the usual ones; only local JSONL files (a data_dir; the development checkout's
# shared data, whose README gives their provenance) are read by tests. AIME25 uses
# opencompass/AIME2025 (parts I then II), whose text the local file matches.
# math_train uses EleutherAI/hendrycks_math: the original 7,500-problem MATH train split, one
# config per subject, with `solution` only, so the answer is derived from its last \boxed{}.
BENCHMARKS: dict[str, Benchmark] = {
    "math500": Benchmark("math500.jsonl", "HuggingFaceH4/MATH-500", "test", read_math500,
                         card="ff5b202: no dataset_info; test.jsonl (problem, solution, answer, "
                              "subject, level int, unique_id), eval.yaml: problem -> answer"),
    "aime24": Benchmark("aime24.jsonl", "HuggingFaceH4/aime_2024", "train", read_answer_field,
                        card="2fe88a2: id int64, problem, solution, answer, url, year (strings); "
                             "train, 30 rows"),
    "aime25": Benchmark("aime25.jsonl", "opencompass/AIME2025", "test", read_answer_field,
                        ("AIME2025-I", "AIME2025-II"),
                        card="not read (no page reachable); users' code: question, answer"),
    "amc23": Benchmark("amc23.jsonl", "math-ai/amc23", "test", read_answer_field,
                       card="80815d3: file list only (one test parquet); users' code: url field"),
    "minerva_math": Benchmark("minerva_math.jsonl", "math-ai/minervamath", "test", read_minerva,
                              card="ee46ddc: file list only (test.jsonl); users' code: question, "
                                   "answer"),
    "olympiadbench": Benchmark("olympiadbench.jsonl", "Hothan/OlympiadBench", "train",
                               read_olympiadbench, ("OE_TO_maths_en_COMP",),
                               card="3b426ee: 18 configs, train only, OE_TO_maths_en_COMP 674 "
                                    "rows; features not read"),
    "gsm8k": Benchmark("gsm8k_test.jsonl", "openai/gsm8k", "test", read_gsm8k, ("main",),
                       card="e53f048: main: question, answer (strings); test 1319, train 7473"),
    "gsm8k_train": Benchmark("gsm8k_train.jsonl", "openai/gsm8k", "train", read_gsm8k, ("main",),
                             card="e53f048: as gsm8k"),
    "math_train": Benchmark("math_train.jsonl", "EleutherAI/hendrycks_math", "train",
                            read_math_train, ("algebra", "counting_and_probability", "geometry",
                                              "intermediate_algebra", "number_theory",
                                              "prealgebra", "precalculus"),
                            card="0bd4da3: 7 configs, train and test; features not read"),
}
_BY_FILENAME = {b.filename: name for name, b in BENCHMARKS.items()}
# Row formats that carry their own answer field; every other benchmark reads `answer` or a
# \boxed{} in `solution`, which the generic reader covers.
_FORMATS = {"gsm8k": read_gsm8k, "olympiadbench": read_olympiadbench}
# A gold answer longer than any in the shared benchmark files (the longest is 210 characters) or
# spanning lines is most likely a worked solution read by the wrong reader.
_MAX_GOLD_CHARS = 300


def row_format(rows: list[dict]) -> str | None:
    """The specific format the rows are in: "gsm8k" (an `answer` with a `####` line),
    "olympiadbench" (`final_answer`), or None (`answer`, or `solution` with \\boxed{})."""
    if any(isinstance(r.get("answer"), str) and "####" in r["answer"] for r in rows):
        return "gsm8k"
    if any("final_answer" in r for r in rows):
        return "olympiadbench"
    return None


def _reader(path: Path, rows: list[dict], name: str | None) -> Callable[[dict], Row]:
    """The reader of a file's rows: from the rows, or a known benchmark's when the name agrees."""
    found = row_format(rows)
    if name is None:
        return _FORMATS.get(found, read_generic)
    own = next((f for f, read in _FORMATS.items() if read is BENCHMARKS[name].read), None)
    if found is not None and found != own:
        raise DataError(f"{path} is named like the {name} benchmark, but its rows are in "
                        f"{found}'s format; rename the file (it is then read by its rows) or "
                        f"put {name}'s rows in it")
    return BENCHMARKS[name].read  # a known file pins its reader (it checks its own fields)


def _jsonl_rows(path: Path):
    """Yield (line number, dict) from a JSONL file, decoding each line on its own."""
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}, line {lineno}: byte {raw[e.start:e.start + 1]!r} at column "
                             f"{e.start + 1} is not UTF-8; re-save the file as UTF-8") from None
        text = text.lstrip("\ufeff") if lineno == 1 else text  # tolerate a byte-order mark
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {lineno}: malformed JSON ({e.msg} at column {e.colno}); "
                             "each line must be one complete JSON object") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {lineno}: expected a JSON object, got "
                             f"{type(row).__name__}; write one {{...}} object per line")
        yield lineno, row


def _problems(rows, read, source: str, where: str, unit: str = "line") -> list[Problem]:
    """Read (position, row) pairs into Problems; skip, and warn about, rows with empty gold;
    warn about golds that look like solutions; refuse a set with no problem left."""
    out, empty, odd = [], [], []
    for pos, row in rows:
        try:
            q, ans, rid, level = read(row)
        except RowError as e:
            raise DataError(f"{where}, {unit} {pos}: {e}") from None
        if not ans:
            empty.append(pos)  # e.g. MATH train/number_theory/7115.json has an empty \boxed{}
            continue
        if "\n" in ans or len(ans) > _MAX_GOLD_CHARS:
            odd.append((pos, ans))
        out.append(Problem(id=f"{source}/{pos if rid is None else rid}", question=q, answer=ans,
                           source=source, level=level))
    if empty:
        # Skipped, not failed: an empty gold can never be graded correct, so it only adds noise.
        warnings.warn(f"{where}: skipped {len(empty)} rows with an empty gold answer "
                      f"({unit}s {empty[:10]}); they cannot be graded", stacklevel=3)
    if odd:
        pos, ans = odd[0]
        warnings.warn(f"{where}: {len(odd)} of {len(out)} gold answers do not look like answers "
                      f"(several lines or over {_MAX_GOLD_CHARS} characters), e.g. {unit} {pos}: "
                      f"{ans[:80]!r}...; give each row a short 'answer' (GSM8K rows: end it with "
                      "'#### <number>')", stacklevel=3)
    if not out:
        raise DataError(f"{where} holds no problems (no rows, or only rows with an empty gold "
                        "answer); give it at least one row with a question and an answer")
    return out


def _load_hub(name: str, bench: Benchmark) -> list[Problem]:
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"loading {name!r} from the hub needs `datasets` (pip install datasets); "
                          "or pass data_dir= a folder holding the JSONL files") from e
    rows = []
    for config in bench.configs:
        try:
            rows.extend(datasets.load_dataset(bench.hub_id, config, split=bench.split))
        except Exception as e:
            why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataError(f"could not load {name!r} from the hub ({bench.hub_id}, config "
                            f"{config}, split {bench.split}): {why}. Offline? Pass data_dir= a "
                            f"folder holding {bench.filename}, or set THRLAB_DATA_DIR") from e
    return _problems(enumerate(rows), bench.read, name, f"hub dataset {bench.hub_id}", "row")


def load_benchmark(name_or_path: str, *, data_dir: str | None = None, limit: int | None = None,
                   levels: tuple[int, ...] | None = None) -> list[Problem]:
    """Load a benchmark by JSONL path, or by name from data_dir/$THRLAB_DATA_DIR, else the hub.

    A file's row format is read from its rows (`row_format`: GSM8K's `####` answers,
    OlympiadBench's `final_answer`, else `answer` or the \\boxed{} of `solution`), never guessed
    from its name; a known benchmark file name (e.g. gsm8k_test.jsonl) pins that benchmark's
    reader when the rows agree and is refused when they are in another format. Empty sets are
    refused; golds that look like solutions warn. `levels` keeps only problems of those MATH
    levels; `limit` keeps the first `limit` problems after filtering, in file order.
    """
    known = ", ".join(BENCHMARKS)
    if str(name_or_path).endswith(".jsonl"):
        path = Path(name_or_path)
        if not path.is_file():
            raise DataError(f"benchmark file {path} does not exist; check the path, or name a "
                            f"known benchmark ({known})")
        name = _BY_FILENAME.get(path.name)
        problems = _read_file(path, name, name or path.stem)
    elif name_or_path in BENCHMARKS:
        bench, env = BENCHMARKS[name_or_path], os.environ.get("THRLAB_DATA_DIR")
        folder = data_dir or env
        if folder:
            path = Path(folder) / bench.filename
            if not path.is_file():
                origin = "data_dir" if data_dir else "$THRLAB_DATA_DIR"
                raise DataError(f"{origin} is {folder}, which has no {bench.filename}; put the "
                                f"file there, or unset {origin} to load {bench.hub_id} from the "
                                "hub")
            problems = _read_file(path, name_or_path, name_or_path)
        else:
            problems = _load_hub(name_or_path, bench)
    else:
        import difflib

        names = ["arithmetic", *BENCHMARKS]
        close = difflib.get_close_matches(str(name_or_path), names, 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown benchmark {name_or_path!r}{hint}; use one of arithmetic (the "
                        f"synthetic task; as task or eval_sets), {known}, or a path to a JSONL "
                        "file (name ending in .jsonl)")
    if levels:
        keep = set(levels)
        problems = [p for p in problems if p.level in keep]
        if not problems:
            raise DataError(f"no problem in {name_or_path} has a level in {tuple(levels)}; only "
                             "MATH-style sets carry levels: drop the level filter for this one (--set "
                            "train_levels= , i.e. empty)")
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be >= 1 or None, got {limit}")
        problems = problems[:limit]
    return problems


def _read_file(path: Path, name: str | None, source: str) -> list[Problem]:
    rows = list(_jsonl_rows(path))
    read = _reader(path, [r for _, r in rows], name)
    return _problems(rows, read, source, str(path))


# -- prompt templates -----------------------------------------------------------------------------
TEMPLATES = ("plain", "qwen25-math-cot", "qwen-boxed", "chat", "chat-gsm8k", "base")
# chat-gsm8k's system turn, chosen by measurement on SmolLM2-135M-Instruct (benchmarks/RESULTS.md
# "A real pretrained model"): of four phrasings it gave the most greedy answers in the form asked.
SYSTEM_GSM8K = ("You solve short math word problems. Show the calculation in one line, then give "
                "the final answer on its own line after ####.")
SYSTEM_BOXED = "Please reason step by step, and put your final answer within \\boxed{}."


def format_prompt(question: str, template: str, tokenizer=None) -> str:
    """Render one question as the prompt text of `template` (chat needs the model's tokenizer)."""
    if template == "plain":  # the tiny model's format; it answers " 119" then eos
        return f"Q: {question}=? A:"
    if template == "qwen25-math-cot":  # Qwen2.5-Math evaluation/utils.py, and Dr. GRPO's qwen_math
        return (f"<|im_start|>system\n{SYSTEM_BOXED}<|im_end|>\n"
                f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
    if template == "qwen-boxed":  # Qwen2-Math-Instruct: the instruction goes in the user turn
        return ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                f"<|im_start|>user\n{question}\n{SYSTEM_BOXED}<|im_end|>\n<|im_start|>assistant\n")
    if template == "base":  # base models without a chat template
        return f"{question}\n{SYSTEM_BOXED}\n"
    if template in ("chat", "chat-gsm8k"):
        if tokenizer is None:
            raise ConfigError("template 'chat' needs the model's tokenizer: pass tokenizer=..., or "
                             "use 'base' for a model without a chat template")
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError(f"{type(tokenizer).__name__} has no chat_template, so template "
                             "'chat' cannot be rendered; use 'base' (or 'qwen25-math-cot') instead")
        system = SYSTEM_GSM8K if template == "chat-gsm8k" else SYSTEM_BOXED
        turns = [{"role": "system", "content": system}, {"role": "user", "content": question}]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    raise ConfigError(f"unknown prompt template {template!r}; use one of {TEMPLATES}")
