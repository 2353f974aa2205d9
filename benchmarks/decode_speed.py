"""The decode loop's cost per step, engine against engine, side by side in one process.

    python benchmarks/decode_speed.py --case smollm2            # the real model (issue 28's baseline)
    python benchmarks/decode_speed.py --case qwen2.5-math-1.5b  # a paper preset at real width
    python benchmarks/decode_speed.py --quick                   # smoke run (tiny random model)

Engines, each timed on the same prompts in turn (A B C D, A B C D, ...; medians over --reps):
  generate   transformers' generate() on the n copies of each prompt (thrlab before its own loop)
  static     thrlab's loop with generate()'s draws and a static batch: finished rows decode on
             (the loop before issue 28: decode.COMPACT_FRACTION set past 1)
  exact      + finished rows dropped (sampler="exact": tokens equal generate()'s, checked here)
  fast       + inverse-CDF draws and a top-k nucleus (sampler="fast": the same distribution)

Cases:
  smollm2    SmolLM2-135M-Instruct, the packaged real model (needs `make smollm`): 4 word
             problems x 8 samples x 64 new tokens at temperature 0.7 (top-p 1), its real EOS.
  <preset>   a paper preset's architecture at real width (hidden size, heads, vocabulary) with
             --layers random layers (fp32, the CPU compute dtype) and the preset's LoRA, decoding
             its two batch shapes on random prompts of --prompt-tokens tokens: the training
             rollout (prompts_per_step x group_size rows, temperature / top-p of training) and an
             evaluation call (the plan's eval_batch_size for an 80 GB card x eval_samples rows,
             eval temperature / top-p). A random model never ends a row, so only the sampler
             differs there; --new-tokens steps each.

Per engine: wall seconds of the call, decode steps, real tokens per second, the seconds to the
first draw (the prefill) and ms per decode step, the median gap between consecutive draws (a
stopping criterion of generate() and a wrapper of the loop's draw stamp them). The
bounds of this CPU at the same shapes: bytes one step reads (every weight once plus the KV cache)
over the memory bandwidth measured here (a sum over 512 MB), and its FLOPs (2 x weights x rows)
over the GEMM rate measured here (a (rows x H) @ (H x 4H) fp32 matmul). The last line printed is
JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from thrlab.train import decode, rollout

ENGINES = ("generate", "static", "exact", "fast")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(line.split(":", 1)[1].strip() for line in info.splitlines()
                    if line.startswith("model name"))
        return name + (" with AVX512-BF16" if "avx512_bf16" in info else " without AVX512-BF16")
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def bandwidth_gbs() -> float:
    x = torch.ones(2**27)  # 512 MB
    x.sum()
    t0 = time.perf_counter()
    for _ in range(3):
        x.sum()
    return 3 * x.numel() * 4 / (time.perf_counter() - t0) / 1e9


def gemm_gflops(rows: int, hidden: int) -> float:
    a, w = torch.randn(rows, hidden), torch.randn(4 * hidden, hidden)
    torch.nn.functional.linear(a, w)
    t0 = time.perf_counter()
    for _ in range(5):
        torch.nn.functional.linear(a, w)
    return 5 * 2 * rows * hidden * 4 * hidden / (time.perf_counter() - t0) / 1e9


class _Stamps:
    """perf_counter() at every draw: a stopping criterion of generate() (called once per new
    token) or a wrapper of decode._next_token. Decode steps are the gaps between draws."""

    def __init__(self):
        self.t = []

    def __call__(self, *args, **kwargs):
        self.t.append(time.perf_counter())
        return torch.zeros(args[0].shape[0], dtype=torch.bool, device=args[0].device) \
            if len(args) == 2 else None


def run_engine(engine: str, lm, model, ids, att, n: int, new: int, sampling: dict):
    """(wall seconds, seconds to the first draw, per-step seconds, tokens (B, T)) of one call."""
    from transformers import StoppingCriteriaList

    stamps, saved_frac, saved_next = _Stamps(), decode.COMPACT_FRACTION, decode._next_token

    def next_token(*a, **k):
        out = saved_next(*a, **k)
        stamps.t.append(time.perf_counter())
        return out

    kw = dict(sampling, max_new_tokens=new)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            if engine == "generate":  # rollout._hf_generate, with the stamps
                gc = rollout.thrlab_generation_config(**kw)
                r_ids, r_att = ids.repeat_interleave(n, 0), att.repeat_interleave(n, 0)
                toks = model.generate(input_ids=r_ids, attention_mask=r_att, generation_config=gc,
                                      stopping_criteria=StoppingCriteriaList([stamps]))
                toks = toks[:, r_ids.shape[1]:]
            else:
                decode.COMPACT_FRACTION = 2.0 if engine == "static" else saved_frac
                decode._next_token = next_token
                toks = decode.sample(lm, ids, att, n, sampler="fast" if engine == "fast"
                                     else "exact", **kw)
    finally:
        decode.COMPACT_FRACTION, decode._next_token = saved_frac, saved_next
    wall = time.perf_counter() - t0
    return wall, stamps.t[0] - t0, [b - a for a, b in zip(stamps.t, stamps.t[1:])], toks


def measure(name: str, model, ids, att, n: int, new: int, sampling: dict, reps: int,
            engines=ENGINES) -> dict:
    """Every engine in turn, reps rounds; medians, and whether exact/static equal generate()."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    model.eval()
    eos = torch.tensor(sampling["eos_ids"])
    walls, firsts, steps_s = ({e: [] for e in engines} for _ in range(3))
    tokens = {}
    for _ in range(reps):
        for e in engines:
            wall, first, steps, toks = run_engine(e, lm, model, ids, att, n, new, sampling)
            walls[e].append(wall)
            firsts[e].append(first)
            steps_s[e] += steps
            tokens[e] = toks
    out = {}
    for e in engines:
        mask, _ = rollout.completion_mask(tokens[e], eos.tolist())
        wall = statistics.median(walls[e])
        out[e] = dict(wall_s=wall, steps=tokens[e].shape[1], real_tokens=int(mask.sum()),
                      tokens_per_s=float(mask.sum()) / wall,
                      ms_per_step=1e3 * statistics.median(steps_s[e]) if steps_s[e] else 0.0,
                      prefill_s=statistics.median(firsts[e]))
    if "generate" in engines:
        for e in ("static", "exact"):
            if e in engines:
                out[e]["tokens_equal_generate"] = torch.equal(tokens[e], tokens["generate"])
        for e in engines:
            out[e]["speedup_vs_generate"] = out["generate"]["wall_s"] / out[e]["wall_s"]
    return {"case": name, "rows": ids.shape[0] * n, "new_tokens": new, "engines": out}


def bounds(model, rows: int, ctx: int, bw: float, gflops: float) -> dict:
    """This CPU's floor for one decode step at these shapes: bytes and FLOPs of one step."""
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    if getattr(cfg, "tie_word_embeddings", False):
        params += cfg.vocab_size * cfg.hidden_size  # the embedding is read again as lm_head
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * rows * ctx * 4
    byts = 4 * params + kv
    flops = 2 * params * rows
    return dict(bytes_per_step=byts, bandwidth_ms=1e3 * byts / (bw * 1e9),
                flops_per_step=flops, compute_ms=1e3 * flops / (gflops * 1e9))


def smollm2_case(reps: int, new: int):
    from thrlab.tasks.benchmarks import format_prompt
    from thrlab.tasks.word_problems import word_problems
    from thrlab.train.experiment import resolve_model_path
    from thrlab.train.model import load_policy
    from thrlab.train.presets import from_preset

    cfg = from_preset("smollm2-135m")
    model, tok = load_policy(cfg, resolve_model_path(cfg), torch.device("cpu"))
    prompts = [format_prompt(p.question, cfg.template, tok)
               for p in word_problems(4, "train", 0, "word_add1")]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    lm = model.get_base_model()
    sampling = dict(do_sample=True, temperature=0.7, top_p=1.0, pad_id=tok.pad_token_id,
                    eos_ids=rollout.stop_token_ids(tok, lm))
    return [(measure("smollm2 4x8 T=0.7", model, enc.input_ids, enc.attention_mask, 8, new,
                     sampling, reps), model, 32, enc.input_ids.shape[1] + new)]


def build(preset: str, layers: int, device: torch.device, **overrides):
    """(cfg, card, peft model) of the preset's architecture at `layers` layers (0: full depth),
    random weights in the device's compute dtype (fp32 on CPU, bf16 on CUDA) and its LoRA."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from thrlab.train.model import add_lora
    from thrlab.train.model_cards import card_of
    from thrlab.train.presets import from_preset

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = from_preset(preset, gradient_checkpointing=False, device=device.type,
                      compute_dtype=str(dtype).split(".")[1], **overrides)
    card = card_of(cfg.model)
    d = card.config_dict(layers or card.num_hidden_layers)
    torch.manual_seed(0)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(AutoConfig.for_model(d.pop("model_type"), **d),
                                                dtype=dtype)
    return cfg, card, add_lora(base, cfg).to(device)


def random_prompts(card, n: int, tokens: int, device, g: torch.Generator):
    """(ids, attention mask) of n random prompts, left-padded: lengths from half to all of
    `tokens`."""
    ids = torch.randint(0, card.tokenizer.regular_tokens, (n, tokens), generator=g)
    att = torch.ones_like(ids)
    for i in range(n):
        att[i, :int(torch.randint(0, tokens // 2, (1,), generator=g))] = 0
    return ids.to(device), att.to(device)


def preset_cases(preset: str, layers: int, prompt_tokens: int, new: int, reps: int,
                 engines=ENGINES):
    from thrlab.train import memory

    cfg, card, model = build(preset, layers, torch.device("cpu"), load_in_4bit=False)
    arch = memory.Architecture.of(card.config_dict())
    eval_prompts = cfg.eval_batch_size or memory.eval_batch_size_on_card(
        cfg, arch, prompt_tokens, 80e9)
    eos = list(card.tokenizer.generation_eos_ids)
    g = torch.Generator().manual_seed(0)
    for label, prompts, n, temp, top_p in (
            ("train", cfg.prompts_per_step, cfg.group_size, cfg.temperature, cfg.top_p),
            ("eval", eval_prompts, cfg.eval_samples, cfg.eval_temperature, cfg.eval_top_p)):
        ids, att = random_prompts(card, prompts, prompt_tokens, "cpu", g)
        sampling = dict(do_sample=True, temperature=temp, top_p=top_p, pad_id=0, eos_ids=eos)
        res = measure(f"{preset} {label} {prompts}x{n} T={temp} top_p={top_p}", model, ids, att,
                      n, new, sampling, reps, engines)
        yield res, model, prompts * n, prompt_tokens + new


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", nargs="+", default=["smollm2"],
                    help="smollm2 and/or paper presets (qwen2.5-math-1.5b, ...)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=0, help="default: 64 (smollm2), 6 (presets)")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--quick", action="store_true", help="smoke run: a tiny random model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
              "bandwidth_gbs": bandwidth_gbs(), "cases": []}
    if args.quick:
        from thrlab.train.model import load_policy
        from thrlab.train.presets import from_preset
        from thrlab.train.tiny import save_random_model
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            save_random_model(from_preset("tiny"), tmp)
            model, tok = load_policy(from_preset("tiny"), tmp, torch.device("cpu"))
        enc = tok(["Q: 12*7+35=? A:", "Q: 1*2=? A:"], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        sampling = dict(do_sample=True, temperature=1.0, top_p=0.9, pad_id=tok.pad_token_id,
                        eos_ids=[1, 5])
        runs = [(measure("quick tiny 2x4", model, enc.input_ids, enc.attention_mask, 4, 6,
                         sampling, 1, args.engines), model, 8, 20)]
    else:
        runs = (run for case in args.case for run in (
            smollm2_case(args.reps, args.new_tokens or 64) if case == "smollm2" else
            preset_cases(case, args.layers, args.prompt_tokens, args.new_tokens or 6, args.reps,
                         args.engines)))
    print(f"{report['cpu']}, {args.threads} thread(s), memory bandwidth "
          f"{report['bandwidth_gbs']:.1f} GB/s")
    print(f"{'case':44s} {'engine':9s} {'wall s':>8s} {'steps':>5s} {'ms/step':>8s} "
          f"{'tok/s':>8s} {'x generate':>10s}  same tokens", flush=True)
    for res, model, rows, ctx in runs:
        b = bounds(model, rows, ctx, report["bandwidth_gbs"],
                   gemm_gflops(rows, model.config.hidden_size))
        res["bounds"] = b
        for e, r in res["engines"].items():
            same = r.get("tokens_equal_generate", "")
            print(f"{res['case']:44s} {e:9s} {r['wall_s']:8.2f} {r['steps']:5d} "
                  f"{r['ms_per_step']:8.1f} {r['tokens_per_s']:8.1f} "
                  f"{r.get('speedup_vs_generate', float('nan')):10.2f}  {same}")
        print(f"{'':44s} bounds: bandwidth {b['bandwidth_ms']:.1f} ms/step "
              f"({b['bytes_per_step'] / 1e9:.2f} GB), compute {b['compute_ms']:.1f} ms/step "
              f"({b['flops_per_step'] / 1e9:.1f} GFLOP)", flush=True)
        report["cases"].append(res)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
