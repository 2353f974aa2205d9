"""thrlab's decode loop: prefill each prompt once, then one token per step for the rows still
decoding, from a preallocated KV cache and mask.

What it does that transformers' generate() does not (benchmarks/decode_speed.py measures each):
- the prefill runs on the b distinct prompts, not on their n copies; its KV cache is expanded;
- the KV cache and the attention mask live in buffers of the final length (no per-step cat);
- finished rows leave the batch (`COMPACT_FRACTION`): the cache, mask and positions of the rows
  still decoding are gathered, so a long tail decodes at its own width;
- `sampler="fast"` draws by inverse CDF and finds the nucleus from a top-k (thrlab.core.sampling).
Grouped-query attention needs nothing here: transformers' SDPA path folds the query heads onto the
KV heads for a one-token query (its `pack_gqa`), masked or not, so K/V are not repeated per step
(tests/test_decode.py holds that to transformers' code).

With `sampler="exact"` the tokens are generate()'s bit for bit (tested): the prefill of a prompt
equals that of its copies row by row, and on CPU a row's logits do not depend on which other rows
share its batch, so dropping finished rows changes nothing; the random numbers drawn are
generate()'s (`multinomial_draw` draws for the whole batch, dropped rows included).
"""
from __future__ import annotations

import torch

from thrlab.core.sampling import inverse_cdf_draw, multinomial_draw, top_p_keep
from thrlab.core.unembed import unembed

SAMPLERS = ("exact", "fast")
# Drop finished rows once they are this share of the batch. Gathering the cache copies every kept
# row's keys and values, and a CPU matmul of 20 rows costs nearly what one of 32 does
# (benchmarks/decode_speed.py: dropping at an eighth made SmolLM2's 64-token call 7% slower than
# a static batch); halving keeps the gathers to log2(rows) per call and still cuts a long tail's
# KV-cache reads, which dominate a GPU step at thousands of tokens, to at most twice the live rows'.
COMPACT_FRACTION = 0.5


def supported(lm) -> bool:
    """Whether `sample` runs this model: a decoder-only model with a `cache`-taking forward that
    also accepts logits_to_keep and position_ids."""
    import inspect

    if getattr(lm.config, "is_encoder_decoder", False):
        return False
    params = inspect.signature(lm.forward).parameters
    return {"cache", "logits_to_keep", "position_ids"} <= set(params)


def sample(lm, ids, att, n: int, *, do_sample: bool, temperature: float, top_p: float,
           max_new_tokens: int, pad_id: int, eos_ids: list[int],
           sampler: str = "exact") -> torch.Tensor:
    """n continuations of each prompt: (b*n, T) tokens, rows prompt-major, pad after a row's EOS,
    T <= max_new_tokens (the loop stops when every row has ended).

    ids, att: (b, Lp) left-padded prompts. The steps mirror transformers.GenerationMixin._sample:
    positions from the attention mask (pad positions 0), an all-ones mask dropped, logits of the
    last position in float32, temperature then top-p, a draw (or argmax), stop on EOS or
    max_new_tokens. Runs under torch.inference_mode; the tokens are cloned out, so the caller
    gets an ordinary tensor that later autograd passes may use.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; choose one of {SAMPLERS}")
    with torch.inference_mode():
        return _loop(lm, ids, att, n, do_sample=do_sample, temperature=temperature, top_p=top_p,
                     max_new_tokens=max_new_tokens, pad_id=pad_id, eos_ids=eos_ids,
                     sampler=sampler).clone()


def _loop(lm, ids, att, n: int, *, do_sample: bool, temperature: float, top_p: float,
          max_new_tokens: int, pad_id: int, eos_ids: list[int], sampler: str) -> torch.Tensor:
    b, lp = ids.shape
    B, dev = b * n, ids.device
    pos = (att.long().cumsum(-1) - 1).masked_fill(att == 0, 0)  # (b, Lp)
    mask = None if bool((att == 1).all()) else att  # generate() drops an all-ones mask
    out = lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    rows = torch.arange(b, device=dev).repeat_interleave(n)  # (B,) prompt of each sample
    cache = out.cache
    cache.reorder_cache(rows)  # (b, ...) -> (B, ...) per layer
    compactable = _preallocate(cache, lp + max_new_tokens)
    # the last position's logits, (b, V) -> (B, V); unembed: the causal LM's own slice would copy
    # the unembedding once per prompt in bf16
    logits = unembed(lm.get_output_embeddings(), out.last_hidden_state[:, -1:])[:, 0].float()[rows]
    del out
    pos = pos[rows, -1:]  # (B, 1)
    if mask is not None:  # the whole mask up front; step t attends to its first lp + t columns
        mask = torch.cat([mask[rows], mask.new_ones(B, max_new_tokens)], 1)  # (B, Lp + T)
    eos = torch.tensor(eos_ids, dtype=torch.long, device=dev)
    tokens = torch.full((B, max_new_tokens), pad_id, dtype=torch.long, device=dev)
    live = torch.arange(B, device=dev)  # (b_t,) the full-batch row of each batch row
    running = torch.ones(B, dtype=torch.bool, device=dev)  # (b_t,) not yet ended
    for t in range(max_new_tokens):
        nxt = _next_token(logits, live, B, do_sample=do_sample, temperature=temperature,
                          top_p=top_p, sampler=sampler)  # (b_t,)
        nxt = nxt.masked_fill(~running, pad_id)  # ended rows (not yet dropped) emit pad
        tokens[live, t] = nxt
        running = running & ~torch.isin(nxt, eos)
        n_run = int(running.sum())
        if t + 1 == max_new_tokens or n_run == 0:
            break
        if compactable and len(live) - n_run >= max(1, COMPACT_FRACTION * len(live)):
            keep = running.nonzero().squeeze(1)  # (b_t+1,)
            cache.batch_select_indices(keep)
            live, running, nxt, pos = live[keep], running[keep], nxt[keep], pos[keep]
            mask = None if mask is None else mask[keep]
        pos = pos + 1
        out = lm(input_ids=nxt[:, None], position_ids=pos, cache=cache, use_cache=True,
                 attention_mask=None if mask is None else mask[:, :lp + t + 1], logits_to_keep=1)
        cache, logits = out.cache, out.logits[:, -1].float()  # (b_t, V)
        del out
    return tokens[:, :t + 1]  # (B, T)


def _next_token(logits, live, batch: int, *, do_sample: bool, temperature: float, top_p: float,
                sampler: str) -> torch.Tensor:
    """The next token of each batch row from its float32 logits (b_t, V)."""
    if not do_sample:
        return torch.argmax(logits, dim=-1)
    scores = logits / temperature if temperature != 1.0 else logits  # TemperatureLogitsWarper
    if sampler == "exact":
        if top_p < 1.0:
            from transformers.generation import TopPLogitsWarper

            scores = TopPLogitsWarper(top_p)(None, scores)  # it does not read the ids
        return multinomial_draw(torch.softmax(scores, dim=-1), live, batch)
    probs = torch.softmax(scores, dim=-1)
    if top_p >= 1.0:
        return inverse_cdf_draw(probs)
    vals, ids = top_p_keep(probs, top_p)
    return ids.gather(1, inverse_cdf_draw(vals)[:, None]).squeeze(1)


def _preallocate(cache, capacity: int) -> bool:
    """Give every plain layer of a DynamicCache room for `capacity` positions up front; True if
    it did (then `batch_select_indices` gathers the buffers).

    DynamicLayer grows by torch.cat, copying the whole cache at every new token: O(T^2) copying,
    measured at 58% of the sampling time for 3,200 rows x 28 new tokens. A layer that writes into
    a preallocated buffer and hands attention a view of the filled positions computes exactly
    the same attention over exactly the same keys (tokens bit-identical to generate(); tested).
    Caches with layers of other kinds (sliding windows, ...) are left as they are, and their
    finished rows are not dropped.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if layers and all(type(layer) is DynamicLayer and layer.is_initialized for layer in layers):
        cache.layers = [_PreallocatedLayer(layer, capacity) for layer in layers]
        return True
    return False


def _preallocated_layer_class():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A DynamicLayer whose keys and values live in buffers of fixed capacity (no cat)."""

        def __init__(self, layer, capacity: int):
            super().__init__()
            k, v = layer.keys, layer.values  # (B, heads, T, d)
            B, H, T, D = k.shape
            self._k = k.new_empty(B, H, max(capacity, T), D)
            self._v = v.new_empty(B, v.shape[1], max(capacity, T), v.shape[-1])
            self._k[:, :, :T], self._v[:, :, :T] = k, v
            self._n, self.device, self.is_initialized = T, k.device, True
            self.keys, self.values = self._k[:, :, :T], self._v[:, :, :T]

        def update(self, key_states, value_states, *args, **kwargs):
            n = key_states.shape[-2]
            if self._n + n > self._k.shape[2]:  # past capacity: grow like DynamicLayer
                self._k = torch.cat([self._k[:, :, :self._n], key_states], dim=-2)
                self._v = torch.cat([self._v[:, :, :self._n], value_states], dim=-2)
            else:
                self._k[:, :, self._n:self._n + n] = key_states
                self._v[:, :, self._n:self._n + n] = value_states
            self._n += n
            self.keys, self.values = self._k[:, :, :self._n], self._v[:, :, :self._n]
            return self.keys, self.values

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            """Keep the rows `indices` (in that order): new buffers, filled positions copied."""
            k, v = self._k.new_empty(len(indices), *self._k.shape[1:]), \
                self._v.new_empty(len(indices), *self._v.shape[1:])
            k[:, :, :self._n], v[:, :, :self._n] = self.keys[indices], self.values[indices]
            self._k, self._v = k, v
            self.keys, self.values = k[:, :, :self._n], v[:, :, :self._n]

    return PreallocatedLayer


def _PreallocatedLayer(layer, capacity: int):
    global _PREALLOCATED
    if _PREALLOCATED is None:
        _PREALLOCATED = _preallocated_layer_class()
    return _PREALLOCATED(layer, capacity)


_PREALLOCATED = None
