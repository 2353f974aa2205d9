"""How far a run has moved, and how fast: what a comparison at matched distance needs.

Under AdamW a loss scale is divided out (m / sqrt(v) is scale-free), so a method's "step size"
cannot be read from its loss or its gradient norm: it is read from the parameters. Per GRPO step
the trainer logs (docs/method.md, "Mechanism metrics"):

    train/grad_norm          mean over the step's optimizer steps of ||g||, before clipping
    train/grad_norm_clipped  the same after clipping: min(||g||, max_grad_norm) up to rounding
    train/update_norm        mean over the optimizer steps of ||theta_{k+1} - theta_k||, the step
                             AdamW took (weight decay included)
    train/distance           ||theta - theta_0|| after the step: theta_0 the adapter the run
                             started from (the adapter the trainer was built with; checkpoints
                             keep it, so a resumed run measures from the same tensor)

over the trainable (LoRA) parameters, as one flat vector. And every probe_every steps
(probes.likelihood_probe) `probe/kl_start`: the KL from the start policy to the current one,

    KL(pi || pi_0) = E_{y ~ pi} [ (1/|y|) sum_t sum_v pi(v | y_<t)
                                           log(pi(v | y_<t) / pi_0(v | y_<t)) ]

exact over the vocabulary at each position of completions sampled from the current policy on
the fixed probe prompts (seeded: the same random numbers at every probe), at the run's
temperature; pi_0 is the model with its adapters disabled, which is the start policy because a
fresh LoRA adapter adds exactly 0 (its B matrices start at 0). It needs no KL term in the loss.
"""
from __future__ import annotations

import torch

from thrlab.core.seeds import stage_seed
from thrlab.core.unembed import unembed
from thrlab.tasks.benchmarks import format_prompt

from .model import completion_states, lm_parts
from .rollout import generate


def _flat_norm(tensors) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.float())
                                                       for t in tensors])))


class ParamDrift:
    """The start adapter and the one before the last optimizer step of the trainable parameters
    `named` ({name: parameter}); checkpoints keep the start (start_state / load_start_state)."""

    def __init__(self, named: dict[str, torch.Tensor]):
        self.names, self.params = list(named), list(named.values())
        self.start = [p.detach().clone() for p in self.params]
        self._before: list[torch.Tensor] | None = None

    def start_state(self) -> dict[str, torch.Tensor]:
        return {n: s.cpu() for n, s in zip(self.names, self.start)}

    def load_start_state(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.names):
            raise ValueError("the checkpoint's start adapter does not match the model's adapters")
        self.start = [state[n].to(p.device, p.dtype) for n, p in zip(self.names, self.params)]

    def before_step(self) -> None:
        self._before = [p.detach().clone() for p in self.params]

    def update_norm(self) -> float:
        """||theta - theta_before|| of the optimizer step since before_step()."""
        return _flat_norm([p.detach() - b for p, b in zip(self.params, self._before)])

    def distance(self) -> float:
        """||theta - theta_0||."""
        return _flat_norm([p.detach() - s for p, s in zip(self.params, self.start)])


@torch.no_grad()
def kl_from_start(model, batch, temperature: float) -> float:
    """Mean per-token KL(pi || pi_0) over the completions of `batch` (a Rollout sampled from
    the current policy): pi the peft model as it is, pi_0 the same model with its adapters
    disabled (the start policy). Each response weighs 1/|y| of its tokens, as in probe/loglik."""

    def log_probs():
        backbone, head = lm_parts(model)
        h = completion_states(backbone, batch.input_ids, batch.attention_mask, batch.prompt_len)
        return torch.log_softmax(unembed(head, h).float() / temperature, dim=-1)  # (B, T, V)

    cur = log_probs()
    with model.disable_adapter():
        start = log_probs()
    kl = (cur.exp() * (cur - start)).sum(-1)  # (B, T)
    m = batch.mask.float()
    return float(((kl * m).sum(1) / m.sum(1).clamp(min=1)).mean())


def kl_probe(model, tok, cfg, problems) -> float:
    """probe/kl_start: kl_from_start on G completions per problem sampled from the current
    policy at the run's temperature, top-p and length, with the kl_probe seed (the same random
    numbers at every probe), under torch.random.fork_rng (the caller's stream is untouched)."""

    with torch.random.fork_rng():
        torch.manual_seed(stage_seed("kl_probe", cfg.seed))
        sampled = generate(model, tok, [format_prompt(p.question, cfg.template, tok)
                                        for p in problems],
                           n=cfg.group_size, do_sample=True, temperature=cfg.temperature,
                           top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                           sampler=cfg.sampler)
        return kl_from_start(model, sampled, cfg.temperature)
