"""THR as a predictor of learning, and lazy likelihood displacement (LLD), measured.

For one rollout batch (rows group-major, G per group) with GRPO advantages A_j:

1. C_g = sum_{i in P_g} (1/|y_i|) sum_k log pi(y_{i,k})     correct responses' log-lik. in group g
2. Train on response j alone: one plain SGD step of size eta on l_j = -A_j sum_k log pi(y_{j,k}).
   THR predicts  dC_g ~= (eta / kappa^2) |A_j| sum_k THR_{j,k}          (docs/method.md section 6)
   which is exact to first order for a step on the unembedding W with hidden states held fixed:
3. exact: logits' = logits + (eta A_j / kappa^2) (h_a . H_j^T) G_j for every anchor token a, where
   H_j (T_j, H) and G_j = onehot(y_j) - pi_j (T_j, V) are response j's states and gradients.
4. measured: dC_g after a real SGD step of all LoRA parameters of the model on l_j (then undone).
5. LLD: mean over a fixed probe set of correct responses of (1/|y|) log pi(y), along training
   (probe_set / probe_loglik; probes.likelihood_probe logs it inside a run, probe_every).
Effects are reported per unit step (divided by eta), so 2 and 3 share units and lie on y = x.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from thrlab.core.loss import group_advantages
from thrlab.core.seeds import draw_seed, stage_seed
from thrlab.core.thr import thr_for_batch
from thrlab.train.config import Config
from thrlab.train.experiment import load_run_policy, make_grade_fn, train_problems
from thrlab.train.model import completion_forward, lm_parts
from thrlab.train.probes import loglik_rows, sample_groups
from thrlab.train.records import token_records

from .anatomy import top_k_overlap


# -- pure tensor functions -----------------------------------------------------------------------
def correct_loglik(logp, mask, rewards, group_size: int) -> torch.Tensor:
    """C_g (eq. 1) per group, (P,); logp and mask (B, T), rewards (B,) 0/1."""
    m = mask.float()
    mean = (logp * m).sum(1) / m.sum(1).clamp(min=1)  # (B,)
    return (mean * (rewards == 1)).view(-1, group_size).sum(1)  # (P,)


def predicted_effects(thr, mask, adv, temperature: float = 1.0) -> torch.Tensor:
    """THR's first-order dC_g per unit step of training on each response alone (eq. 2), (B,)."""
    return adv.abs() * (thr * mask).sum(1) / temperature ** 2


def unembedding_effects(hidden, tokens, mask, rewards, adv, lm_head_weight, *, eta: float,
                        temperature: float, group_size: int) -> torch.Tensor:
    """Exact dC_g / eta of an SGD step on W alone, hidden states fixed (eq. 3), (B,).

    hidden (B, T, H), tokens/mask (B, T), lm_head_weight (V, H). Memory O(anchor tokens x V).
    """
    G = group_size
    h = hidden.double()
    W = lm_head_weight.double()
    out = torch.zeros(len(tokens), dtype=torch.float64)
    for s in range(0, len(tokens), G):
        rows = torch.arange(s, s + G)
        anchors = rows[rewards[rows] == 1]
        if len(anchors) == 0 or len(anchors) == G:
            continue
        am = mask[anchors].bool()  # (n_a, T)
        ha = h[anchors][am]  # (N_a, H)
        ya = tokens[anchors][am]  # (N_a,)
        wa = (1.0 / am.sum(1).double()).repeat_interleave(am.sum(1))  # (N_a,) 1/|y_i|
        base = ha @ W.T / temperature  # (N_a, V)

        def c_of(logits):
            return float((wa * torch.log_softmax(logits, -1).gather(1, ya[:, None])[:, 0]).sum())

        c0 = c_of(base)
        for j in rows.tolist():
            if adv[j] == 0:
                continue
            mj = mask[j].bool()
            Hj, yj = h[j][mj], tokens[j][mj]  # (T_j, H), (T_j,)
            Gj = -torch.softmax(Hj @ W.T / temperature, -1)  # (T_j, V)
            Gj[torch.arange(len(yj)), yj] += 1
            delta = (eta * float(adv[j]) / temperature ** 2) * (ha @ Hj.T) @ Gj  # (N_a, V)
            out[j] = (c_of(base + delta) - c0) / eta
    return out.float()


# -- rank statistics (numpy) ---------------------------------------------------------------------
def spearman(x, y) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    import pandas as pd

    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def bottom_k_overlap(pred, meas, k: int) -> float:
    """Fraction of the k most negative `meas` entries that are among the k most negative `pred`
    (the responses that push correct responses down most). Random ranking expects k / n."""
    return top_k_overlap(-np.asarray(pred, float), -np.asarray(meas, float), k)


# -- measurements on a model ---------------------------------------------------------------------
def lora_step_effects(model, batch, adv, *, eta: float, temperature: float,
                      group_size: int) -> torch.Tensor:
    """Measured dC_g / eta of one SGD step of the trainable (LoRA) parameters on each
    response's loss alone (eq. 4), (B,); the parameters are restored after each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    saved = [p.detach().clone() for p in params]
    G = group_size
    out = torch.zeros(len(batch.tokens))
    for s in range(0, len(batch.tokens), G):
        rows = torch.arange(s, s + G)
        anchors = rows[batch.rewards[rows] == 1]
        if len(anchors) == 0 or len(anchors) == G:
            continue
        with torch.no_grad():
            c0 = float(loglik_rows(model, batch, anchors, temperature).sum())
        for j in rows.tolist():
            if adv[j] == 0:
                continue
            model.zero_grad(set_to_none=True)
            o = completion_forward(model, batch.input_ids[j:j + 1], batch.attention_mask[j:j + 1],
                                   batch.prompt_len, temperature, need_entropy=False)
            (-float(adv[j]) * (o["logp"] * batch.mask[j:j + 1]).sum()).backward()
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p -= eta * p.grad
                c1 = float(loglik_rows(model, batch, anchors, temperature).sum())
                for p, v in zip(params, saved):
                    p.copy_(v)
            out[j] = (c1 - c0) / eta
    model.zero_grad(set_to_none=True)
    return out


def _policy(cfg: Config, adapter=None):
    torch.manual_seed(stage_seed("init", cfg.seed))  # run_experiment's: the same LoRA init
    model, tok = load_run_policy(cfg, adapter, progress=False)
    model.train()
    return model, tok


def predictor_batch(cfg: Config, *, n_prompts: int, eta_unembed: float, eta_lora: float,
                    adapter: str | Path | None = None) -> dict:
    """Sample one batch of n_prompts x G from the policy (cold start + fresh LoRA, or a run's
    adapter) and return per-response lists: group, reward, adv, length, predicted (eq. 2),
    unembedding (eq. 3) and lora (eq. 4) effects per unit step, for responses with A != 0."""
    import random


    model, tok = _policy(cfg, adapter)
    problems = random.Random(draw_seed("predictor_batch", cfg.seed)).sample(train_problems(cfg),
                                                                        n_prompts)
    torch.manual_seed(stage_seed("predictor_batch", cfg.seed))
    batch = sample_groups(model, tok, cfg, problems, make_grade_fn(cfg))
    adv = group_advantages(batch.rewards, cfg.group_size, cfg.adv_eps)
    with torch.no_grad():
        o = completion_forward(model, batch.input_ids, batch.attention_mask, batch.prompt_len,
                               cfg.temperature, need_hidden=True, need_entropy=False)
        W = lm_parts(model)[1].weight  # (V, H)
        thr = thr_for_batch(o["hidden"], batch.tokens, batch.mask, batch.rewards, cfg.group_size,
                            lm_head_weight=W, temperature=cfg.temperature)  # (B, T)
        exact = unembedding_effects(o["hidden"], batch.tokens, batch.mask, batch.rewards, adv, W,
                                    eta=eta_unembed, temperature=cfg.temperature,
                                    group_size=cfg.group_size)
    pred = predicted_effects(thr, batch.mask, adv, cfg.temperature)
    lora = lora_step_effects(model, batch, adv, eta=eta_lora, temperature=cfg.temperature,
                             group_size=cfg.group_size)
    keep = (adv != 0).nonzero().flatten().tolist()
    cols = {"group": torch.arange(len(adv)) // cfg.group_size, "reward": batch.rewards, "adv": adv,
            "length": batch.lengths, "predicted": pred, "unembedding": exact, "lora": lora}
    return {k: [float(v[i]) for i in keep] for k, v in cols.items()}


def thr_records(cfg: Config, *, n_prompts: int, adapter: str | Path | None = None) -> dict:
    """Sample n_prompts x G from the policy (a run's adapter, or the fresh LoRA) and return its
    per-token THR, entropy and text in thrlab.paper.anatomy's record format (all rows)."""
    import random


    model, tok = _policy(cfg, adapter)
    problems = random.Random(draw_seed("thr_records", cfg.seed)).sample(train_problems(cfg),
                                                                    n_prompts)
    torch.manual_seed(stage_seed("thr_records", cfg.seed))
    batch = sample_groups(model, tok, cfg, problems, make_grade_fn(cfg))
    with torch.no_grad():
        o = completion_forward(model, batch.input_ids, batch.attention_mask, batch.prompt_len,
                               cfg.temperature, need_hidden=True)
        thr = thr_for_batch(o["hidden"], batch.tokens, batch.mask, batch.rewards, cfg.group_size,
                            lm_head_weight=lm_parts(model)[1].weight,
                            temperature=cfg.temperature)  # (B, T)
    adv = group_advantages(batch.rewards, cfg.group_size, cfg.adv_eps)
    return token_records(tok, batch.tokens, batch.mask, thr, o["entropy"], batch.rewards, adv,
                         cfg.group_size, len(batch.tokens), cfg.thr_save_tokens)
