"""The old policy pi_old of the clipped surrogate (docs/method.md section 1.4), two ways.

`FrozenPass`: a no-grad pass over the rollout batch in eval mode before the update; its log-probs
are old_logp for every epoch and mini-batch, and THR is computed once from its hidden states
(fixed across epochs, as the paper's algorithm has it). Needed off-policy (several epochs or
mini-batches) and with LoRA dropout, where the update pass differs from the policy that sampled.

`UpdatePass`: on-policy without dropout the update pass *is* the old policy, so its detached
log-probs are old_logp (ratio exactly 1) and THR reads its hidden states and logits per
micro-batch of whole groups: no extra forward. tests/test_trainer.py checks the two agree.

Both answer `prepare(batch)` (the pass, timed as time/old_logp), `batch_advantages` (THR once per
batch where it is), `micro_view(...)` -> (old_logp, adv_tok) for one micro-batch, and hold the
entropy the token records and forking tokens read, the THR parts of the update and `thr_stats`,
the thr/* metrics of the batch's THR calls.
"""
from __future__ import annotations

import torch

from .model import completion_forward, reference_policy


def update_pass_is_old_policy(cfg) -> bool:
    """Whether the update pass computes the old policy exactly: on-policy (one epoch, one
    mini-batch) and without dropout noise (lora_dropout = 0)."""
    return cfg.on_policy and cfg.lora_dropout == 0


@torch.no_grad()
def frozen_pass(model, batch, cfg, micro, *, reference: bool = False,
                need_hidden: bool = False) -> dict:
    """Log-probs (B, T) (and entropy (B, T), hidden states (B, T, H)) without grad, in
    micro-batches, in eval mode: the policy that sampled the rollout (and THR's states) has no
    dropout noise, whatever lora_dropout the update trains with. reference: adapters disabled."""
    outs, was_training = [], model.training
    model.eval()
    try:
        for idx in micro.split(torch.arange(len(batch.tokens))):
            args = (model, batch.input_ids[idx], batch.attention_mask[idx], batch.prompt_len,
                    cfg.temperature)
            if reference:
                with reference_policy(model):
                    outs.append(completion_forward(*args, need_entropy=False))
            else:
                outs.append(completion_forward(*args, need_hidden=need_hidden))
    finally:
        model.train(was_training)
    return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


class FrozenPass:
    """pi_old from its own no-grad pass; THR once per rollout batch."""

    update_needs_states = False  # the update pass returns no hidden states or logits
    runs_pass = True  # prepare() runs a forward (timed as time/old_logp)

    def __init__(self, model, cfg, micro, token_advantages):
        self.model, self.cfg, self.micro = model, cfg, micro
        self.token_advantages = token_advantages

    def prepare(self, batch) -> None:
        """Run the pass over the whole batch (B rows)."""
        self.out = frozen_pass(self.model, batch, self.cfg, self.micro,
                               need_hidden=self.cfg.thr_on)

    def batch_advantages(self, batch, adv) -> None:
        """Token advantages (B, T) of the whole batch from the pass, fixed across epochs."""
        self.adv_tok, self.thr_stats, thr = self.token_advantages(
            self.out.get("hidden"), batch.tokens, batch.mask, batch.rewards, adv)
        self.thr_parts = [thr] if thr is not None else []

    def micro_view(self, batch, adv, idx, out):
        return self.out["logp"][idx], self.adv_tok[idx]

    def fork_entropy(self, rows) -> torch.Tensor:
        return self.out["entropy"][rows]

    def entropy(self) -> torch.Tensor:
        return self.out["entropy"]


class UpdatePass:
    """pi_old is the update pass itself (on-policy, no dropout); THR per micro-batch."""

    def __init__(self, model, cfg, micro, token_advantages):
        self.model, self.cfg, self.micro = model, cfg, micro
        self.token_advantages = token_advantages
        self.update_needs_states = cfg.thr_on  # THR reads the update pass's states and logits
        self.runs_pass = cfg.entropy_top_frac > 0  # only for the forking tokens' entropy

    def prepare(self, batch) -> None:
        # forking tokens take their top fraction over the whole mini-batch before any backward
        # (so micro-batching cannot change the selection): the old entropy needs its own pass
        self.fork = (frozen_pass(self.model, batch, self.cfg, self.micro)
                     if self.cfg.entropy_top_frac > 0 else None)
        self.thr_parts, self.entropy_parts, self.thr_stats, self.n_thr = [], [], {}, 0

    def batch_advantages(self, batch, adv) -> None:
        pass  # per micro-batch, from the update pass (micro_view)

    def micro_view(self, batch, adv, idx, out):
        if not self.update_needs_states:
            return out["logp"].detach(), adv[idx].unsqueeze(-1) * batch.mask[idx].float()
        # whole groups per micro-batch (config check), so THR needs no extra forward
        adv_tok, stats, thr = self.token_advantages(out["hidden"], batch.tokens[idx],
                                                    batch.mask[idx], batch.rewards[idx],
                                                    adv[idx], out["logits"])
        self.thr_stats = merge_thr_stats(self.thr_stats, stats, self.n_thr)
        self.n_thr += 1
        self.thr_parts.append(thr)
        self.entropy_parts.append(out["entropy"])
        return out["logp"].detach(), adv_tok

    def fork_entropy(self, rows) -> torch.Tensor:
        return self.fork["entropy"][rows]

    def entropy(self) -> torch.Tensor:
        return torch.cat(self.entropy_parts)


def merge_thr_stats(total: dict, new: dict, n: int) -> dict:
    """The thr/* stats of n + 1 equal micro-batches from those of n (`total`) and one more:
    times and masses add, the rest average."""
    return {**total, **{k: (total.get(k, 0.0) + v if k.startswith("time/") or "mass" in k
                            else (total.get(k, 0.0) * n + v) / (n + 1)) for k, v in new.items()}}
