"""Batched rollouts: G samples per prompt, left-padded prompts, EOS-aware completion masks.

The tensors a rollout returns are what every later stage reads (rewards, advantages, the
old-policy pass, THR): `input_ids (B, L)`, `attention_mask (B, L)`, `tokens (B, T)`,
`mask (B, T)`, with B = P*G rows ordered prompt-major (rows g*G .. g*G+G-1 are one group).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Rollout:
    input_ids: torch.Tensor  # (B, L) prompt (left-padded to prompt_len) + completion
    attention_mask: torch.Tensor  # (B, L) 1 on real prompt and completion tokens
    prompt_len: int  # Lp: completions start at this column
    tokens: torch.Tensor  # (B, T) completion tokens, pad after EOS
    mask: torch.Tensor  # (B, T) bool, True on real completion tokens (EOS included)
    truncated: torch.Tensor  # (B,) bool, hit max_new_tokens without EOS
    texts: list[str]  # decoded completions (special tokens dropped)
    problem_index: list[int]  # (B,) index of the prompt each row answers
    rewards: torch.Tensor | None = None  # (B,) filled by the reward stage
    extras: dict = field(default_factory=dict)

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)  # (B,)

    def select(self, rows: torch.Tensor | list[int]) -> Rollout:
        """Keep only the given rows (e.g. the groups with mixed rewards)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        il = idx.tolist()
        return Rollout(self.input_ids[idx], self.attention_mask[idx], self.prompt_len,
                       self.tokens[idx], self.mask[idx], self.truncated[idx],
                       [self.texts[i] for i in il], [self.problem_index[i] for i in il],
                       None if self.rewards is None else self.rewards[idx], dict(self.extras))


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Concatenate rollouts whose prompt/completion widths may differ (re-pads both sides)."""
    lp = max(r.prompt_len for r in parts)
    t = max(r.tokens.shape[1] for r in parts)
    ids, att, toks, masks = [], [], [], []
    for r in parts:
        dp, dt = lp - r.prompt_len, t - r.tokens.shape[1]
        prompt, comp = r.input_ids[:, :r.prompt_len], r.input_ids[:, r.prompt_len:]
        patt, catt = r.attention_mask[:, :r.prompt_len], r.attention_mask[:, r.prompt_len:]
        ids.append(torch.cat([_pad(prompt, dp, pad_id, left=True), _pad(comp, dt, pad_id)], 1))
        att.append(torch.cat([_pad(patt, dp, 0, left=True), _pad(catt, dt, 0)], 1))
        toks.append(_pad(r.tokens, dt, pad_id))
        masks.append(_pad(r.mask, dt, False))
    rewards = None if parts[0].rewards is None else torch.cat([r.rewards for r in parts])
    return Rollout(torch.cat(ids), torch.cat(att), lp, torch.cat(toks), torch.cat(masks),
                   torch.cat([r.truncated for r in parts]), sum((r.texts for r in parts), []),
                   sum((r.problem_index for r in parts), []), rewards)


def _pad(x: torch.Tensor, n: int, value, left: bool = False) -> torch.Tensor:
    if n == 0:
        return x
    pad = torch.full((x.shape[0], n), value, dtype=x.dtype, device=x.device)
    return torch.cat([pad, x] if left else [x, pad], 1)


def completion_mask(tokens: torch.Tensor, eos_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask of real completion tokens: everything up to and including the first EOS.

    tokens: (B, T). Returns (mask (B, T) bool, truncated (B,) bool = no EOS at all).
    """
    is_eos = torch.isin(tokens, torch.tensor(eos_ids, device=tokens.device))  # (B, T)
    seen = is_eos.long().cumsum(-1)  # (B, T): count of EOS up to and including t
    mask = (seen == 0) | ((seen == 1) & is_eos)  # before the first EOS, or the first EOS itself
    return mask, ~is_eos.any(-1)


@torch.no_grad()  # not inference_mode: the tensors feed the autograd update later
def generate(model, tok, prompts: list[str], *, n: int, do_sample: bool, temperature: float,
             top_p: float, max_new_tokens: int, batch_size: int = 0) -> Rollout:
    """Sample n completions per prompt (greedy when do_sample is False).

    Rows are prompt-major: row i*n + g is sample g of prompt i. Generation runs in eval mode
    with the KV cache; batch_size bounds the prompts per generate() call (0 = all at once).
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos_ids = _eos_ids(tok)
    parts = []
    step = batch_size or len(prompts)
    try:
        for s in range(0, len(prompts), step):
            chunk = prompts[s:s + step]
            enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
            ids = enc.input_ids.repeat_interleave(n, 0).to(device)  # (b*n, Lp)
            att = enc.attention_mask.repeat_interleave(n, 0).to(device)
            kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample \
                else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            out = model.generate(input_ids=ids, attention_mask=att, max_new_tokens=max_new_tokens,
                                 pad_token_id=tok.pad_token_id, eos_token_id=eos_ids, **kw)
            lp = ids.shape[1]
            comp = out[:, lp:]  # (b*n, T)
            mask, truncated = completion_mask(comp, eos_ids)
            comp = comp.masked_fill(~mask, tok.pad_token_id)
            full_att = torch.cat([att, mask.long()], 1)
            texts = tok.batch_decode(comp, skip_special_tokens=True)
            index = [s + i // n for i in range(comp.shape[0])]
            parts.append(Rollout(torch.cat([ids, comp], 1), full_att, lp, comp, mask, truncated,
                                 texts, index))
    finally:
        model.train(was_training)
    return parts[0] if len(parts) == 1 else cat_rollouts(parts, tok.pad_token_id)


def _eos_ids(tok) -> list[int]:
    """EOS ids to stop on: the tokenizer's EOS plus chat end-of-turn tokens where they exist."""
    vocab = tok.get_vocab()
    ids = {tok.eos_token_id} | {vocab[t] for t in ("<|im_end|>", "<|eot_id|>") if t in vocab}
    return sorted(i for i in ids if i is not None)
