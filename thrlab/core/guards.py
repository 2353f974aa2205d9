"""What the trainer does when a step goes numerically wrong or runs out of memory.

- NaN/inf in a loss or gradient (or in the sampling distribution during generation): the step's
  remaining updates are dropped before any optimizer step sees them, the step is counted in
  `train/nonfinite_skipped`, and training goes on until more than `max_nonfinite_steps` steps were
  skipped; then it stops with FloatingPointError. The last checkpoint is never touched by a
  skipped step, so it stays a valid resume point.
- Out of memory in the update: with `oom_halve_micro_batch` the micro-batch is halved (never below
  one group when THR needs whole groups) and the update retried, if no optimizer step of that
  update had run yet; otherwise, or in generation, the error is re-raised with the knobs to turn.
  Never for KL-Cov / Clip-Cov: they select tokens per micro-batch (verl's choice), so halving would
  change the algorithm mid-run. Forking tokens select per mini-batch, which halving leaves alone.
"""
from __future__ import annotations


class NonFiniteError(FloatingPointError):
    """A loss or gradient of the current update is NaN or inf."""


class OutOfMemoryReport(RuntimeError):
    """An out-of-memory error re-raised with the knobs to turn (see oom_message)."""


def is_nonfinite_sampling_error(err: BaseException) -> bool:
    """True for torch.multinomial's error on a NaN/inf probability tensor."""
    msg = str(err)
    return isinstance(err, RuntimeError) and "probability tensor contains" in msg


def is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def oom_message(cfg, where: str, micro_batch_size: int) -> str:
    """An actionable message for an out-of-memory error in `where` (generation or update)."""
    n_seq = cfg.prompts_per_step * cfg.group_size
    knobs = [f"micro_batch_size (now {micro_batch_size or n_seq}; sequences per forward/backward)",
             f"max_new_tokens (now {cfg.max_new_tokens})",
             "gradient_checkpointing=true" if not cfg.gradient_checkpointing else None,
             f"group_size / prompts_per_step (now {cfg.group_size} x {cfg.prompts_per_step}; "
             f"{n_seq} sequences are generated at once)",
             f"lora_r (now {cfg.lora_r})"]
    if where == "update" and cfg.cov_mode != "off":
        knobs[0] += (f"; {cfg.cov_mode} selects its tokens per micro-batch, so thrlab does not "
                     "halve it mid-run: a smaller micro_batch_size is a new run")
    elif where == "update" and not cfg.oom_halve_micro_batch:
        knobs.insert(0, "oom_halve_micro_batch=true (halve the micro-batch and retry)")
    return (f"out of memory during {where}. Lower one of: "
            + "; ".join(k for k in knobs if k) + ". e.g. --set micro_batch_size="
            + str(max(1, (micro_batch_size or n_seq) // 2)))
