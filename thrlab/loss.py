"""GRPO objective pieces as pure tensor functions (METHOD.md section 1).

1. Group advantage  A_j = (r_j - mean_G r) / (std_G r + eps), population std; 0 for all-equal groups.
2. Token ratio      rho_t = pi_theta(y_t) / pi_old(y_t)            (GRPO)
                    s_t = sg[s_i] * pi(y_t) / sg[pi(y_t)],
                    s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|)        (GSPO-token)
3. Clipped surrogate  l_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)
4. KL (k3)          kl_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1
5. Aggregation      token_mean: sum_{b,t} l / N_tokens (DAPO); seq_mean_token_mean: mean_b mean_t l;
                    seq_mean_token_sum_norm: mean_b sum_t l / T_max (Dr. GRPO)
Shapes: B sequences, T completion tokens; `mask` (B, T) bool marks real completion tokens.
"""
from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6,
                     std_norm: bool = True) -> torch.Tensor:
    """Return per-response advantages (B,) from rewards (B,) laid out group-major."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} "
                         f"entries, got shape {tuple(rewards.shape)}")
    r = rewards.float().view(-1, group_size)  # (P, G)
    centred = r - r.mean(-1, keepdim=True)  # (P, G)
    if std_norm:
        centred = centred / (r.std(-1, unbiased=False, keepdim=True) + eps)
    return centred.flatten()  # (B,) exactly 0 where a group's rewards are all equal


def ppo_ratio(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token importance ratio pi/pi_old, (B, T)."""
    return torch.exp(logp - old_logp)


def gspo_token_ratio(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO-token ratio: the sequence ratio's value with each token's own gradient path, (B, T)."""
    m = mask.float()
    seq_log_ratio = ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp(min=1)  # (B,)
    # value = s_i; gradient = s_i * d logp_t (the token's own term), as in the GSPO paper.
    return torch.exp(seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach())


def clipped_surrogate(ratio: torch.Tensor, adv_tok: torch.Tensor, eps_low: float,
                      eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO loss -min(rho A, clip(rho) A) and where clipping was active, both (B, T)."""
    unclipped = ratio * adv_tok
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv_tok
    loss = -torch.minimum(unclipped, clipped)
    return loss, (clipped < unclipped)  # the clipped branch is the active (smaller) one


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) per token, (B, T); >= 0 and unbiased under pi."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def aggregate(loss_tok: torch.Tensor, mask: torch.Tensor, mode: str, *, n_tokens: float,
              n_seqs: float, max_len: int) -> torch.Tensor:
    """Reduce per-token losses (B, T) of one micro-batch to its share of the mini-batch loss.

    n_tokens / n_seqs count the whole mini-batch, so summing the micro-batch shares (gradient
    accumulation) gives exactly the mini-batch loss.
    """
    m = mask.float()
    if mode == "token_mean":
        return (loss_tok * m).sum() / max(n_tokens, 1.0)
    if mode == "seq_mean_token_mean":
        per_seq = (loss_tok * m).sum(-1) / m.sum(-1).clamp(min=1)
        return per_seq.sum() / max(n_seqs, 1.0)
    if mode == "seq_mean_token_sum_norm":
        return (loss_tok * m).sum() / (max(n_seqs, 1.0) * max_len)
    raise ValueError(f"unknown loss_agg {mode!r}; choose token_mean, seq_mean_token_mean or "
                     "seq_mean_token_sum_norm")


def policy_loss(logp, old_logp, adv_tok, mask, *, objective: str, eps_low: float,
                eps_high: float, ref_logp=None, kl_coef: float = 0.0):
    """Per-token GRPO / GSPO-token loss with optional k3 KL; returns (loss_tok, stats).

    logp (B, T) with grad; old_logp, ref_logp (B, T) without; adv_tok (B, T).
    """
    if objective == "grpo":
        ratio = ppo_ratio(logp, old_logp)
    elif objective == "gspo_token":
        ratio = gspo_token_ratio(logp, old_logp, mask)
    else:
        raise ValueError(f"unknown objective {objective!r}; choose grpo or gspo_token")
    loss_tok, clipped = clipped_surrogate(ratio, adv_tok, eps_low, eps_high)
    stats = {"clipped": clipped.detach(), "ratio": ratio.detach()}
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp (reference log-probs)")
        kl = k3_kl(logp, ref_logp)
        loss_tok = loss_tok + kl_coef * kl
        stats["kl"] = kl.detach()
    return loss_tok, stats
