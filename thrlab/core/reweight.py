"""The token advantages THR drives (docs/method.md section 3): a threshold per group, THR-GRPO's
reweighting, NTHR, and two controls that share THR's computation but not its information.

With THR_{j,k} from thrlab.core.thr, response advantages A_j and p in [-1, 1]:

4. tau = beta * max(0, min_{i in Y+} mean_k THR_{i,k})   (or a quantile of |THR|, thr_tau_mode)
5. A'_{j,k} = 1[|THR_{j,k}| > tau] * (1 + p * sign(THR_{j,k})) * A_j                  (THR-GRPO)
6. NTHR: on incorrect responses, tokens with -THR > tau get A_j * 2|0.5 - q|          (predecessor)

Each thr_mode and thr_tau_mode is one public function below, named in thrlab.core.variants;
`thr_token_advantages` is the one entry point the trainer and the TRL integration call.
Shapes: B = P*G rows group-major, T completion tokens, H hidden, V vocab.
"""
from __future__ import annotations

import torch

from .thr import CHUNK_SIZE, thr_for_batch
from .variants import THR_MODES, THR_TAU_MODES


def thr_threshold(thr, mask, rewards, beta: float = 1.0) -> float:
    """Return tau = beta * max(0, min over correct responses of their mean THR) for one group."""
    mask = mask.bool()
    correct = (rewards == 1) & mask.any(1)  # (G,) a response with no real tokens has no mean
    if not correct.any() or (rewards == rewards[0]).all():
        return 0.0
    mean = (thr * mask).sum(1) / mask.sum(1).clamp(min=1)  # (G,)
    return beta * max(0.0, float(mean[correct].min()))


def thr_quantile_threshold(thr, mask, q: float) -> float:
    """Return tau = the q-quantile of abs(THR) over the group's real tokens (keeps ~1-q of them)."""
    vals = thr[mask.bool()].abs().float()
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q={q} must be in [0, 1]")
    return float(torch.quantile(vals, q)) if vals.numel() else 0.0


def _check_adv(adv, thr, mask) -> None:
    if thr.ndim != 2 or tuple(mask.shape) != tuple(thr.shape):
        raise ValueError(f"thr and mask must both be (B, T), got {tuple(thr.shape)} and "
                         f"{tuple(mask.shape)}")
    if tuple(adv.shape) != (thr.shape[0],):
        raise ValueError(f"adv must be (B,) = ({thr.shape[0]},), one advantage per response "
                         f"(row of thr), got {tuple(adv.shape)}; pass the response advantages "
                         "(e.g. thrlab.core.loss.group_advantages), not per-token ones")


def reweight_advantages(adv, thr, mask, *, tau=0.0, p: float = 0.1,
                        dominant_only: bool = True) -> torch.Tensor:
    """Return THR-GRPO token advantages (eq. 5), (B, T) from adv (B,), thr and mask (B, T); tau
    is a float or (B, 1) per group."""
    _check_adv(adv, thr, mask)
    if not -1.0 <= p <= 1.0:
        raise ValueError(f"thr_p={p} must be in [-1, 1]: beyond it the factor 1 + p*sign(THR) "
                         "flips the sign of some advantages")
    adv_tok = (1 + p * torch.sign(thr)) * adv[:, None] * mask  # (B, T)
    if dominant_only:
        adv_tok = adv_tok * (thr.abs() > tau)  # (B, T) train on dominant tokens only
    return adv_tok


def nthr_advantages(adv, thr, mask, rewards, *, tau=0.0, group_size: int | None = None):
    """Return NTHR token advantages (eq. 6), (B, T) from adv and rewards (B,), thr and mask
    (B, T); group_size=None means one group."""
    _check_adv(adv, thr, mask)
    G = group_size or len(rewards)
    q = rewards.float().view(-1, G).mean(1).repeat_interleave(G)  # (B,) group success rate
    eta = 2 * (0.5 - q).abs()  # (B,) NTHR's damping of the penalty
    hit = (rewards == 0)[:, None] & (-thr > tau)  # (B, T) influential tokens of wrong responses
    scale = torch.where(hit, eta[:, None], torch.ones_like(thr))  # (B, T)
    return scale * adv[:, None] * mask  # (B, T)


def thr_stats(thr, mask, tau, adv, adv_tok) -> dict:
    """Return THR diagnostics as floats (thr/* keys, formulas in docs/metrics.md)."""
    m = mask.bool()
    n = max(int(m.sum()), 1)
    t = thr[m]  # (N,)
    kept = (thr.abs() > tau) & m  # (B, T)
    tau_f = float(tau.float().mean()) if torch.is_tensor(tau) else float(tau)
    return {"thr/mean": float(t.sum()) / n, "thr/abs_mean": float(t.abs().sum()) / n,
            "thr/frac_pos": float((t > 0).sum()) / n, "thr/frac_neg": float((t < 0).sum()) / n,
            "thr/frac_kept": float(kept.sum()) / n, "thr/tau": tau_f,
            "thr/adv_mass_before": float((adv.abs()[:, None] * m).sum()),
            "thr/adv_mass_after": float((adv_tok.abs() * m).sum())}


def random_mask_like(kept, mask, generator=None) -> torch.Tensor:
    """Bool (B, T): in each row, as many of the row's real tokens as `kept` keeps there, drawn
    uniformly at random: the same count (so the same advantage mass) without THR's choice."""
    m = mask.bool()
    score = torch.rand(m.shape, generator=generator).to(m.device)  # (B, T)
    return count_mask_like(kept, mask, score)


def count_mask_like(kept, mask, score) -> torch.Tensor:
    """Bool (B, T): in each row, as many of the row's real tokens as `kept` keeps there, those
    with the largest `score` (B, T): THR's count per response, another signal's choice."""
    m = mask.bool()
    k = (kept.bool() & m).sum(1, keepdim=True)  # (B, 1)
    score = score.masked_fill(~m, float("-inf"))
    rank = score.argsort(1, descending=True).argsort(1)  # (B, T) 0 = largest
    return (rank < k) & m


@torch.no_grad()
def token_signals(hidden, tokens, *, lm_head_weight=None, temperature: float = 1.0,
                  logits=None) -> dict:
    """The cheap per-token signals a mask control chooses by, at `temperature`: logp (B, T) of
    the sampled tokens and the entropy (B, T) of each position's distribution, from logits
    (B, T, V) already divided by the temperature, or from h W^T streamed in row chunks."""
    B, T = tokens.shape
    if logits is not None:
        rows = logits.float().reshape(B * T, -1)
        chunks = [rows]
    else:
        h = hidden.reshape(B * T, -1)
        chunks = [(h[s:s + CHUNK_SIZE] @ lm_head_weight.T).float() / temperature  # THR's chunk
                  for s in range(0, max(B * T, 1), CHUNK_SIZE)]
    logp, ent, y, start = [], [], tokens.reshape(-1), 0
    for z in chunks:
        logz = torch.logsumexp(z, -1)
        logp.append(z.gather(-1, y[start:start + len(z), None]).squeeze(-1) - logz)
        ent.append(logz - (torch.softmax(z, -1) * z).sum(-1))
        start += len(z)
    return {"logp": torch.cat(logp).view(B, T), "entropy": torch.cat(ent).view(B, T)}


def mass_matched_advantages(adv, mask, kept) -> torch.Tensor:
    """GRPO token advantages (B, T) on every real token, scaled by the share of advantage mass
    that `kept` keeps, sum |A| over kept tokens / sum |A| over all (one scalar for the rows)."""
    m = mask.float()
    full = adv[:, None].abs() * m  # (B, T)
    scale = (full * kept.float()).sum() / full.sum().clamp(min=1e-12)
    return adv[:, None] * m * scale


def thr_reweight(adv, thr, mask, rewards, tau, c, group_size, generator, signals):
    return reweight_advantages(adv, thr, mask, tau=tau, p=c.thr_p, dominant_only=c.thr_mask), {}


def nthr(adv, thr, mask, rewards, tau, c, group_size, generator, signals):
    return nthr_advantages(adv, thr, mask, rewards, tau=tau, group_size=group_size), {}


def _mask_control(choose):
    """A control that keeps THR's count of tokens per response, chosen by `choose(kept, mask,
    signals, generator)`, weights unchanged; reports the share of THR's kept tokens it keeps."""
    def token_advantages(adv, thr, mask, rewards, tau, c, group_size, generator, signals):
        kept = (thr.abs() > tau) & mask.bool()
        keep = choose(kept, mask, signals, generator)
        overlap = float((keep & kept).sum()) / max(float(kept.sum()), 1.0)
        return adv[:, None] * mask * keep, {"thr/control_overlap": overlap}
    return token_advantages


def mass_matched(adv, thr, mask, rewards, tau, c, group_size, generator, signals):
    return mass_matched_advantages(adv, mask, (thr.abs() > tau) & mask.bool()), {}


# The mask controls keep THR's count per response: at random; the lowest-probability sampled
# tokens (largest |d log p / d z|; within a response, where |A| is one number, also the largest
# |A| (1 - p_t)); the highest-entropy positions (forking tokens). Each thr_mode is called with
# (adv (B,), thr (B, T), mask, rewards, tau (B, 1), config, G, generator, signals: a function
# returning token_signals) and returns (token advantages (B, T), extra thr/* stats).
random_mask = _mask_control(lambda kept, mask, sig, gen: random_mask_like(kept, mask, gen))
lowprob_mask = _mask_control(lambda kept, mask, sig, gen: count_mask_like(kept, mask,
                                                                          -sig()["logp"]))
entropy_mask = _mask_control(lambda kept, mask, sig, gen: count_mask_like(kept, mask,
                                                                          sig()["entropy"]))


def min_mean_tau(thr, mask, rewards, c) -> float:
    return thr_threshold(thr, mask, rewards, c.thr_beta)


def quantile_tau(thr, mask, rewards, c) -> float:
    return thr_quantile_threshold(thr, mask, c.thr_tau_quantile)


def thr_token_advantages(c, hidden, tokens, mask, rewards, adv, lm_head_weight=None,
                         *, group_size: int, temperature: float = 1.0, logits=None,
                         generator=None):
    """Per-token advantages (B, T) of whole groups under a THRConfig; (adv_tok, thr, stats).

    The one place the trainer and the TRL integration turn (old-policy hidden states, sampled
    tokens, rewards, response advantages) into reweighted token advantages (docs/method.md
    section 3). `c` is a THRConfig (a thrlab Config is one); hidden (B, T, H); the probabilities
    come from lm_head_weight (V, H), the unembedding, streamed in chunks at `temperature`, or from
    logits (B, T, V) already divided by it (an update pass's, reused). Rows are group-major, B a
    multiple of group_size.

    Controls share THR's computation but not its information (thrlab.train.presets.METHODS): the
    mask controls keep, in every response, as many tokens as THR's dominant-token mask does,
    weights unchanged (p = 0), chosen at random (`thr_random_mask`, `generator`), as the
    lowest-probability sampled tokens (`thr_lowprob_mask`) or as the highest-entropy positions
    (`thr_entropy_mask`), and report `thr/control_overlap`, the share of THR's kept tokens they
    keep too; thr_mode="mass_matched" trains on every token with GRPO's advantages scaled by
    the mass THR's mask keeps (under AdamW, plain GRPO: docs/method.md section 4).
    """
    G = group_size
    token_advantages = THR_MODES.function(c.thr_mode)
    threshold = THR_TAU_MODES.function(c.thr_tau_mode)
    source = ({"logits": logits.detach()} if logits is not None else
              {"lm_head_weight": lm_head_weight.detach(), "temperature": temperature})
    with torch.no_grad():
        thr = thr_for_batch(hidden.detach(), tokens, mask, rewards, G, **source,
                            vocab=c.thr_vocab, length_normalize=c.thr_length_normalize,
                            advantage_weighted=c.thr_advantage_weighted,
                            adv=adv.detach() if c.thr_advantage_weighted else None)  # (B, T)
        taus = [threshold(thr[s], mask[s], rewards[s], c)
                for s in (slice(g, g + G) for g in range(0, len(thr), G))]
        tau = torch.tensor(taus, device=thr.device).repeat_interleave(G).unsqueeze(-1)  # (B, 1)
        signals = lambda: token_signals(hidden.detach(), tokens, **source)  # noqa: E731
        adv_tok, extra = token_advantages(adv, thr, mask, rewards, tau, c, G, generator,
                                          signals)  # (B, T)
        return adv_tok, thr, {**thr_stats(thr, mask, tau, adv, adv_tok), **extra}
