"""The embedded tiny default: a character tokenizer, a ~1M-parameter causal LM built from a config,
and its supervised cold start on synthetic arithmetic, cached once per machine.

RL needs a policy that sometimes succeeds: the cold start brings a random model to ~20% greedy
accuracy on `a*b+c` so that about half of the groups of 8 have mixed rewards.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch

from thrlab.tasks.arithmetic import arithmetic_problems, sft_targets
# One token per character; the task needs only these. <pad> and <eos> are the specials.
from thrlab.tasks.benchmarks import format_prompt

from .config import Config, TinyConfig
from .runs import atomic_write_text, cache_root, publish_folder, staging_folder

TINY_CHARS = list("0123456789") + list(" +-*=?:QA")
SPECIALS = ["<pad>", "<eos>"]


def build_tokenizer():
    """Build the character-level tokenizer (a transformers fast tokenizer, made locally)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + TINY_CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    # Every character is its own pre-token, spaces included.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   padding_side="left")


def build_model(cfg: Config, vocab_size: int):
    """Build a randomly initialised tiny causal LM (Qwen2 or Llama architecture) from cfg."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cls_cfg, cls = {"qwen2": (Qwen2Config, Qwen2ForCausalLM),
                    "llama": (LlamaConfig, LlamaForCausalLM)}[cfg.tiny_arch]
    mcfg = cls_cfg(vocab_size=vocab_size, hidden_size=cfg.tiny_hidden,
                   intermediate_size=cfg.tiny_ffn, num_hidden_layers=cfg.tiny_layers,
                   num_attention_heads=cfg.tiny_heads, num_key_value_heads=cfg.tiny_heads,
                   max_position_embeddings=64, tie_word_embeddings=True,
                   pad_token_id=0, eos_token_id=1, bos_token_id=1)
    torch.manual_seed(cfg.sft_seed)
    return cls(mcfg)


def cold_start_key(cfg: Config) -> dict:
    """What the cold-started model depends on: its TinyConfig and the task it learns (arith_op)."""
    return {k: getattr(cfg, k) for k in ("arith_op", *TinyConfig.names())}


def tiny_model_dir(cfg: Config) -> Path:
    """Cache path of the cold-started tiny model for cfg's tiny_* and sft_* settings."""
    import hashlib

    key = json.dumps(cold_start_key(cfg), sort_keys=True)
    return cache_root() / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def save_random_model(cfg: Config, folder) -> str:
    """Save an untrained model of cfg's tiny shape and the character tokenizer to folder (no
    cold start; for tests and benchmarks that need a model, not a competent one); returns it."""
    tok = build_tokenizer()
    build_model(cfg, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def ensure_tiny_model(cfg: Config, progress: bool = True) -> Path:
    """Return the cold-started tiny model folder, training it first if not cached."""
    out = tiny_model_dir(cfg)
    if (out / "COMPLETE").exists():
        return out
    tok = build_tokenizer()
    model = build_model(cfg, len(tok))
    t0 = time.time()
    stats = cold_start(model, tok, cfg, progress=progress)
    tmp = staging_folder(out)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    atomic_write_text(tmp / "cold_start.json",
                      json.dumps(dict(stats, wall_s=time.time() - t0,
                                      **cold_start_key(cfg)), indent=2))
    return publish_folder(tmp, out)


def sft_batch(tok, problems, template: str, targets: list[str] | None = None):
    """Tokenise prompt + " " + target + eos, with labels only on the target tokens (-100
    elsewhere); the targets default to the gold answers (arithmetic.sft_targets gives chains)."""
    ids, labels = [], []
    for i, p in enumerate(problems):
        prompt = tok(format_prompt(p.question, template), add_special_tokens=False).input_ids
        target = p.answer if targets is None else targets[i]
        answer = tok(" " + target, add_special_tokens=False).input_ids + [tok.eos_token_id]
        ids.append(prompt + answer)
        labels.append([-100] * len(prompt) + answer)
    width = max(map(len, ids))
    pad = tok.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(x)) + x for x in ids])  # (B, L) left padded
    label_t = torch.tensor([[-100] * (width - len(x)) + x for x in labels])
    attn = (torch.arange(width)[None, :] >= torch.tensor([width - len(x) for x in ids])[:, None])
    return input_ids, attn.long(), label_t


def sft_loss(model, input_ids, attn, labels):
    """Mean cross-entropy on the labelled (answer) tokens, with left-padding-aware positions."""
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attn, position_ids=pos).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                             labels[:, 1:].flatten(), ignore_index=-100)


def sft_loop(model, tok, opt, pool: list, rng: random.Random, *, steps: int, batch_size: int,
             template: str, op: str, clip: tuple | None = None, device=None, desc: str = "SFT",
             progress: bool = True, on_step=None) -> list[float]:
    """Supervised steps on the targets of rng-drawn problems (arithmetic.sft_targets: answers, or
    chains for mul_chain), answer tokens only; returns the losses. The one SFT loop: the cold
    start, the equal-compute SFT control and benchmarks/cold_start_curve.py run it.

    clip = (params, max_norm) clips the gradient before each step; on_step(step, loss) runs
    after each (1-based) step.
    """
    from tqdm.auto import tqdm

    model.train()
    losses = []
    for step in tqdm(range(1, steps + 1), desc=desc, disable=not progress, mininterval=2.0):
        batch = rng.sample(pool, batch_size)
        ids, attn, labels = sft_batch(tok, batch, template, sft_targets(batch, op, rng))
        if device is not None:
            ids, attn, labels = ids.to(device), attn.to(device), labels.to(device)
        loss = sft_loss(model, ids, attn, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(*clip)
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    return losses


def cold_start(model, tok, cfg: Config, progress: bool = True) -> dict:
    """Supervised fine-tuning of all weights on the arithmetic train split (answer tokens only)."""
    rng = random.Random(cfg.sft_seed)
    pool = arithmetic_problems(None, "train", seed=cfg.sft_seed, op=cfg.arith_op)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.sft_lr, weight_decay=0.0)
    losses = sft_loop(model, tok, opt, pool, rng, steps=cfg.sft_steps, batch_size=cfg.sft_batch,
                      template="plain", op=cfg.arith_op, desc="cold start (SFT)",
                      progress=progress)
    tail = losses[-50:] or [float("nan")]
    return {"final_loss": sum(tail) / len(tail), "steps": cfg.sft_steps}
