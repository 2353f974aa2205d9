"""Token Hidden Reward (THR), per token of a group (docs/method.md section 2); the advantages it
drives (threshold, reweighting, NTHR, controls) are thrlab.core.reweight (section 3).

For one group, token k of response j has hidden state h_{j,k} (post-final-norm, the vector the
unembedding W multiplies), next-token distribution pi_{j,k} and g_{j,k} = e_{y_{j,k}} - pi_{j,k}.
Y+ = the anchors, the correct responses (reward 1), w_i = 1/|y_i| (length_normalize) and c_j = 2 r_j - 1 (or the
advantage A_j the run trains with, when advantage_weighted):

1. THR_{j,k'} = c_j * sum_{i in Y+} w_i sum_k <g_{i,k}, g_{j,k'}> <h_{i,k}, h_{j,k'}>      (pairwise)
2. M = sum_{i in Y+} w_i sum_k g_{i,k} h_{i,k}^T  (V x H),  THR_{j,k'} = c_j * g_{j,k'}^T M h_{j,k'}
                                                                                       (factorised)
3. g.g' = [y == y'] - pi'[y] - pi[y'] + pi.pi'    (gram: eq. 1 evaluated against the N_c anchors)

Probabilities come from given logits or are streamed from h @ W^T in chunks of `chunk_size` rows;
no (tokens x V) tensor larger than one chunk is held. Accumulation is fp32 (fp64 inputs stay fp64).
Shapes: G responses of one group (B = P*G rows group-major in the batch helpers), T completion
tokens, H hidden, V vocab, N real tokens of the group, N_c of them in correct responses.
"""
from __future__ import annotations

import math

import torch

from .guards import NonFiniteError
from .loss import group_advantages

ROUTES = ("auto", "factorised", "gram")  # how token_hidden_reward computes THR (section 2)
VOCABS = ("full", "group")
CHUNK_SIZE = 1024  # rows of (rows x V) probabilities made at a time (thrlab.train.memory reads it)


class NonFiniteInput(NonFiniteError, ValueError):
    """NaN/inf in the hidden states or probabilities of real tokens (the trainer skips the step)."""


def _check_group(hidden, tokens, mask, rewards, logits, lm_head_weight, temperature, vocab,
                 route, chunk_size) -> None:
    if (logits is None) == (lm_head_weight is None):
        raise ValueError("pass exactly one of logits=(G, T, V) or lm_head_weight=(V, H); got "
                         f"{'both' if logits is not None else 'neither'}")
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be (G, T, H), got shape {tuple(hidden.shape)}")
    G, T, H = hidden.shape
    for name, x in (("tokens", tokens), ("mask", mask)):
        if tuple(x.shape) != (G, T):
            raise ValueError(f"{name} must be (G, T) = {(G, T)} like hidden, got {tuple(x.shape)}")
    if tuple(rewards.shape) != (G,):
        raise ValueError(f"rewards must be (G,) = ({G},) for one group, got "
                         f"{tuple(rewards.shape)}; use thr_for_batch for several groups")
    if not ((rewards == 0) | (rewards == 1)).all():
        raise ValueError(f"rewards must be binary 0/1, got {rewards.tolist()}; THR's anchors are "
                         "the correct responses, so threshold graded rewards first")
    if logits is not None:
        if logits.ndim != 3 or tuple(logits.shape[:2]) != (G, T):
            raise ValueError(f"logits must be (G, T, V) with (G, T) = {(G, T)}, "
                             f"got {tuple(logits.shape)}")
        if temperature != 1.0:
            raise ValueError("logits already carry their temperature; pass temperature only with "
                             "lm_head_weight")
    elif lm_head_weight.ndim != 2 or lm_head_weight.shape[1] != H:
        raise ValueError(f"hidden (G, T, H) = {tuple(hidden.shape)} and lm_head_weight (V, H) = "
                         f"{tuple(lm_head_weight.shape)} disagree on H: lm_head_weight must be "
                         "(V, H), the unembedding that multiplies hidden's last dimension (W, not "
                         "W.T), and hidden the post-final-norm states it multiplies")
    if vocab not in VOCABS or route not in ROUTES:
        raise ValueError(f"vocab={vocab!r}, route={route!r}; choose vocab from {VOCABS} and "
                         f"route from {ROUTES}")
    if chunk_size < 1 or temperature <= 0:
        raise ValueError(f"chunk_size={chunk_size} and temperature={temperature} must be positive")


def route_flops(n: int, n_c: int, v: int, h: int, streamed: bool, chunk_size: int) -> dict:
    """Estimate the multiply-adds of the factorised and gram routes for one group."""
    row = v * h if streamed else 0  # one probability row recomputed from hidden costs V*H
    k = math.ceil(n_c / chunk_size)  # anchor chunks; the last one's rows are reused, not remade
    reused = n_c - (k - 1) * chunk_size if n_c else 0
    # factorised: build M from the anchors, then g^T (M h) for every token
    return {"factorised": (n_c + n) * v * h + (n_c + n - reused) * row,
            # every token once per anchor chunk (anchors of the chunk reused), then N x N_c pairs
            "gram": k * n * row + n * n_c * (v + h)}


def _probs_reusing(probs, rows, where, held, offset: int):
    """Probability rows (n, V) of tokens `rows`, copying the ones held (anchors held[i] = token
    anchors[offset + i]) instead of recomputing them; where (N,) = anchor index of each token or
    -1. Each row equals its recomputation up to the GEMM's row blocking (bit-equal on CPU)."""
    k = where[rows] - offset  # (n,) position in `held`, if there
    inside = (k >= 0) & (k < len(held))
    if not bool(inside.any()):
        return probs(rows)
    if bool(inside.all()):
        k0 = int(k[0])
        if int(k[-1]) - k0 == len(k) - 1:  # a run of consecutive held rows: a view, no copy
            return held[k0:k0 + len(k)]
        return held[k]
    out = held.new_empty(len(rows), held.shape[1])  # (n, V)
    out[inside] = held[k[inside]]
    out[~inside] = probs(rows[~inside])
    return out


def _factorised(h, y, w, anchors, where, probs, n_vocab, chunk_size):
    """Return g^T M h per real token, building M from the anchors by scatter-add and chunks."""
    wh = w[anchors, None] * h[anchors]  # (N_c, H)
    M = h.new_zeros(n_vocab, h.shape[1])  # (V, H)
    M.index_add_(0, y[anchors], wh)  # sum w e_y h^T without materialising one-hot rows
    held, offset = h.new_empty(0, n_vocab), 0
    for s in range(0, len(anchors), chunk_size):
        held, offset = probs(anchors[s:s + chunk_size]), s  # (n_a, V), the last chunk is kept
        M -= held.T @ wh[s:s + chunk_size]  # (V, H)
    score = h.new_empty(len(y))  # (N,)
    for s in range(0, len(y), chunk_size):
        rows = torch.arange(s, min(s + chunk_size, len(y)), device=h.device)
        Mh = h[rows] @ M.T  # (n, V)
        pi = _probs_reusing(probs, rows, where, held, offset)  # (n, V)
        # g^T (M h) = (M h)[y] - pi . (M h)
        score[rows] = Mh.gather(1, y[rows, None]).squeeze(1) - (pi * Mh).sum(1)
    return score


def _gram(h, y, w, anchors, where, probs, chunk_size):
    """Return sum over anchors of w (g.g')(h.h') per real token, chunking anchors and tokens.

    Anchors are tokens too: within an anchor chunk their probability rows are made once and
    reused for the token rows they are, so with N_c <= chunk_size every row is made once.
    """
    score = h.new_zeros(len(y))  # (N,)
    for a0 in range(0, len(anchors), chunk_size):
        a = anchors[a0:a0 + chunk_size]  # (n_a,)
        pi_a = probs(a)  # (n_a, V)
        pi_a_at_y = pi_a[:, y]  # (n_a, N): pi_{i,k}[y_{j,k'}]
        for s in range(0, len(y), chunk_size):
            rows = torch.arange(s, min(s + chunk_size, len(y)), device=h.device)
            pi_j = _probs_reusing(probs, rows, where, pi_a, a0)  # (n, V)
            gg = ((y[rows, None] == y[None, a]).to(h.dtype) - pi_j[:, y[a]]
                  - pi_a_at_y[:, rows].T + pi_j @ pi_a.T)  # (n, n_a)
            hh = h[rows] @ h[a].T  # (n, n_a)
            score[rows] += (gg * hh) @ w[a]  # (n,)
    return score


def token_hidden_reward(hidden, tokens, mask, rewards, *, logits=None, lm_head_weight=None,
                        temperature=1.0, length_normalize=True, advantage_weighted=False,
                        adv=None, vocab="full", route="auto",
                        chunk_size=CHUNK_SIZE) -> torch.Tensor:
    """Score every completion token of one group by its token hidden reward; (G, T) float32.

    hidden (G, T, H) post-final-norm states; tokens (G, T); mask (G, T) real tokens; rewards (G,)
    0/1. Probabilities come from logits (G, T, V) (temperature applied) or are streamed from
    lm_head_weight (V, H) as softmax(h W^T / temperature). vocab="group" restricts e_y and pi (still
    the full-vocab softmax) to the token ids occurring in the group: the NTHR paper's
    approximation; measured against "full" at the Qwen2.5-1.5B shape (benchmarks/thr_speed.py,
    synthetic states): relative L2 error 4e-3, Spearman 0.85, sign flips only among tokens below
    tau (none above it, the mask unchanged). advantage_weighted=True weights response j by its
    advantage A_j instead of 2 r_j - 1: `adv` (G,), the advantages the run trains with (any
    estimator); without it, GRPO's std-normalised advantages of `rewards`.
    route="auto" takes the one with fewer estimated multiply-adds
    (route_flops); with given logits and V >> H that is gram roughly when N_c < H.
    0 on padding and for groups whose rewards are all equal.

    Several groups (B = P*G rows, group-major): thr_for_batch(hidden, tokens, mask, rewards,
    group_size, ...) applies this function to each.

    Alignment: hidden[j, k] is the state at the position that predicts tokens[j, k], one position
    before it, so that lm_head(hidden[j, k]) are the logits of tokens[j, k]. For a Hugging Face
    causal LM run on prompt + completion with `prompt_len` prompt columns and
    `tokens = input_ids[:, prompt_len:]`, that is `out.hidden_states[-1][:, prompt_len - 1:-1]`
    (or the backbone's `last_hidden_state[:, prompt_len - 1:-1]`) and
    `out.logits[:, prompt_len - 1:-1]`. States shifted by one have the same shape and give a
    wrong THR silently. NaN/inf in hidden (or in the probabilities) of real tokens raise
    NonFiniteInput, a ValueError.

    Example, one group of G=4 responses of T=3 tokens, H=8, V=11:

    >>> import torch
    >>> from thrlab.core.thr import token_hidden_reward
    >>> g = torch.Generator().manual_seed(0)
    >>> hidden, W = torch.randn(4, 3, 8, generator=g), torch.randn(11, 8, generator=g)
    >>> tokens = torch.randint(11, (4, 3), generator=g)
    >>> mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    >>> rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    >>> thr = token_hidden_reward(hidden, tokens, mask, rewards, lm_head_weight=W)
    >>> thr.shape, thr.dtype, bool((thr[mask == 0] == 0).all())
    (torch.Size([4, 3]), torch.float32, True)
    >>> same = token_hidden_reward(hidden, tokens, mask, rewards, logits=hidden @ W.T)
    >>> torch.allclose(same, thr, rtol=1e-4, atol=1e-4)
    True
    """
    _check_group(hidden, tokens, mask, rewards, logits, lm_head_weight, temperature, vocab,
                 route, chunk_size)
    G, T, H = hidden.shape
    mask = mask.bool()
    out = torch.zeros(G, T, dtype=torch.float32, device=hidden.device)  # (G, T)
    r = rewards.to(torch.float32)  # (G,)
    if (r == r[0]).all() or not mask.any():
        return out  # no anchors or nothing to push away from them: THR is not defined
    cdt = torch.promote_types(hidden.dtype, torch.float32)  # fp32 accumulation for bf16 inputs
    n_vocab = logits.shape[-1] if logits is not None else lm_head_weight.shape[0]
    flat, resp, h, y = _real_tokens(hidden, tokens, mask, n_vocab, cdt)  # (N,) (N,) (N, H) (N,)
    w_resp, c = _response_weights(r, mask, adv, length_normalize, advantage_weighted, cdt)
    w = w_resp[resp]  # (N,) anchor weight, 0 outside the anchors
    cols = None
    if vocab == "group":
        cols = torch.unique(y)  # (V_g,) sorted ids of the group's real tokens
        y = torch.searchsorted(cols, y)  # (N,) positions of y among cols
        n_vocab = len(cols)
    probs = _probabilities(h, flat, logits, lm_head_weight, temperature, cols, cdt)
    anchors = (w > 0).nonzero().squeeze(1)  # (N_c,) real tokens of correct responses
    where = torch.full((len(y),), -1, dtype=torch.long, device=h.device)  # (N,) anchor index
    where[anchors] = torch.arange(len(anchors), device=h.device)  # or -1
    if route == "auto":
        cost = route_flops(len(y), len(anchors), n_vocab, H, logits is None, chunk_size)
        route = min(cost, key=cost.get)
    if route == "factorised":
        score = _factorised(h, y, w, anchors, where, probs, n_vocab, chunk_size)  # (N,)
    else:
        score = _gram(h, y, w, anchors, where, probs, chunk_size)  # (N,)
    if not bool(torch.isfinite(score).all()):
        raise NonFiniteInput("THR came out NaN/inf although hidden is finite: the logits (or "
                             "hidden @ lm_head_weight.T) hold NaN/inf on real tokens")
    out.view(-1)[flat] = (c[resp] * score).float()
    return out


def _real_tokens(hidden, tokens, mask, n_vocab: int, cdt):
    """The group's real tokens in the (G*T) layout: flat (N,) positions, resp (N,) responses,
    h (N, H) states in cdt, y (N,) ids; raises on NaN/inf states or ids outside the vocab."""
    G, T, H = hidden.shape
    flat = mask.reshape(-1).nonzero().squeeze(1)  # (N,) real tokens in the (G*T) layout
    resp = flat // T  # (N,) response of each real token
    h = hidden.reshape(G * T, H)[flat].to(cdt)  # (N, H)
    bad = ~torch.isfinite(h).all(1)  # (N,) padding may hold anything; real tokens may not
    if bool(bad.any()):
        raise NonFiniteInput(f"hidden holds NaN/inf at {int(bad.sum())} real tokens (responses "
                             f"{resp[bad].unique().tolist()[:8]}); THR is undefined there: check "
                             "the forward pass (e.g. a bf16 overflow) or the mask")
    y = tokens.reshape(-1)[flat].long()  # (N,)
    if int(y.max()) >= n_vocab or int(y.min()) < 0:
        raise ValueError(f"token ids on real tokens must lie in [0, {n_vocab}) (the vocab of "
                         f"logits / lm_head_weight), got range [{int(y.min())}, {int(y.max())}]")
    return flat, resp, h, y


def _response_weights(r, mask, adv, length_normalize: bool, advantage_weighted: bool, cdt):
    """Anchor weights w_i (G,) (1/|y_i| or 1 on correct responses, else 0) and response signs
    c_j (G,): 2 r_j - 1, or the advantages (the run's `adv`, else GRPO's of the rewards)."""
    G = len(r)
    lengths = mask.sum(1).clamp(min=1).to(cdt)  # (G,)
    w_resp = (1.0 / lengths if length_normalize else torch.ones_like(lengths)) * (r == 1)  # (G,)
    if not advantage_weighted:
        c = 2 * r.to(cdt) - 1  # (G,)
    elif adv is not None:
        if tuple(adv.shape) != (G,):
            raise ValueError(f"adv must be (G,) = ({G},) like rewards, got {tuple(adv.shape)}")
        c = adv.to(device=mask.device, dtype=cdt)  # (G,) the run's own advantages
    else:
        c = group_advantages(r, G).to(cdt)  # (G,)
    return w_resp, c


def _probabilities(h, flat, logits, lm_head_weight, temperature: float, cols, cdt):
    """probs(rows) -> (n, V) (or (n, V_g) on the group's columns `cols`) for real tokens `rows`:
    softmax of the given logits, or of h W^T / temperature streamed from the unembedding."""
    if logits is not None:
        flat_logits = logits.reshape(-1, logits.shape[-1])  # a view: rows gathered per chunk

        def raw(rows):
            return flat_logits[flat[rows]].to(cdt)  # (n, V)
    else:
        W = lm_head_weight.to(cdt)  # (V, H) one cast, not one per chunk

        def raw(rows):
            x = h[rows] @ W.T  # (n, V)
            return x if temperature == 1.0 else x.div_(temperature)  # no pass for x / 1

    def probs(rows):
        x = raw(rows)  # (n, V)
        if cols is None:
            return torch.softmax(x, dim=-1)  # (n, V)
        # Normalise over the full vocab, then keep the group's columns: renormalising over
        # the group's ids would change the definition, not just approximate it.
        return torch.exp(x[:, cols] - torch.logsumexp(x, dim=-1, keepdim=True))  # (n, V_g)

    return probs


def thr_for_batch(hidden, tokens, mask, rewards, group_size: int, **kw) -> torch.Tensor:
    """Apply token_hidden_reward to each group of group_size consecutive rows; (B, T)."""
    B = hidden.shape[0]
    if B % group_size or tuple(rewards.shape) != (B,):
        raise ValueError(f"need B = {B} rows, a multiple of group_size={group_size}, and rewards "
                         f"(B,), got rewards {tuple(rewards.shape)}")
    logits = kw.pop("logits", None)
    adv = kw.pop("adv", None)
    if adv is not None and tuple(adv.shape) != (B,):
        raise ValueError(f"adv must be (B,) = ({B},), got {tuple(adv.shape)}")
    if kw.get("lm_head_weight") is not None:  # cast (V, H) once per batch, not once per group
        kw["lm_head_weight"] = kw["lm_head_weight"].to(
            torch.promote_types(hidden.dtype, torch.float32))
    out = []
    for s in range(0, B, group_size):
        g = slice(s, s + group_size)
        extra = {} if logits is None else {"logits": logits[g]}
        if adv is not None:
            extra["adv"] = adv[g]
        out.append(token_hidden_reward(hidden[g], tokens[g], mask[g], rewards[g], **extra, **kw))
    return torch.cat(out)  # (B, T)
