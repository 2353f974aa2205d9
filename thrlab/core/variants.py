"""Every named variant of the objective, written once (docs/adding-an-objective.md).

A Family is one Config field that picks a variant by name (adv_estimator, objective, cov_mode,
loss_agg, thr_mode, thr_tau_mode). Each entry maps the name a user writes to the function that
implements it, as "module:function" inside thrlab.core, and one line saying what it is (a line
starting "control:" marks a control of THR's mask, run at p = 0). Config
validation, `thrlab train --help` and docs/methods.md's table read the names from here; thrlab.core.loss
and thrlab.core.reweight look their functions up here. Functions are named rather than imported so
that the config, and every reader of run folders, loads without torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Family:
    field: str  # the Config field that chooses
    variants: dict  # name -> ("module:function" in thrlab.core, or "" for none; what it is)

    def names(self) -> tuple[str, ...]:
        return tuple(self.variants)

    def function(self, name: str):
        """The function implementing `name`, or a ValueError naming the choices."""
        if name not in self.variants or not self.variants[name][0]:
            choices = ", ".join(n for n, (impl, _) in self.variants.items() if impl)
            raise ValueError(f"unknown {self.field} {name!r}; choose {choices}")
        return _resolve(self.variants[name][0])

    def describe(self, name: str) -> str:
        return self.variants[name][1]


@cache
def _resolve(where: str):
    module, function = where.split(":")
    return getattr(importlib.import_module(f"thrlab.core.{module}"), function)


ADV_ESTIMATORS = Family("adv_estimator", {
    "grpo": ("loss:grpo_estimator", "(r - group mean) / (group std + eps); Dr. GRPO without std"),
    "passk": ("loss:passk_estimator", "analytic Pass@K-training advantage (Chen et al. 2025)"),
    "passk_mixed": ("loss:passk_mixed_estimator",
                    "passk_chi x Pass@K advantage + (1 - passk_chi) x GRPO advantage"),
})
OBJECTIVES = Family("objective", {
    "grpo": ("loss:token_ratio", "per-token ratio pi / pi_old"),
    "gspo_token": ("loss:gspo_token_ratio",
                   "GSPO-token: the sequence ratio's value with each token's own gradient"),
})
COV_MODES = Family("cov_mode", {
    "off": ("loss:no_cov", "the clipped surrogate alone"),
    "kl_cov": ("loss:kl_cov", "KL-Cov: |logp - old_logp| on the top-covariance tokens"),
    "clip_cov": ("loss:clip_cov", "Clip-Cov: detach random tokens of a covariance window"),
})
AGGREGATIONS = Family("loss_agg", {
    "token_mean": ("loss:token_mean", "sum over tokens / tokens of the mini-batch (DAPO)"),
    "seq_mean_token_mean": ("loss:seq_mean_token_mean", "mean over responses of token means"),
    "seq_mean_token_sum_norm": ("loss:seq_mean_token_sum_norm",
                                "sum over tokens / (responses x max length) (Dr. GRPO)"),
})
THR_MODES = Family("thr_mode", {
    "off": ("", "no THR: every token carries its response's advantage"),
    "thr": ("reweight:thr_reweight", "THR-GRPO: dominant tokens, weights 1 + p sign(THR)"),
    "nthr": ("reweight:nthr", "NTHR: down-weight wrong responses' tokens that help right ones"),
    "random_mask": ("reweight:random_mask", "control: THR's token count per response, at random"),
    "lowprob_mask": ("reweight:lowprob_mask",
                     "control: THR's token count, lowest sampled-token probability"),
    "entropy_mask": ("reweight:entropy_mask", "control: THR's token count, highest entropy"),
    "mass_matched": ("reweight:mass_matched",
                     "control: every token, GRPO's advantage x the mass THR's mask keeps"),
})
THR_TAU_MODES = Family("thr_tau_mode", {
    "min_mean": ("reweight:min_mean_tau", "beta x max(0, min over correct responses of mean THR)"),
    "quantile": ("reweight:quantile_tau", "a quantile of abs(THR) in the group"),
})
FAMILIES = (ADV_ESTIMATORS, OBJECTIVES, COV_MODES, AGGREGATIONS, THR_MODES, THR_TAU_MODES)
