"""A GRPO step on a paper-sized model shape: phases, THR share, generation against the memory
bound, peak memory, and (optionally) the race against TRL. Random weights, no download.

    python benchmarks/gpu_check.py                 # Qwen2.5-1.5B shape, 4 prompts x G=8 x 256 tokens
    python benchmarks/gpu_check.py --trl           # + thrlab vs TRL at that shape (needs trl)
    python benchmarks/gpu_check.py --shape tiny    # CPU smoke run of the same code path

The model is Qwen2ForCausalLM at the shape's config with random bf16 weights (fp32 on CPU), saved
beside a character tokenizer and loaded by thrlab as 4-bit NF4 + LoRA r=64 / alpha=128 on all
linear layers, as the qwen2.5-math-1.5b preset does: bf16 compute on CUDA, gradient
checkpointing, micro-batches of 8, 2 mini-batches per rollout batch (so an old-policy pass runs),
k3 KL 1e-4, THR on (p=+0.1, exact, full vocabulary). thrlab's own GRPOTrainer runs the steps and
its timers give the phases (as in step_breakdown.py). Prompts are `--prompt-len` characters; a
random model almost never emits EOS, so every completion runs `--new-tokens` tokens (worst case).
Rewards are random 0/1 (seeded), so groups are mixed and THR runs on every group.

Generation is compared with the memory-bandwidth bound: each decode step must read every weight
once (4-bit packed layers with their scales, the bf16 embedding as the LM head) plus the KV cache,
so tokens/s <= B * bandwidth / bytes per step. Bandwidth comes from a table of known cards (by
name) or `--bandwidth-gbs`. The same prompts also go once through transformers' generate() (the
path thrlab used before its shared-prefill loop) for a before/after on this device.
`--trl` runs benchmarks/vs_trl.py's alternating race (thrlab, thrlab + THR, TRL) at this shape.
The last line printed is JSON; record it in RESULTS.md with the card's name.
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
import time

import torch

from thrlab.train.experiment import build_trainer
from thrlab.train.model_cards import CARDS
from thrlab.plan.profiling import PHASES, phase_row, summarise
from thrlab.train.runs import environment_info

_QWEN = CARDS["Qwen/Qwen2.5-Math-1.5B"]  # Qwen2.5-1.5B's architecture (thrlab.train.model_cards)
SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=_QWEN.hidden_size, intermediate_size=_QWEN.intermediate_size,
                         num_hidden_layers=_QWEN.num_hidden_layers,
                         num_attention_heads=_QWEN.num_attention_heads,
                         num_key_value_heads=_QWEN.num_key_value_heads,
                         vocab_size=_QWEN.vocab_size,
                         tie_word_embeddings=_QWEN.tie_word_embeddings),
    "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=512,
                 tie_word_embeddings=True),
}
# Peak memory bandwidth in GB/s by device-name fragment (vendor data sheets); first match wins.
BANDWIDTH_GBS = [("H200", 4800), ("H100 NVL", 3900), ("H100 PCIe", 2000), ("H100", 3350),
                 ("A100-SXM4-80GB", 2039), ("A100 80GB PCIe", 1935), ("A100", 1555),
                 ("L40S", 864), ("A10G", 600), ("A10", 600), ("L4", 300), ("4090", 1008),
                 ("T4", 320)]


class RandomGrade:
    """Reward 0/1 at random (own seeded RNG, torch's untouched): mixed groups, THR on each."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def __call__(self, texts, golds):
        from thrlab.tasks.rewards import GradeResult

        return GradeResult.from_status(
            ["correct" if self.rng.random() < 0.5 else "wrong" for _ in texts])


def build_model(shape: str, folder: str, device: torch.device) -> str:
    """Save a random model of the shape (bf16 on CUDA) and the character tokenizer to folder."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from thrlab.train.tiny import build_tokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2ForCausalLM._from_config(
            Qwen2Config(max_position_embeddings=4096, pad_token_id=0, eos_token_id=1,
                        bos_token_id=1, **SHAPES[shape]), dtype=dtype)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    del model
    return folder


def make_problems(n: int, prompt_len: int, seed: int = 0) -> list:
    """Problems whose plain-template prompt is about prompt_len characters (= tokens)."""
    from thrlab.tasks.benchmarks import Problem

    rng = random.Random(seed)
    body = max(1, prompt_len - len("Q: =? A:"))
    return [Problem(id=f"gpu_check/{i}", question="".join(rng.choice("0123456789+*")
                                                          for _ in range(body)),
                    answer="0", source="gpu_check") for i in range(n)]


def weight_bytes(model) -> int:
    """Bytes one decode step reads: parameters, buffers and the 4-bit layers' quantisation state."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    for m in model.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            for t in (qs.absmax, getattr(qs.state2, "absmax", None) if qs.nested else None):
                if t is not None:
                    total += t.numel() * t.element_size()
    return total


def kv_bytes_per_step(cfg_shape: dict, batch: int, context: float, dtype_bytes: int) -> float:
    """KV-cache bytes read by one decode step at the given mean context length."""
    head_dim = cfg_shape["hidden_size"] // cfg_shape["num_attention_heads"]
    return (2 * cfg_shape["num_hidden_layers"] * cfg_shape["num_key_value_heads"] * head_dim
            * context * batch * dtype_bytes)


def card_bandwidth(name: str | None, override: float | None) -> float | None:
    if override:
        return override
    return next((bw for frag, bw in BANDWIDTH_GBS if name and frag in name), None)


def generation_before_after(tr, n_prompts: int, new_tokens: int) -> dict:
    """One generate() call by the shared-prefill path and one by transformers' generate()."""
    from thrlab.train import rollout
    from thrlab.tasks.benchmarks import format_prompt

    cfg = tr.cfg
    prompts = [format_prompt(p.question, cfg.template) for p in tr.problems[:n_prompts]]
    out = {}
    for name in ("thrlab", "transformers"):
        plain = name == "transformers"  # the path generate() took before the shared prefill
        torch.manual_seed(1)
        _sync()
        t0 = time.perf_counter()
        r = rollout.generate(tr.model, tr.tok, prompts, n=cfg.group_size, do_sample=True,
                             temperature=cfg.temperature, top_p=cfg.top_p,
                             max_new_tokens=new_tokens, engine="generate" if plain else "auto",
                             dequantize=not plain)
        _sync()
        dt = time.perf_counter() - t0
        out[name] = {"wall_s": dt, "tokens": int(r.mask.sum()),
                     "tokens_per_s": float(r.mask.sum()) / dt, "ids": r.tokens}
    same = torch.equal(out["thrlab"].pop("ids"), out["transformers"].pop("ids"))
    return dict(out, tokens_equal=same,
                speedup=out["transformers"]["wall_s"] / out["thrlab"]["wall_s"])



def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2, help="measured GRPO steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--bandwidth-gbs", type=float, default=None,
                    help="memory bandwidth of the device (default: table by device name)")
    ap.add_argument("--no-before-after", action="store_true",
                    help="skip the transformers-generate() comparison")
    ap.add_argument("--trl", action="store_true", help="also race TRL at this shape")
    ap.add_argument("--trl-steps", type=int, default=2, help="steps per contestant per round")
    ap.add_argument("--trl-rounds", type=int, default=2, help="rounds (the first is warm-up)")
    args = ap.parse_args()

    from thrlab.train.presets import from_preset
    from thrlab.train.model import resolve_device

    cuda = torch.cuda.is_available()
    cfg = from_preset(
        "tiny", model="gpu_check", lora_r=64, lora_alpha=128, prompts_per_step=args.prompts,
        group_size=args.group_size, max_new_tokens=args.new_tokens,
        micro_batch_size=args.micro_batch, mini_batches=2, gradient_checkpointing=cuda,
        compute_dtype="bfloat16" if cuda else "float32", kl_coef=1e-4, thr_mode="thr",
        thr_p=0.1, sft_control=False, save_every=10**6, thr_save_every=0, seed=0)
    device = resolve_device(cfg)
    B = args.prompts * args.group_size
    problems = make_problems(64, args.prompt_len)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = build_model(args.shape, f"{d}/model", device)
        cfg = cfg.replace(model=path)
        tr = build_trainer(cfg, path, f"{d}/run", problems=problems, grade_fn=RandomGrade(0))
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rows = []
        for i in range(args.warmup + args.steps):
            stats = tr.train_step()
            _sync()
            if i >= args.warmup:
                rows.append(phase_row(stats, B))
                print(f"step {i}: " + ", ".join(f"{k} {rows[-1][k]:.2f}"
                                                for k in PHASES + ("step",)), flush=True)
        res = {"rows": rows, **summarise(rows)}
        res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
        # generation against the memory bound
        wb = weight_bytes(tr.model)
        ctx = args.prompt_len + args.new_tokens / 2  # mean context over the decode steps
        dtype_bytes = 2 if cuda else 4
        step_bytes = wb + kv_bytes_per_step(SHAPES[args.shape], B, ctx, dtype_bytes)
        name = torch.cuda.get_device_name() if cuda else None
        bw = card_bandwidth(name, args.bandwidth_gbs)
        bound = B * bw * 1e9 / step_bytes if bw else None
        res["generation"] = {"weight_gb": wb / 1e9, "bytes_per_decode_step_gb": step_bytes / 1e9,
                             "bandwidth_gbs": bw, "bound_tokens_per_s": bound,
                             "tokens_per_s": res["gen_tokens_per_s"],
                             "frac_of_bound": res["gen_tokens_per_s"] / bound if bound else None}
        if not args.no_before_after:
            res["generation"]["before_after"] = generation_before_after(tr, args.prompts,
                                                                        args.new_tokens)
        del tr
        if args.trl:
            from vs_trl import race

            res["trl"] = race(cfg.replace(thr_mode="off"), path, args.trl_steps, args.trl_rounds,
                              1, True, True, problems=problems, grade_fn=RandomGrade(1))
            res["trl"].pop("rows", None)
    res.update({"shape": args.shape, "device": name or "cpu", "batch": B,
                "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
                "steps": args.steps, "config": {k: getattr(cfg, k) for k in (
                    "lora_r", "lora_alpha", "micro_batch_size", "mini_batches",
                    "gradient_checkpointing", "compute_dtype", "kl_coef", "thr_mode", "thr_p")},
                "wall_s": time.perf_counter() - t_start, "machine": environment_info()})
    g = res["generation"]
    print(f"\n{res['device']}: step {res['phases_s']['step']:.2f} s (median), THR share "
          f"{100 * res['thr_overhead_frac']:.2f}%, generation {g['tokens_per_s']:.0f} tokens/s"
          + (f" = {100 * g['frac_of_bound']:.0f}% of the {g['bound_tokens_per_s']:.0f} tokens/s "
             f"bandwidth bound" if g["bound_tokens_per_s"] else "")
          + (f", peak {res['peak_gpu_mem_gb']:.1f} GiB" if cuda else ""))
    if "before_after" in g:
        ba = g["before_after"]
        print(f"generate(): thrlab {ba['thrlab']['tokens_per_s']:.0f} tokens/s vs transformers "
              f"{ba['transformers']['tokens_per_s']:.0f} ({ba['speedup']:.2f}x, tokens equal: "
              f"{ba['tokens_equal']})")
    if "trl" in res:
        print(f"vs TRL: speedup {res['trl']['speedup_vs_trl']:.2f}x")
    print(json.dumps(res, default=float))


if __name__ == "__main__":
    main()
