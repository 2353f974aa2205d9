"""GRPO step phases on a paper-sized model shape: 4-bit NF4 + LoRA, random weights (no download).

    python benchmarks/gpu_check.py                    # Qwen2.5-1.5B shape, G=8 x 4 prompts x 256 tokens, 2 steps
    python benchmarks/gpu_check.py --shape tiny       # CPU smoke run of the same code path

Uses thrlab's own pieces (load_policy, completion_forward, policy_loss, aggregate) over token ids
directly: a random model has no tokenizer worth decoding, so prompts are random ids and every
completion is forced to the full length (min_new_tokens) so the timing is the worst case.
Prints a table and, on its last line, JSON (per-phase seconds, generation tokens/s, peak memory).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch

SHAPES = {  # Qwen2.5-1.5B: hidden 1536, 28 layers, 12 heads / 2 KV heads, FFN 8960, vocab 151,936
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         tie_word_embeddings=True),
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                 tie_word_embeddings=True),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=8)
    args = ap.parse_args()

    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thrlab.config import from_preset
    from thrlab.loss import aggregate, group_advantages, policy_loss
    from thrlab.model import completion_forward, load_policy, reference_policy, resolve_device

    cfg = from_preset("tiny", lora_r=64, lora_alpha=128, micro_batch_size=args.micro_batch)
    device = resolve_device(cfg)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        Qwen2ForCausalLM(Qwen2Config(max_position_embeddings=4096, **SHAPES[args.shape])) \
            .save_pretrained(d)
        model, _ = load_policy(cfg, d, device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    B = args.prompts * args.group_size
    V = SHAPES[args.shape]["vocab_size"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for step in range(args.steps):
        t = {}
        prompts = torch.randint(0, V, (args.prompts, args.prompt_len), device=device)
        ids = prompts.repeat_interleave(args.group_size, 0)
        att = torch.ones_like(ids)
        _sync(device)
        t0 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=att, do_sample=True,
                                 temperature=1.0, top_p=1.0, top_k=0,
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 pad_token_id=0, eos_token_id=None)
        _sync(device)
        t["generate"] = time.perf_counter() - t0
        model.train()
        full_att = torch.ones_like(out)
        Lp = args.prompt_len
        mask = torch.ones(B, out.shape[1] - Lp, dtype=torch.bool, device=device)
        rewards = (torch.rand(B, device=device) > 0.5).float()
        adv = group_advantages(rewards, args.group_size)
        mb = [torch.arange(i, min(i + args.micro_batch, B)) for i in range(0, B, args.micro_batch)]
        t0 = time.perf_counter()
        with torch.no_grad(), reference_policy(model):
            ref = torch.cat([completion_forward(model, out[i], full_att[i], Lp, 1.0,
                                                need_entropy=False)["logp"] for i in mb])
        _sync(device)
        t["ref_logp"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        n_tok = float(mask.sum())
        for i in mb:
            o = completion_forward(model, out[i], full_att[i], Lp, 1.0)
            lt, _ = policy_loss(o["logp"], o["logp"].detach(), adv[i, None] * mask[i].float(),
                                mask[i], objective="grpo", eps_low=0.2, eps_high=0.2,
                                ref_logp=ref[i], kl_coef=1e-4)
            aggregate(lt, mask[i], "token_mean", n_tokens=n_tok, n_seqs=B,
                      max_len=args.new_tokens).backward()
        opt.step()
        _sync(device)
        t["update"] = time.perf_counter() - t0
        t["step"] = sum(t.values())
        t["gen_tokens_per_s"] = B * args.new_tokens / t["generate"]
        rows.append(t)
        print(f"step {step}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()), flush=True)
    result = {"shape": args.shape, "device": torch.cuda.get_device_name() if device.type == "cuda"
              else "cpu", "batch": B, "new_tokens": args.new_tokens, "steps": rows,
              "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30
              if device.type == "cuda" else None}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
