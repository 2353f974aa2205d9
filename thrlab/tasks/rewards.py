"""Answer extraction and binary rewards: exact integers for the arithmetic task, math-verify for
benchmarks.

math-verify bounds its own work with `signal.alarm`, which fails outside the main thread, and when
it does time out it returns "no match" rather than saying so. So thrlab turns its timeouts off and
runs it in persistent worker processes instead: each item gets a real wall-clock limit, and a worker
that overruns is killed, replaced, and the item is counted as a timeout. Every item ends in exactly
one status, and every status other than "correct" and "wrong" is counted, never silently scored 0.

Why not pebble's ProcessPool, which does per-task timeouts with kill-and-replace: measured with
pebble 5.1.1 (issue 16), it kills a task that ignores SIGTERM too (terminate, a 3 s join, then
SIGKILL: 4.1 s for a 1 s limit, this pool 2 s), but its workers come from multiprocessing, and
neither start method fits a library called from training code. "fork" copies a process that has
started torch's threads (unsafe: a held lock is copied locked); "spawn" and "forkserver" re-import
the caller's `__main__` in every worker, so a user's script without an `if __name__ ==
"__main__":` guard stops with multiprocessing's "Safe importing of main module" error (reproduced).
These workers are fresh interpreters started by subprocess that import only thrlab.tasks.rewards and
the verifier, so they work from any script, notebook or forked process.
"""
from __future__ import annotations

import atexit
import logging
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

log = logging.getLogger("thrlab.tasks.rewards")

GRADERS = ("exact_int", "math_verify")
STYLES = ("boxed", "gsm8k", "plain", "chain")
STATUSES = ("correct", "wrong", "no_answer", "timeout", "error", "gold_unparsed")
_START_TIMEOUT_S = 120.0  # a cold worker imports sympy; a slow shared disk can take tens of seconds


# -- extraction ----------------------------------------------------------------------------------
# `\boxed` or `\fbox` not followed by a letter (so `\boxedtext` is a different macro).
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BARE_ARG = re.compile(r"\s*([^\s${}]+)")


def extract_boxed(text: str) -> str | None:
    """Return the content of the last `\\boxed{...}` / `\\fbox{...}` / `\\boxed 5`, else None.

    Braces nest; escaped `\\{` `\\}` do not count. If the last box never closes (a truncated
    completion) the answer is None: an earlier box is not the model's final answer.
    """
    last = None
    for last in _BOX.finditer(text):
        pass
    if last is None:
        return None
    rest = text[last.end():]
    body = rest.lstrip()
    if not body.startswith("{"):
        m = _BARE_ARG.match(rest)  # `\boxed 5$.` -> "5" (the MATH convention for a bare argument)
        return m.group(1) if m else None
    depth, i = 0, 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            i += 2  # skip the escaped character, e.g. \{ in \boxed{\{1,2\}}
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return body[1:i].strip()
        i += 1
    return None


def extract_gsm8k(text: str) -> str | None:
    """Return the first line after the last `####`, stripped, commas removed; None if absent."""
    idx = text.rfind("####")
    if idx < 0:
        return None
    # Only the first line: a model may keep writing (a new "Question: ...") after its answer.
    tail = text[idx + 4:].strip().split("\n", 1)[0]
    return tail.replace(",", "").strip()


def extract_answer(text: str, style: str) -> str | None:
    """Return the answer a completion states under `style` (boxed | gsm8k | plain | chain), or
    None. chain: the text after the last '=' (the strategies task's final product)."""
    readers = {"boxed": extract_boxed, "gsm8k": extract_gsm8k, "plain": str.strip,
               "chain": lambda t: t.rsplit("=", 1)[-1].strip()}
    if style not in readers:
        raise ValueError(f"unknown answer style {style!r}; use one of {STYLES}")
    return readers[style](text)


# -- results ---------------------------------------------------------------------------------------
@dataclass
class GradeResult:
    """Per-item rewards and statuses of one graded batch, with the failure counts."""

    rewards: list[float]
    status: list[str]
    timeouts: int = 0
    parse_failures: int = 0  # no extractable answer, or math-verify parsed nothing
    errors: int = 0  # the verifier raised, or its worker died
    gold_parse_failures: int = 0

    @classmethod
    def from_status(cls, status: list[str]) -> GradeResult:
        """Build the result from per-item statuses, so counts and rewards cannot disagree."""
        return cls(rewards=[1.0 if s == "correct" else 0.0 for s in status], status=list(status),
                   timeouts=status.count("timeout"), parse_failures=status.count("no_answer"),
                   errors=status.count("error"), gold_parse_failures=status.count("gold_unparsed"))

    def as_metrics(self, prefix: str = "reward/") -> dict:
        """Return failure counts and the mean reward (0.0 for an empty batch) as loggable floats."""
        mean = sum(self.rewards) / len(self.rewards) if self.rewards else 0.0
        return {f"{prefix}timeouts": self.timeouts, f"{prefix}parse_failures": self.parse_failures,
                f"{prefix}errors": self.errors,
                f"{prefix}gold_parse_failures": self.gold_parse_failures, f"{prefix}mean": mean}


# -- exact integers (arithmetic task) ---------------------------------------------------------------
_INT = re.compile(r"[+-]?[0-9]+")


def _exact_int_status(pred: str | None, gold: str) -> str:
    if _INT.fullmatch(gold.strip()) is None:
        return "gold_unparsed"
    if pred is None or _INT.fullmatch(pred) is None or len(pred) > 1000:  # int() caps at 4300 digits
        return "no_answer"
    return "correct" if int(pred) == int(gold) else "wrong"


# -- math-verify in worker processes --------------------------------------------------------------
def math_verify_item(gold: str, pred: str) -> str:
    """Grade one extracted prediction against one gold with math-verify; return a status.

    Both are wrapped in `\\boxed{}`: bare LaTeX gold parses to nothing otherwise. math-verify's own
    timeouts are off (None) because they swallow a timeout as "no match"; the pool bounds time.
    """
    from math_verify import parse, verify

    g = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
    if not g:
        return "gold_unparsed"
    p = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
    if not p:
        return "no_answer"
    return "correct" if verify(g, p, timeout_seconds=None) else "wrong"  # verify(gold, pred)


def _worker_main(conn, verify_fn) -> None:
    """Serve (index, gold, pred) jobs on conn until it closes; runs in a child process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the parent, which kills us
    for name in ("math_verify.parser", "math_verify.grader"):
        # Their only warnings are "timeout is disabled, bound time yourself" (the pool does) and
        # the timeouts that cannot happen once disabled.
        logging.getLogger(name).setLevel(logging.ERROR)
    if verify_fn is math_verify_item:
        import math_verify  # noqa: F401  (import before "ready", so item deadlines exclude it)
    conn.send(("ready", None, None))
    while True:
        try:
            i, gold, pred = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed the pool or died
        try:
            out = verify_fn(gold, pred)
            status = ("correct" if out else "wrong") if isinstance(out, bool) else out
            if status not in STATUSES:
                raise TypeError(f"verify_fn returned {out!r}; return a bool or one of {STATUSES}")
            conn.send((i, status, ""))
        except Exception as e:  # noqa: BLE001  (any verifier failure becomes a counted error)
            conn.send((i, "error", f"{type(e).__name__}: {e}"[:300]))


# The child learns the parent's sys.path first (as multiprocessing's spawn does), so thrlab and a
# test's verify_fn import there even when thrlab is not installed.
_BOOT = ("import sys; from multiprocessing.connection import Connection; "
         "c = Connection(int(sys.argv[1])); sys.path[:] = c.recv(); "
         "from thrlab.tasks.rewards import _worker_main; _worker_main(c, c.recv())")


class _Worker:
    """One grading process: a fresh interpreter started by subprocess, talking over a socket.

    Not multiprocessing: its spawn/forkserver re-run an unguarded `__main__` script in every
    child, and fork is unsafe once torch has started threads.
    """

    def __init__(self, verify_fn):
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(theirs.fileno())],
                                     pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # terminal Ctrl-C reaches the parent only
        theirs.close()  # so a dead child shows up as EOF on our end
        self.conn = Connection(ours.detach())
        self.conn.send(list(sys.path))
        self.conn.send(verify_fn)
        self.ready, self.job, self.deadline = False, None, 0.0
        self.started = time.monotonic()

    def stop(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            if _exit_code(self.proc) is None:  # ignores SIGTERM (or is stuck): escalate
                self.proc.kill()
                self.proc.wait()


class MathVerifyPool:
    """Persistent worker processes grading with math-verify under a per-item wall-clock limit.

    Reuse one pool across training steps (process start costs about a second). Not thread-safe.
    verify_fn: a picklable top-level `f(gold, pred) -> bool | status` that replaces
    `math_verify_item` (tests use it to hang or raise on purpose).
    """

    def __init__(self, workers: int | None = None, *, verify_fn=None):
        self.n_workers = min(4, os.cpu_count() or 1) if workers is None else workers
        if self.n_workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.verify_fn = verify_fn or math_verify_item
        try:
            pickle.dumps(self.verify_fn)
        except Exception as e:
            raise ValueError(f"verify_fn {self.verify_fn!r} cannot be sent to a worker process "
                             f"({e}); pass a top-level function of an importable module") from None
        self._workers = [_Worker(self.verify_fn) for _ in range(self.n_workers)]
        self._pid = os.getpid()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Stop all workers; the pool cannot be used afterwards."""
        for w in getattr(self, "_workers", []):
            w.stop()
        self._workers = []

    def grade(self, completions: list[str], golds: list[str], *, timeout_s: float = 5.0,
              style: str = "boxed", max_failure_frac: float = 0.5) -> GradeResult:
        """Grade completions against gold answers; each item gets at most timeout_s seconds."""
        _check_batch(completions, golds, style)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        status: list[str | None] = [None] * len(golds)
        preds = [extract_answer(c, style) for c in completions]
        jobs = deque()
        for i, (pred, gold) in enumerate(zip(preds, golds)):
            if not gold.strip():
                status[i] = "gold_unparsed"
            elif not pred:
                status[i] = "no_answer"
            else:
                jobs.append((i, gold, pred))
        try:
            done = self._run(jobs, timeout_s)
        except BaseException:
            # e.g. Ctrl-C in a notebook: busy workers would answer this batch during the next one.
            for k, w in enumerate(self._workers):
                if w.job is not None:
                    self._replace(k)
            raise
        for i, (st, msg) in done.items():
            status[i] = st
            if st in ("timeout", "error"):
                log.warning("grading item %d: %s%s; prediction: %r", i, st,
                            f" ({msg})" if msg else "", preds[i][:80])
        res = GradeResult.from_status(status)
        _warn_burst(res, max_failure_frac)
        return res

    def _run(self, jobs: deque, timeout_s: float) -> dict:
        """Feed jobs to idle workers; kill and replace any worker that overruns its deadline."""
        if not self._workers:
            raise RuntimeError("MathVerifyPool is closed; create a new one")
        if os.getpid() != self._pid:
            raise RuntimeError("MathVerifyPool used from a forked child; create a pool per process")
        out = {}
        while jobs or any(w.job is not None for w in self._workers):
            for k, w in enumerate(self._workers):
                if w.ready and w.job is None and jobs:
                    w.job, w.deadline = jobs.popleft(), time.monotonic() + timeout_s
                    try:
                        w.conn.send(w.job)
                    except OSError as e:
                        out[w.job[0]] = ("error", f"worker pipe broken: {e}")
                        self._replace(k)
            now = time.monotonic()
            limits = [w.deadline if w.ready else w.started + _START_TIMEOUT_S for w in self._workers
                      if w.job is not None or not w.ready]
            if not limits:
                continue
            wait([w.conn for w in self._workers], timeout=max(0.0, min(limits) - now))
            for k, w in enumerate(self._workers):
                self._collect(k, w, out, timeout_s)
        return out

    def _collect(self, k: int, w: _Worker, out: dict, timeout_s: float) -> None:
        try:
            msg = w.conn.recv() if w.conn.poll() else None
        except (EOFError, OSError):
            code = _exit_code(w.proc)
            if not w.ready:
                self.close()
                raise RuntimeError(f"a grading worker died while starting (exit code {code}; its "
                                   f"traceback is above); check that thrlab, math_verify and any "
                                   f"verify_fn import in {sys.executable}") from None
            if w.job is not None:
                out[w.job[0]] = ("error", f"worker died (exit code {code})")
            self._replace(k)
            return
        if msg is not None and msg[0] == "ready":
            w.ready = True
        elif msg is not None:
            i, st, err = msg
            out[i], w.job = (st, err), None
        elif w.job is not None and time.monotonic() >= w.deadline:
            out[w.job[0]] = ("timeout", f"no verdict within {timeout_s:g} s; worker killed")
            self._replace(k)
        elif not w.ready and time.monotonic() - w.started > _START_TIMEOUT_S:
            self.close()
            raise RuntimeError(f"a math-verify worker did not start within {_START_TIMEOUT_S:g} s; "
                               "check that `python -c 'import math_verify'` is fast here")

    def _replace(self, k: int) -> None:
        self._workers[k].stop()
        self._workers[k] = _Worker(self.verify_fn)


def _exit_code(proc: subprocess.Popen) -> int | None:
    try:
        return proc.wait(1.0)  # EOF can arrive a moment before the process is reaped
    except subprocess.TimeoutExpired:
        return None


def _check_batch(completions, golds, style) -> None:
    if len(completions) != len(golds):
        raise ValueError(f"got {len(completions)} completions but {len(golds)} gold answers; "
                         "repeat each gold once per sampled completion")
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; use one of {STYLES}")


def _warn_burst(res: GradeResult, max_failure_frac: float) -> None:
    n = len(res.status)
    if n and res.timeouts + res.errors > max_failure_frac * n:
        log.warning("grading failure burst: %d timeouts + %d errors in a batch of %d (> %.0f%%); "
                    "those items scored 0. Check the completions, or raise timeout_s",
                    res.timeouts, res.errors, n, 100 * max_failure_frac)


# -- one entry point ---------------------------------------------------------------------------
_SHARED: MathVerifyPool | None = None


def shared_pool(workers: int | None = None) -> MathVerifyPool:
    """Return the module's lazily created pool (recreated if `workers` changes)."""
    global _SHARED
    stale = _SHARED is None or _SHARED._pid != os.getpid() or not _SHARED._workers
    if stale or (workers is not None and _SHARED.n_workers != workers):
        _close_shared()
        _SHARED = MathVerifyPool(workers)
    return _SHARED


@atexit.register
def _close_shared() -> None:
    if _SHARED is not None and _SHARED._pid == os.getpid():
        _SHARED.close()


def grade(completions: list[str], golds: list[str], *, grader: str, style: str | None = None,
          timeout_s: float = 5.0, workers: int | None = None, max_failure_frac: float = 0.5,
          pool: MathVerifyPool | None = None) -> GradeResult:
    """Score each completion 1.0/0.0 against its gold answer with `grader`.

    style defaults to "plain" for exact_int and "boxed" for math_verify. math_verify runs in
    `pool` if given, else in the shared pool of `workers` processes.
    """
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; use one of {GRADERS}")
    if grader == "exact_int":
        style = style or "plain"
        _check_batch(completions, golds, style)
        # Pure string work that cannot hang, so it runs here without a worker.
        res = GradeResult.from_status([_exact_int_status(extract_answer(c, style), g)
                                       for c, g in zip(completions, golds)])
        _warn_burst(res, max_failure_frac)
        return res
    pool = pool or shared_pool(workers)
    return pool.grade(completions, golds, timeout_s=timeout_s, style=style or "boxed",
                      max_failure_frac=max_failure_frac)
