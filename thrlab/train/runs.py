"""Run folders: self-describing, atomic, resumable. No torch import (figures re-plot anywhere).

Layout of `runs/<run_id>/`:
  config.json        resolved Config
  env.json           package versions, git sha, device, thread count
  metrics.jsonl      one JSON object per training step (namespaced keys, docs/metrics.md)
  eval_<phase>.json  evaluation results (per set and averaged)
  checkpoint/        LoRA adapter + optimizer + RNG state of the latest saved step
  adapter/           final LoRA adapter (never the base model)
  summary.json       headline numbers
  COMPLETE           written last: a folder without it is unfinished and will be resumed
  .lock              flock'ed by the process running in the folder (holds its pid)
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from thrlab.core.errors import RunFolderError

from .faults import armed, failpoint

# The phases of a training step as metrics.jsonl logs them (time/<phase>, wall seconds). They are
# disjoint, so time/step minus their sum is everything else (logging, checkpoints).
STEP_PHASES = ("generate", "reward", "old_logp", "ref_logp", "thr", "update")

MARKER = "COMPLETE"
LOCK = ".lock"


def cache_root() -> Path:
    """Folder for machine-wide caches ($THRLAB_CACHE, else ~/.cache/thrlab): the tiny model's
    cold start, converted packaged models, cached start evaluations."""
    return Path(os.environ.get("THRLAB_CACHE", Path.home() / ".cache" / "thrlab"))


def staging_folder(out: Path) -> Path:
    """A private folder beside `out` to build it in (publish_folder moves it into place)."""
    return out.with_name(out.name + f".tmp{os.getpid()}")


def publish_folder(tmp: Path, out: Path) -> Path:
    """Mark the built folder `tmp` COMPLETE and move it to `out` atomically; a concurrent builder
    that finished first wins (this one's copy is dropped). Returns out."""
    import shutil

    (tmp / "COMPLETE").write_text("ok\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text so a reader never sees a partial file (write to a temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n")


def read_json(path: str | Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


class RunDir:
    """One run's folder. Cheap to construct; creates nothing until written to."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def complete(self) -> bool:
        return (self.path / MARKER).exists()

    def mark_complete(self) -> None:
        atomic_write_text(self.path / MARKER, "ok\n")

    @contextlib.contextmanager
    def lock(self):
        """Hold the folder exclusively while inside: a second process refuses at once, naming
        the holder's pid, before it writes anything.

        fcntl.flock on `.lock`: the kernel releases it when the holder exits or is killed, so a
        lock file left by a dead process never blocks the next run. POSIX only; local disks
        (flock across NFS clients depends on the server).
        """
        import fcntl

        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunFolderError(f"cannot use {self.path} as a run folder ({err.strerror}); "
                                 "pass a writable folder as --run-dir") from err
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                raise RunFolderError(f"another thrlab process (pid {holder}) is running in "
                                     f"{self.path}; wait for it or use another --run-dir") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            yield self
        finally:
            os.close(fd)  # releases the lock; the file stays (unlinking it races a new locker)

    def append_metrics(self, row: dict) -> None:
        """Append one step's metrics (a line is written whole or, if killed, dropped on read)."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, sort_keys=True, default=_jsonable) + "\n"
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            if armed("metrics"):  # a torn line: half written when the failpoint kills
                f.write(line[:len(line) // 2])
                f.flush()
                failpoint("metrics")
                line = line[len(line) // 2:]
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def metrics(self, upto_step: int | None = None) -> list[dict]:
        """Read metrics.jsonl, dropping a torn last line and rows past `upto_step`."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        rows = []
        for line in p.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn write from a killed process
        if upto_step is not None:
            rows = [r for r in rows if r.get("step", 0) <= upto_step]
        return rows

    def truncate_metrics(self, upto_step: int) -> None:
        """Keep only rows up to a checkpointed step, so a resumed run does not log steps twice."""
        rows = self.metrics(upto_step)
        atomic_write_text(self.path / "metrics.jsonl",
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def environment_info() -> dict:
    """Package versions, git revision, platform and machine (CPU model, whether it has bf16
    instructions, torch threads, GPU), for env.json and every benchmark's JSON."""
    from importlib import metadata

    pkgs = {}
    for name in ("thrlab", "torch", "transformers", "peft", "bitsandbytes", "accelerate",
                 "math-verify", "datasets", "papermill", "trl", "numpy"):
        try:
            pkgs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pkgs[name] = None
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("model name")), platform.processor())
        bf16 = "avx512_bf16" in info
    except OSError:
        cpu, bf16 = platform.processor(), None
    torch = sys.modules.get("torch")  # reported when the caller uses it; never imported here
    cuda = torch is not None and torch.cuda.is_available()
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "packages": pkgs, "git_sha": git_sha(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "avx512_bf16": bf16, "torch_threads": torch.get_num_threads() if torch else None,
            "gpu": torch.cuda.get_device_name() if cuda else None}


def git_sha() -> str | None:
    """The repository's HEAD sha (with -dirty), or None outside a git checkout. Changes under
    paper_figures/ do not count: `thrlab.paper.reproduce` writes them while it runs."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)paper_figures"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (sha + ("-dirty" if dirty else "")) or None
