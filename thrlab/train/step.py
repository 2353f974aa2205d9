"""The machinery around one GRPO update that is not the algorithm: micro-batch gradient
accumulation with its out-of-memory policy, finiteness checks, phase timers, the update's
running metrics, the optimizer over the LoRA parameters and the split of a batch into
mini-batches. The trainer's step uses these; none of them knows the objective.

The policy (guards.py has the reasons): NaN/inf in a loss or gradient raises NonFiniteError before
any optimizer step sees it (the trainer skips the step); out of memory in the update halves the
micro-batch (never below `floor` rows, one group when THR needs whole groups) and retries while no
optimizer step of that update has run, else re-raises with the knobs to turn.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass

import torch

from thrlab.core.guards import NonFiniteError, OutOfMemoryReport, is_oom, oom_message

log = logging.getLogger(__name__)


def finite(value: float, what: str) -> float:
    """value, or NonFiniteError naming `what` when it is NaN or inf."""
    if not math.isfinite(value):
        raise NonFiniteError(f"{what} is {value}")
    return value


class Timers(dict):
    """Seconds per phase, {"time/<name>": s}; `with timers("generate"):` adds to one. Each phase
    is also a `thrlab/<name>` range in torch.profiler traces (benchmarks/rehearse.py reads the
    tracked memory of each phase from them)."""

    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            with torch.profiler.record_function(f"thrlab/{name}"):
                yield
        finally:
            key = f"time/{name}"
            self[key] = self.get(key, 0.0) + time.perf_counter() - t0


@dataclass
class UpdateMetrics:
    """Sums over one update's micro-batches and optimizer steps, read out as train/* metrics."""

    loss: float = 0.0  # summed mini-batch losses (one per optimizer step)
    clipped: float = 0.0  # tokens whose clipped branch was active
    kl: float = 0.0  # summed per-token k3 KL
    entropy: float = 0.0  # summed per-token entropy of the update pass
    tokens: float = 0.0  # real completion tokens seen (over epochs)
    grad_norm: float = 0.0  # summed pre-clip gradient norms
    grad_norm_clipped: float = 0.0  # summed post-clip gradient norms
    update_norm: float = 0.0  # summed norms of the optimizer steps' parameter changes
    cov_selected: float = 0.0  # tokens KL-Cov / Clip-Cov selected
    fork_selected: float = 0.0  # tokens the forking-token selection kept
    opt_steps: int = 0  # optimizer steps taken

    def add_micro(self, loss: float, mask: torch.Tensor, st: dict, entropy: torch.Tensor) -> None:
        mf = mask.float()
        self.loss += loss
        self.clipped += float((st["clipped"].float() * mf).sum())
        self.kl += float((st.get("kl", torch.zeros_like(mf)) * mf).sum())
        self.entropy += float((entropy * mf).sum())
        self.tokens += float(mf.sum())
        if "cov_selected" in st:
            self.cov_selected += float(st["cov_selected"].sum())

    def metrics(self, epochs: int) -> dict:
        n_opt, ntok = max(self.opt_steps, 1), max(self.tokens, 1.0)
        return {"train/loss": self.loss / n_opt, "train/clip_frac": self.clipped / ntok,
                "train/kl": self.kl / ntok, "train/entropy": self.entropy / ntok,
                "train/grad_norm": self.grad_norm / n_opt,
                "train/grad_norm_clipped": self.grad_norm_clipped / n_opt,
                "train/update_norm": self.update_norm / n_opt, "train/tokens": self.tokens / epochs,
                "train/opt_steps": self.opt_steps,
                "train/cov_selected_frac": self.cov_selected / ntok,
                "train/fork_selected_frac": self.fork_selected / ntok}


class MicroBatches:
    """Gradient accumulation over micro-batches of `size` rows (0 = the whole mini-batch), and
    the update retried at half the size on out of memory (see the module docstring)."""

    def __init__(self, cfg, state, floor: int):
        self.cfg, self.state, self.floor = cfg, state, floor
        # KL-Cov / Clip-Cov select their tokens per micro-batch (as verl does): a smaller
        # micro-batch is another algorithm, so it is never changed mid-run.
        self.may_halve = cfg.oom_halve_micro_batch and cfg.cov_mode == "off"

    @property
    def size(self) -> int:
        """Rows per micro-batch now (halved on OOM): the train state's, saved with checkpoints."""
        return self.state.micro_batch_size

    def split(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """rows cut into consecutive micro-batches."""
        mb = self.size or len(rows)
        return [rows[i:i + mb] for i in range(0, len(rows), mb)]

    def run(self, update, n_rows: int, zero_grad) -> dict:
        """update(metrics) with a fresh UpdateMetrics, retried on OOM while it took no
        optimizer step; returns its result."""
        while True:
            acc = UpdateMetrics()
            try:
                return update(acc)
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                mb = self.size or n_rows // self.cfg.mini_batches
                if not self.may_halve or acc.opt_steps or mb // 2 < self.floor:
                    raise OutOfMemoryReport(oom_message(self.cfg, "update", mb)) from err
                zero_grad()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.state.micro_batch_size = mb // 2 // self.floor * self.floor
                log.warning("out of memory in the update: micro_batch_size %d -> %d, retrying",
                            mb, self.size)


def make_optimizer(model, cfg):
    """AdamW over the trainable (LoRA) parameters; returns (params, optimizer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (expected LoRA adapters)")
    return params, torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                     weight_decay=cfg.weight_decay)


def mini_batch_rows(perm: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Split a permutation of the B rows into n mini-batches of sizes differing by at most one
    (the first ones larger), dropping none: dynamic sampling can return any multiple of G rows.
    Empty mini-batches (B < n) are left out: they would be optimizer steps without a gradient."""
    return [rows for rows in torch.tensor_split(perm, n) if len(rows)]
