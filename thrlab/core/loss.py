"""GRPO objective pieces as pure tensor functions (docs/method.md section 1).

1. Group advantage  A_j = (r_j - mean_G r) / (std_G r + eps), population std; 0 for all-equal groups.
2. Token ratio      rho_t = pi_theta(y_t) / pi_old(y_t)            (GRPO)
                    s_t = sg[s_i] * pi(y_t) / sg[pi(y_t)],
                    s_i = (pi(y_i) / pi_old(y_i))^(1/|y_i|)        (GSPO-token)
3. Clipped surrogate  l_t = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)
4. KL (k3)          kl_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1
5. Aggregation      token_mean: sum_{b,t} l / N_tokens (DAPO); seq_mean_token_mean: mean_b mean_t l;
                    seq_mean_token_sum_norm: mean_b sum_t l / T_max (Dr. GRPO)

Baselines (docs/method.md section 4):
6. Pass@K advantage (Chen et al. 2025), per group of n with N- wrong answers:
   R = 1 - C(N-, K) / C(n, K), s = sqrt(R (1 - R)), A+ = (1 - R) / s,
   A- = (1 - R - C(N- - 1, K - 1) / C(n - 1, K - 1)) / s; mixed = chi * A_passk + (1 - chi) * A_grpo
7. Token covariance (Cui et al. 2025)  cov_t = (A_t - mean A)(logp_t - mean logp) over valid tokens;
   KL-Cov: l_t = -rho_t A_t + kl_coef * |logp_t - old_logp_t| on the top `ratio` tokens by cov
   (no clipping, as in the paper); Clip-Cov: clipped l_t, zeroed (value and gradient) on a random
   `ratio` of the tokens with lb < cov < ub that the PPO clip has not already clipped
8. Forking tokens (Wang et al. 2025): keep only the top `frac` tokens by entropy
Selections count n_sel = max(1, floor(frac * N_valid)) tokens of the micro-batch (verl's rule).
Shapes: B sequences, T completion tokens; `mask` (B, T) bool marks real completion tokens.
Each variant (adv_estimator, objective, cov_mode, loss_agg) is one public function below, named
in thrlab.core.variants, the one list of the names a config may choose.
"""
from __future__ import annotations

import math

import torch

from .variants import ADV_ESTIMATORS, AGGREGATIONS, COV_MODES, OBJECTIVES


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-6,
                     std_norm: bool = True) -> torch.Tensor:
    """Return per-response advantages (B,) from rewards (B,) laid out group-major."""
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} "
                         f"entries, got shape {tuple(rewards.shape)}")
    grid = rewards.float().view(-1, group_size)  # (P, G)
    centred = grid - grid.mean(-1, keepdim=True)  # (P, G)
    if std_norm:
        centred = centred / (grid.std(-1, unbiased=False, keepdim=True) + eps)
    return centred.flatten()  # (B,) exactly 0 where a group's rewards are all equal


def passk_advantages(rewards: torch.Tensor, group_size: int, k: int) -> torch.Tensor:
    """Return analytic Pass@K-training advantages (B,) (eq. 6) from binary rewards (B,).

    Groups whose Pass@K is certain (no correct answer, or fewer than K wrong ones) get 0.
    K = 1 reduces to the GRPO advantage without eps.
    """
    if rewards.ndim != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} "
                         f"entries, got shape {tuple(rewards.shape)}")
    if not 1 <= k <= group_size:
        raise ValueError(f"Pass@K needs 1 <= k <= group_size; got k={k}, group_size={group_size}")
    if not bool(((rewards == 0) | (rewards == 1)).all()):
        raise ValueError("Pass@K advantages need binary rewards in {0, 1}; got "
                         f"{sorted(set(rewards.tolist()))[:5]}")
    n = group_size
    out = torch.zeros(rewards.numel(), dtype=torch.float64)
    for g, grp in enumerate(rewards.view(-1, n).tolist()):
        n_neg = n - int(sum(grp))
        R = 1.0 - math.comb(n_neg, k) / math.comb(n, k)  # expected max reward of a K-subset
        s = math.sqrt(R * (1.0 - R))
        if s == 0.0:
            continue
        a_pos = (1.0 - R) / s
        a_neg = (1.0 - R - math.comb(n_neg - 1, k - 1) / math.comb(n - 1, k - 1)) / s
        out[g * n:(g + 1) * n] = torch.tensor([a_pos if r == 1 else a_neg for r in grp],
                                              dtype=torch.float64)
    return out.to(device=rewards.device, dtype=torch.float32)


def passk_mixed_advantages(rewards: torch.Tensor, group_size: int, k: int, chi: float = 0.2,
                           eps: float = 1e-6) -> torch.Tensor:
    """Return chi * Pass@K advantage + (1 - chi) * GRPO advantage, (B,)."""
    return (chi * passk_advantages(rewards, group_size, k)
            + (1.0 - chi) * group_advantages(rewards, group_size, eps))


def selection_count(frac: float, n: int) -> int:
    """Tokens a fraction-based selection takes out of n valid ones: max(1, floor(frac * n))."""
    return 0 if n == 0 or frac <= 0 else min(n, max(1, int(frac * n)))


def token_covariance(adv_tok: torch.Tensor, logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Return (A - mean A)(logp - mean logp) per token, means over valid tokens; 0 elsewhere."""
    m = mask.bool()
    a, lp = adv_tok.detach().float(), logp.detach().float()
    cov = (a - a[m].mean()) * (lp - lp[m].mean())  # (B, T)
    return torch.where(m, cov, torch.zeros_like(cov))


def top_tokens(score: torch.Tensor, mask: torch.Tensor, frac: float) -> torch.Tensor:
    """Bool (B, T): the selection_count(frac, N) valid tokens with the largest score."""
    m = mask.bool()
    n_sel = selection_count(frac, int(m.sum()))
    keep = torch.zeros_like(m)
    if n_sel:
        idx = torch.where(m, score.float(), torch.full_like(score.float(), -math.inf)).flatten()
        keep.view(-1)[torch.topk(idx, n_sel).indices] = True
    return keep


def clip_cov_tokens(cov: torch.Tensor, mask: torch.Tensor, frac: float, lb: float, ub: float,
                    generator: torch.Generator | None = None,
                    clipped: torch.Tensor | None = None) -> torch.Tensor:
    """Bool (B, T): a random selection_count(frac, N) of the valid tokens with lb < cov < ub.

    Tokens the PPO clip already clipped (`clipped` (B, T), the clipped branch active) are not
    candidates: their gradient is already zero, so detaching them would spend the budget on
    nothing (the Clip-Cov authors' code, and verl's, set their covariance to -inf first).
    """
    m = mask.bool()
    cand = m & (cov > lb) & (cov < ub)
    if clipped is not None:
        cand = cand & ~clipped.bool()
    cand = cand.flatten().nonzero().flatten()
    n_sel = min(selection_count(frac, int(m.sum())), len(cand))
    keep = torch.zeros_like(m)
    if n_sel:
        pick = torch.randperm(len(cand), generator=generator)[:n_sel].to(cand.device)
        keep.view(-1)[cand[pick]] = True
    return keep


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


def token_mean(loss_tok, m, n_tokens, n_seqs, max_len):
    return (loss_tok * m).sum() / max(n_tokens, 1.0)  # DAPO: every token of the mini-batch alike


def seq_mean_token_mean(loss_tok, m, n_tokens, n_seqs, max_len):
    per_seq = (loss_tok * m).sum(-1) / m.sum(-1).clamp(min=1)  # (B,) each response's token mean
    return per_seq.sum() / max(n_seqs, 1.0)


def seq_mean_token_sum_norm(loss_tok, m, n_tokens, n_seqs, max_len):
    return (loss_tok * m).sum() / (max(n_seqs, 1.0) * max_len)  # Dr. GRPO: a constant divisor


def aggregate(loss_tok: torch.Tensor, mask: torch.Tensor, mode: str, *, n_tokens: float,
              n_seqs: float, max_len: int) -> torch.Tensor:
    """Reduce per-token losses (B, T) of one micro-batch to its share of the mini-batch loss.

    n_tokens / n_seqs count the whole mini-batch, so summing the micro-batch shares (gradient
    accumulation) gives exactly the mini-batch loss.
    """
    return AGGREGATIONS.function(mode)(loss_tok, mask.float(), n_tokens, n_seqs, max_len)


def token_ratio(logp, old_logp, mask):
    return ppo_ratio(logp, old_logp)


def no_cov(loss_tok, clipped, ratio, logp, old_logp, adv_tok, mask, c, generator):
    return loss_tok, clipped, None


def kl_cov(loss_tok, clipped, ratio, logp, old_logp, adv_tok, mask, c, generator):
    """KL-Cov: unclipped -rho A everywhere, |logp - old_logp| on the top-covariance tokens."""
    sel = top_tokens(token_covariance(adv_tok, logp, mask), mask, c.cov_ratio)
    loss_tok = -ratio * adv_tok + c.cov_kl_coef * sel * (logp - old_logp).abs()
    return loss_tok, torch.zeros_like(clipped), sel


def clip_cov(loss_tok, clipped, ratio, logp, old_logp, adv_tok, mask, c, generator):
    """Clip-Cov: the clipped loss, zeroed on random tokens of the covariance window."""
    sel = clip_cov_tokens(token_covariance(adv_tok, logp, mask), mask, c.cov_ratio,
                          c.cov_clip_lb, c.cov_clip_ub, generator=generator, clipped=clipped)
    return loss_tok * ~sel, clipped, sel


def policy_loss(logp, old_logp, adv_tok, mask, loss, *, ref_logp=None,
                generator=None):
    """Per-token loss (B, T) of loss.objective with loss.cov_mode and the k3 KL; (loss_tok, stats).

    logp (B, T) with grad; old_logp, ref_logp (B, T) without; adv_tok (B, T); `loss` a
    LossConfig (a Config is one). The covariance selections are over this call's valid tokens;
    stats["cov_selected"] (B, T) marks them.
    """
    ratio = OBJECTIVES.function(loss.objective)(logp, old_logp, mask)
    loss_tok, clipped = clipped_surrogate(ratio, adv_tok, loss.clip_eps_low, loss.clip_eps_high)
    loss_tok, clipped, sel = COV_MODES.function(loss.cov_mode)(
        loss_tok, clipped, ratio, logp, old_logp, adv_tok, mask, loss, generator)
    stats = {"clipped": clipped.detach(), "ratio": ratio.detach()}
    if sel is not None:
        stats["cov_selected"] = sel
    if loss.kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs ref_logp (reference log-probs)")
        kl = k3_kl(logp, ref_logp)
        loss_tok = loss_tok + loss.kl_coef * kl
        stats["kl"] = kl.detach()
    return loss_tok, stats


def grpo_estimator(rewards, group_size, c):
    return group_advantages(rewards, group_size, c.adv_eps, c.adv_std_norm)


def passk_estimator(rewards, group_size, c):
    return passk_advantages(rewards, group_size, c.passk_k)


def passk_mixed_estimator(rewards, group_size, c):
    return passk_mixed_advantages(rewards, group_size, c.passk_k, c.passk_chi, c.adv_eps)


def response_advantages(rewards: torch.Tensor, group_size: int, loss) -> torch.Tensor:
    """Per-response advantages (B,) of group-major rewards (B,) by loss.adv_estimator."""
    return ADV_ESTIMATORS.function(loss.adv_estimator)(rewards, group_size, loss)
