"""The published architecture of every paper preset's model: the config.json fields (and the
tokenizer's size and special-token ids) that thrlab's memory plan (thrlab.train.memory) and rehearsal
at real width (thrlab.plan.rehearsal) need, so neither downloads weights.

Where the numbers come from: each model's published config.json, as copies of it and the model
reports quote it; no page of the official repositories was reachable from the machine that wrote
this (no hub access), so `revision` says "unverified" instead of a commit. Every copy found
agreed on the numbers kept here (the disagreements were fields thrlab does not read:
sliding_window, max_window_layers). Before a GPU run, `transformers.AutoConfig.from_pretrained`
of the model reads the real file; `tests/test_model_cards.py` holds these to the presets and to
transformers' own config classes. When a repository is checked, put its commit in `revision`.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TokenizerCard:
    """What a tokenizer must reproduce for the preset's prompts and stops: its size, the ids of
    the special tokens its template and stopping use, and which of them are eos and pad."""

    regular_tokens: int  # byte-level BPE entries, ids 0 .. regular_tokens - 1
    specials: dict[str, int]  # special token -> id (every one the template or stops name)
    added_tokens: int  # special / added tokens after the regular ones (len(tokenizer) - regular)
    eos_token: str
    pad_token: str | None  # None: thrlab pads with eos (model.load_tokenizer)
    bos_token: str | None
    generation_eos_ids: tuple[int, ...]  # generation_config.json's eos_token_id
    chat_format: str  # "chatml" | "llama3": the format of the model's chat template

    def __len__(self) -> int:
        return self.regular_tokens + self.added_tokens


@dataclass(frozen=True)
class ModelCard:
    """A model's config.json numbers (the fields thrlab's rehearsal and memory plan read)."""

    hub_id: str
    revision: str  # the commit of the hub repository these numbers were read at
    model_type: str  # transformers' model_type: qwen2 | llama
    vocab_size: int  # rows of the embedding / unembedding (>= the tokenizer's length)
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    rope_theta: float
    rms_norm_eps: float
    tokenizer: TokenizerCard
    rope_scaling: dict | None = None
    head_dim: int | None = None  # None: hidden_size / num_attention_heads
    extra: dict = field(default_factory=dict)  # other config.json fields, passed through

    def config_dict(self, num_hidden_layers: int | None = None) -> dict:
        """The config.json fields, optionally with fewer layers (the rehearsal's)."""
        d = dict(model_type=self.model_type, vocab_size=self.vocab_size,
                 hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
                 num_hidden_layers=num_hidden_layers or self.num_hidden_layers,
                 num_attention_heads=self.num_attention_heads,
                 num_key_value_heads=self.num_key_value_heads,
                 tie_word_embeddings=self.tie_word_embeddings,
                 max_position_embeddings=self.max_position_embeddings,
                 rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps,
                 bos_token_id=self.tokenizer.specials.get(self.tokenizer.bos_token or ""),
                 eos_token_id=list(self.tokenizer.generation_eos_ids), **self.extra)
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(self.rope_scaling)
        if self.head_dim is not None:
            d["head_dim"] = self.head_dim
        return d


_UNREAD = "unverified: numbers from copies of config.json, not the repository at a commit"
_QWEN_SPECIALS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}


def _qwen_tokenizer(eos: str, generation_eos: tuple[int, ...]) -> TokenizerCard:
    # Qwen2.5: 151,643 BPE entries, then 22 added tokens (151643 <|endoftext|> .. 151664)
    return TokenizerCard(regular_tokens=151643, specials=dict(_QWEN_SPECIALS), added_tokens=22,
                         eos_token=eos, pad_token="<|endoftext|>", bos_token=None,
                         generation_eos_ids=generation_eos, chat_format="chatml")


_QWEN2 = dict(model_type="qwen2", revision=_UNREAD, rms_norm_eps=1e-6,
              extra=dict(hidden_act="silu", use_sliding_window=False))
# Qwen2.5-Math: a 4k context, RoPE base 10,000, the base model's eos
_QWEN_MATH = dict(_QWEN2, max_position_embeddings=4096, rope_theta=10000.0,
                  tokenizer=_qwen_tokenizer("<|endoftext|>", (151643,)))

CARDS: dict[str, ModelCard] = {card.hub_id: card for card in (
    ModelCard(hub_id="Qwen/Qwen2.5-Math-1.5B", vocab_size=151936, hidden_size=1536,
              intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
              num_key_value_heads=2, tie_word_embeddings=True, **_QWEN_MATH),
    ModelCard(hub_id="Qwen/Qwen2.5-Math-7B", vocab_size=152064, hidden_size=3584,
              intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
              num_key_value_heads=4, tie_word_embeddings=False, **_QWEN_MATH),
    ModelCard(hub_id="Qwen/Qwen2.5-0.5B-Instruct", vocab_size=151936, hidden_size=896,
              intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
              num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=32768,
              rope_theta=1000000.0, tokenizer=_qwen_tokenizer("<|im_end|>", (151645, 151643)),
              **_QWEN2),
    ModelCard(
        hub_id="meta-llama/Llama-3.2-3B-Instruct", revision=_UNREAD, model_type="llama",
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
        num_attention_heads=24, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        tokenizer=TokenizerCard(
            regular_tokens=128000, added_tokens=256,
            specials={"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001,
                      "<|finetune_right_pad_id|>": 128004, "<|start_header_id|>": 128006,
                      "<|end_header_id|>": 128007, "<|eom_id|>": 128008, "<|eot_id|>": 128009,
                      "<|python_tag|>": 128010},
            eos_token="<|eot_id|>", pad_token=None, bos_token="<|begin_of_text|>",
            generation_eos_ids=(128001, 128008, 128009), chat_format="llama3"),
        extra=dict(hidden_act="silu", attention_bias=False, mlp_bias=False)),
)}


def card_of(model: str) -> ModelCard:
    """The card of a hub id; a clear error names the known ones."""
    if model not in CARDS:
        raise KeyError(f"no model card for {model!r}; cards exist for {sorted(CARDS)} "
                       "(thrlab.train.model_cards.CARDS)")
    return CARDS[model]
