"""Every random stream of a run, derived from its seed in one place.

A run's randomness comes from `cfg.seed` alone (the cold start has its own `sft_seed`), split into
named streams so that one stage never shifts another's draws: a resumed run replays each stage
exactly, and runs of different methods with one seed share their LoRA initialisation, prompts
and evaluation samples (paired comparisons). The values are the ones thrlab has always used, so
run folders of earlier versions keep matching.
"""
from __future__ import annotations

# torch's global generator at the start of a stage: seed * 1000 + offset
_STAGES = {
    "init": 1,  # loading the policy (LoRA A matrices), before-evaluation
    "train": 2,  # GRPO: rollout sampling, dropout
    "sft_control": 3,  # the equal-compute SFT control
    "eval": 11,  # every evaluation (experiment.eval_seed): common random numbers
    "predictor_batch": 21,  # predictor.predictor_batch's rollouts
    "thr_records": 22,  # predictor.thr_records' rollouts
    "probe": 31,  # the likelihood probe's samples
    "kl_probe": 32,  # the current policy's samples for probe/kl_start (the same at every probe)
}
# a torch.Generator per training step: seed * multiplier + step
_PER_STEP = {
    "mini_batches": 7919,  # mini-batch permutations and Clip-Cov's random tokens
    "random_mask": 104_729,  # the thr_random_mask control's token draws
}
_PROMPT_ORDER = 100_003  # random.Random(seed * this + pass) shuffles the prompts of each pass
# a random.Random drawing problems: seed + offset
_DRAWS = {
    "sft_control": 0,  # the SFT control's training problems
    "predictor_batch": 0,  # predictor.predictor_batch's prompts
    "thr_records": 1,  # predictor.thr_records' prompts
}


def stage_seed(stage: str, seed: int) -> int:
    """The torch seed a stage of run `seed` starts from (see _STAGES)."""
    return seed * 1000 + _STAGES[stage]


def step_seed(stream: str, seed: int, step: int) -> int:
    """The seed of a per-step generator of run `seed` (see _PER_STEP)."""
    return seed * _PER_STEP[stream] + step


def draw_seed(stream: str, seed: int) -> int:
    """The random.Random seed a stage of run `seed` draws its problems with (see _DRAWS)."""
    return seed + _DRAWS[stream]


def prompt_order_seed(seed: int, epoch: int) -> int:
    """The random.Random seed of the prompt shuffle for pass `epoch` over the training data."""
    return seed * _PROMPT_ORDER + epoch
