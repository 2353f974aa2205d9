"""Drawing the next token: tempered softmax, top-p, one categorical draw per row.

Two ways to draw from the same distribution (docs/method.md, "Sampling"):
- `multinomial_draw` is torch.multinomial's own algorithm for one sample, written out so that it
  can serve a batch whose finished rows have been dropped: one Exp(1) number per (row, vocabulary
  entry) of the whole batch, then argmax(p / q) per row. It draws exactly the random numbers
  transformers' generate() draws, so its tokens are generate()'s bit for bit.
- `inverse_cdf_draw` draws one uniform number per row and inverts the row's cumulative
  distribution (two levels, in float64): the same distribution, exact to float64 rounding,
  without B x V random numbers, which on a CPU cost more than the model's matmuls at a 50k-150k
  vocabulary (benchmarks/decode_speed.py). Its tokens are not generate()'s.
`top_p_keep` is the nucleus as transformers' TopPLogitsWarper defines it (keep a token when the
probability of the tokens strictly more likely than it is below top_p), found from a top-k that
grows until it holds the nucleus instead of a sort of the whole vocabulary.
"""
from __future__ import annotations

import torch


def multinomial_draw(probs: torch.Tensor, rows: torch.Tensor, batch: int) -> torch.Tensor:
    """torch.multinomial(P, 1)[rows, 0] for a (batch, V) matrix P whose rows `rows` are `probs`.

    probs: (b, V) probabilities of the rows still decoding; rows: (b,) their index in the full
    batch of `batch` rows. torch.multinomial draws q ~ Exp(1) of P's shape and returns
    argmax(P / q) per row (its single-sample path); the rows not in `rows` get their numbers drawn
    and unused, so the random stream is the full batch's."""
    q = torch.empty((batch, probs.shape[-1]), dtype=probs.dtype,
                    device=probs.device).exponential_(1)
    return torch.argmax(probs / q[rows], dim=-1)


def inverse_cdf_draw(probs: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """One draw per row of the categorical distribution `probs` (b, V), from one uniform number
    per row: the row's mass in blocks of `block` entries, summed in float64, picks a block, then
    the block's own cumulative sum (float64) the entry. Every entry is drawn with its probability
    to float64 rounding of the float32 values (a float32 cumulative sum over the vocabulary would
    round the smallest probabilities to 0 or to 6e-8); entries of probability 0 are never drawn.
    The sums are not normalised: probs may be a nucleus whose mass is below 1."""
    b, V = probs.shape
    k = min(block, V)
    full = V // k
    mass = probs[:, :full * k].reshape(b, full, k).sum(-1, dtype=torch.float64)  # (b, full)
    if full * k < V:
        mass = torch.cat([mass, probs[:, full * k:].sum(-1, keepdim=True, dtype=torch.float64)], 1)
    cdf = mass.cumsum(-1)  # (b, nb)
    u = torch.rand(b, 1, dtype=torch.float64, device=probs.device) * cdf[:, -1:]
    j = _first_above(cdf, u)  # (b, 1) the block
    r = (u - (cdf - mass).gather(1, j)).clamp(min=0)  # where in the block
    cols = j * k + torch.arange(k, device=probs.device)  # (b, k)
    inside = cols < V
    w = probs.gather(1, cols.clamp(max=V - 1)).double().masked_fill(~inside, 0.0).cumsum(-1)
    return (j * k + _first_above(w, r)).squeeze(1)


def _first_above(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(b, 1): the first column whose cdf exceeds u, or the last column of positive mass when
    rounding puts u at the row's total."""
    pick = torch.searchsorted(cdf, u, right=True)
    last = (cdf < cdf[:, -1:]).sum(-1, keepdim=True)
    return torch.minimum(pick, last)


def top_p_keep(probs: torch.Tensor, top_p: float, start_k: int = 64
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The nucleus of each row of probs (b, V): (values (b, k), ids (b, k)) in decreasing
    probability with the entries outside the nucleus set to 0.

    A token is kept when the total probability of the tokens before it (in decreasing order) is
    below top_p: the smallest prefix whose probability reaches top_p, the first token always
    kept, as transformers' TopPLogitsWarper keeps. k grows 16x from start_k until every row's
    top k reaches top_p; past a quarter of the vocabulary k is the vocabulary (one sort, the
    warper's cost: a random model's nucleus is most of it, a trained model's a few tokens)."""
    V = probs.shape[-1]
    k = min(start_k, V)
    while True:
        vals, ids = torch.topk(probs, k, dim=-1)  # (b, k), sorted
        csum = vals.cumsum(-1)
        if k == V or bool((csum[:, -1] >= top_p).all()):
            break
        k = 16 * k if 16 * k <= V // 4 else V  # a wide nucleus: one sort, as the warper does
    return vals.masked_fill(csum - vals >= top_p, 0.0), ids
