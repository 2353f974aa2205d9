"""Batched rollouts: G samples per prompt, left-padded prompts, EOS-aware completion masks.

The tensors a rollout returns are what every later stage reads (rewards, advantages, the
old-policy pass, THR): `input_ids (B, L)`, `attention_mask (B, L)`, `tokens (B, T)`,
`mask (B, T)`, with B = P*G rows ordered prompt-major (rows g*G .. g*G+G-1 are one group).
"""
from __future__ import annotations

import contextlib
import logging
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from . import decode
from .model import dequantized_4bit

log = logging.getLogger(__name__)


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
    questions: list[str] | None = None  # (B,) question text of each row, filled by the trainer

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
                       None if self.rewards is None else self.rewards[idx],
                       None if self.questions is None else [self.questions[i] for i in il])


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Concatenate rollouts whose prompt/completion widths may differ (re-pads both sides)."""
    lp = max(part.prompt_len for part in parts)
    t = max(part.tokens.shape[1] for part in parts)
    ids, att, toks, masks = [], [], [], []
    for part in parts:
        dp, dt = lp - part.prompt_len, t - part.tokens.shape[1]
        prompt, comp = part.input_ids[:, :part.prompt_len], part.input_ids[:, part.prompt_len:]
        lp_i = part.prompt_len
        patt, catt = part.attention_mask[:, :lp_i], part.attention_mask[:, lp_i:]
        ids.append(torch.cat([_pad(prompt, dp, pad_id, left=True), _pad(comp, dt, pad_id)], 1))
        att.append(torch.cat([_pad(patt, dp, 0, left=True), _pad(catt, dt, 0)], 1))
        toks.append(_pad(part.tokens, dt, pad_id))
        masks.append(_pad(part.mask, dt, False))
    rewards = None if parts[0].rewards is None else torch.cat([part.rewards for part in parts])
    questions = None if parts[0].questions is None else sum((part.questions for part in parts), [])
    return Rollout(torch.cat(ids), torch.cat(att), lp, torch.cat(toks), torch.cat(masks),
                   torch.cat([part.truncated for part in parts]),
                   sum((part.texts for part in parts), []),
                   sum((part.problem_index for part in parts), []), rewards, questions)


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
             top_p: float, max_new_tokens: int, batch_size: int = 0,
             engine: str = "auto", sampler: str = "exact", dequantize: bool = True) -> Rollout:
    """Sample n completions per prompt (greedy when do_sample is False).

    Rows are prompt-major: row i*n + g is sample g of prompt i. Generation runs in eval mode
    with the KV cache; batch_size bounds the prompts per generate() call (0 = all at once).
    The sampling distribution is exactly the one the loss and THR assume: softmax(logits /
    temperature), then top-p, nothing else. The checkpoint's own generation_config (which may ask
    for repetition_penalty, no_repeat_ngram_size, top_k, ...) is replaced, for the call, by one
    built from these arguments only (`thrlab_generation_config`); a warning names what is
    overridden, once per model. Generation stops on the tokenizer's EOS, chat end-of-turn tokens
    and every id of the checkpoint's `generation_config.eos_token_id` (`stop_token_ids`).
    engine="auto" runs thrlab's decode loop (thrlab.train.decode: each prompt prefilled once,
    finished rows dropped) where the architecture allows; "generate" always calls transformers'
    generate(). With sampler="exact" both give the same tokens bit for bit (tested);
    sampler="fast" draws from the same distribution with other random numbers (decode.py), and
    only the decode loop has it. CPU 4-bit weights are dequantised once per call, not per token
    (`dequantize=False` keeps bitsandbytes' kernels per token: the same tokens, slower; the
    benchmarks' "before").
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; choose one of {ENGINES}")
    if sampler not in decode.SAMPLERS or (engine == "generate" and sampler != "exact"):
        raise ValueError(f"sampler={sampler!r} with engine={engine!r}: transformers' generate() "
                         f"draws as sampler='exact'; the decode loop takes {decode.SAMPLERS}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    eos_ids = stop_token_ids(tok, lm)
    sampling = dict(do_sample=do_sample, temperature=temperature, top_p=top_p,
                    max_new_tokens=max_new_tokens, pad_id=tok.pad_token_id, eos_ids=eos_ids)
    parts = []
    own_loop = engine == "auto" and decode.supported(lm)
    step = batch_size or len(prompts)
    try:
        dq = dequantized_4bit(model) if dequantize else contextlib.nullcontext()
        with dq, _own_generation_config(lm, **sampling):
            for s in range(0, len(prompts), step):
                enc = tok(prompts[s:s + step], return_tensors="pt", padding=True,
                          add_special_tokens=False)
                ids, att = enc.input_ids.to(device), enc.attention_mask.to(device)  # (b, Lp)
                if own_loop:
                    comp = decode.sample(lm, ids, att, n, sampler=sampler, **sampling)  # (b*n, T)
                else:
                    comp = _hf_generate(model, ids, att, n, **sampling)
                parts.append(_rollout(tok, ids.repeat_interleave(n, 0),
                                      att.repeat_interleave(n, 0), comp, eos_ids, s, n))
    finally:
        model.train(was_training)
    return parts[0] if len(parts) == 1 else cat_rollouts(parts, tok.pad_token_id)


ENGINES = ("auto", "generate")


def _rollout(tok, ids, att, comp, eos_ids, first: int, n: int) -> Rollout:
    """Assemble a Rollout from prompt rows (B, Lp) and raw completions (B, T)."""
    mask, truncated = completion_mask(comp, eos_ids)
    comp = comp.masked_fill(~mask, tok.pad_token_id)
    index = [first + i // n for i in range(comp.shape[0])]
    return Rollout(torch.cat([ids, comp], 1), torch.cat([att, mask.long()], 1), ids.shape[1],
                   comp, mask, truncated, tok.batch_decode(comp, skip_special_tokens=True), index)


def _hf_generate(model, ids, att, n: int, *, do_sample: bool, temperature: float, top_p: float,
                 max_new_tokens: int, pad_id: int, eos_ids: list[int]) -> torch.Tensor:
    """Completions (b*n, T) from transformers' generate() on the prompts repeated n times."""
    ids, att = ids.repeat_interleave(n, 0), att.repeat_interleave(n, 0)  # (b*n, Lp)
    gc = thrlab_generation_config(do_sample=do_sample, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, pad_id=pad_id, eos_ids=eos_ids)
    out = model.generate(input_ids=ids, attention_mask=att, generation_config=gc)
    return out[:, ids.shape[1]:]


def thrlab_generation_config(*, do_sample: bool, temperature: float, top_p: float,
                             max_new_tokens: int, pad_id: int, eos_ids: list[int]):
    """A complete GenerationConfig of thrlab's own fields: plain tempered softmax + top-p
    sampling (top_k=0: no cut) or greedy argmax, and neutral values for every other processor."""
    from transformers import GenerationConfig

    # greedy leaves temperature / top-p / top-k at the library's neutral defaults (setting them
    # with do_sample=False only draws warnings); sampling sets top_k=0 (no cut, generate()'s
    # default is 50)
    kw = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if do_sample \
        else dict(do_sample=False)
    return GenerationConfig(**kw, max_new_tokens=max_new_tokens, min_length=0, num_beams=1,
                            repetition_penalty=1.0, no_repeat_ngram_size=0, typical_p=1.0,
                            epsilon_cutoff=0.0, eta_cutoff=0.0, pad_token_id=pad_id,
                            eos_token_id=list(eos_ids), use_cache=True)


@contextmanager
def _own_generation_config(lm, **sampling):
    """Swap lm.generation_config for thrlab's for the duration of a call.

    transformers' generate() fills every field left unset in the config it is given from the
    model's own generation_config (defaults_only merge), so passing a config is not enough: the
    checkpoint's config itself must not be there. Restored on exit, whatever happens.
    """
    own = getattr(lm, "generation_config", None)
    if own is None:
        yield
        return
    _warn_overridden(lm, own)
    lm.generation_config = thrlab_generation_config(**sampling)
    try:
        yield
    finally:
        lm.generation_config = own


# generation_config entries that do not change the sampling distribution (or that thrlab sets
# itself): anything else in a checkpoint's config is overridden and named in a warning.
_NEUTRAL_GENERATION_KEYS = {
    "_from_model_config", "transformers_version", "bos_token_id", "eos_token_id", "pad_token_id",
    "do_sample", "temperature", "top_p", "max_new_tokens", "max_length", "use_cache",
    "output_attentions", "output_hidden_states", "output_scores", "output_logits",
    "return_dict_in_generate"}


def _warn_overridden(lm, gc) -> None:
    """Log once per model which of its checkpoint's generation settings thrlab overrides."""
    extra = sorted(set(gc.to_diff_dict()) - _NEUTRAL_GENERATION_KEYS)
    if extra and not getattr(lm, "_thrlab_warned_generation_config", False):
        log.warning("the checkpoint's generation_config sets %s; thrlab samples from the plain "
                    "tempered softmax (+ top-p) that its loss and THR assume, so these are "
                    "overridden (%s)", ", ".join(extra),
                    ", ".join(f"{k}={getattr(gc, k)!r}" for k in extra))
        lm._thrlab_warned_generation_config = True


def stop_token_ids(tok, lm=None) -> list[int]:
    """Ids that end a completion: the tokenizer's EOS, chat end-of-turn tokens where the vocab has
    them, and every id of the checkpoint's generation_config.eos_token_id (Llama-3.x Instruct
    lists 128001, 128008 and 128009)."""
    vocab = tok.get_vocab()
    ids = {tok.eos_token_id} | {vocab[t] for t in ("<|im_end|>", "<|eot_id|>") if t in vocab}
    gc_eos = getattr(getattr(lm, "generation_config", None), "eos_token_id", None)
    ids |= set(gc_eos) if isinstance(gc_eos, (list, tuple)) else {gc_eos}
    return sorted(int(i) for i in ids if i is not None)
