"""Decoding on a GPU at each paper preset's full size: ms per decode step against the card's
bandwidth bound, engine against engine, and a full evaluation's projected time.

    python benchmarks/gpu_decode.py                       # every paper preset, on the visible GPU
    python benchmarks/gpu_decode.py --presets qwen2.5-math-1.5b --new-tokens 128
    python benchmarks/gpu_decode.py --quick               # CPU smoke run (0.5B's width, 1 layer)

Per preset: its architecture at full depth (thrlab.train.model_cards) with random bf16 weights
and the preset's LoRA. A 4-bit preset decodes from the weights dequantised once per call
(model.dequantized_4bit), so bf16 weights are what its decode loop reads. Three batch shapes, each
through transformers' generate() and thrlab's loop (exact and fast samplers;
benchmarks/decode_speed.py's `measure`): the training rollout (prompts_per_step x group_size
rows), an evaluation's sampled call and its greedy call (eval_batch_size prompts from the memory
plan on this card x eval_samples rows, and x 1). A random model never ends a row: every step
holds every row (the worst case of a real run).

The bound: one decode step reads every weight once (bf16) plus the KV cache at the mean context
of the measured steps; bytes / the card's bandwidth (a table by name, or --bandwidth-gbs).
The projection: an evaluation of the preset's eval sets (`--problems`, 1,546 for the six paper
sets) runs ceil(problems / eval_batch_size) greedy calls and as many sampled ones; a call costs
its prefill plus steps x ms per step, with steps = eval_max_new_tokens (3,072: every row to the
cap, an upper bound) and --mean-steps (a long-tail guess: with finished rows dropped a call costs
about its rows' mean length at full width). Also checks on the card that model.dequantized_4bit
gives bitsandbytes' own outputs when bitsandbytes is importable. The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import time

import torch

from decode_speed import bounds, build, measure, random_prompts
from gpu_check import card_bandwidth


def dequant_check(device: torch.device) -> dict:
    """model.dequantized_4bit against bitsandbytes' own Linear4bit on this device: outputs of
    a (64 x 1536) batch through a 1536 -> 8960 NF4 layer, bit for bit."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {"skipped": "bitsandbytes is not importable"}
    from thrlab.train.model import dequantized_4bit

    torch.manual_seed(0)
    lin = torch.nn.Linear(1536, 8960, bias=False, dtype=torch.bfloat16)
    q = bnb.nn.Linear4bit(1536, 8960, bias=False, compute_dtype=torch.bfloat16,
                          quant_type="nf4")
    q.weight = bnb.nn.Params4bit(lin.weight.data, requires_grad=False, quant_type="nf4")
    q = q.to(device)
    wrapper = torch.nn.Sequential(q)
    x = torch.randn(64, 1536, dtype=torch.bfloat16, device=device)
    with torch.no_grad():
        want = q(x)
        with dequantized_4bit(wrapper):
            got = q(x)
            t0 = time.perf_counter()
            for _ in range(20):
                q(x)
            _sync()
            once = (time.perf_counter() - t0) / 20
        t0 = time.perf_counter()
        for _ in range(20):
            q(x)
        _sync()
        per_call = (time.perf_counter() - t0) / 20
    return {"bit_identical": bool(torch.equal(got, want)),
            "max_abs_diff": float((got.float() - want.float()).abs().max()),
            "ms_dequantised_once": 1e3 * once, "ms_bnb_per_call": 1e3 * per_call}


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    from thrlab.plan.rehearsal import PAPER_PRESETS
    from thrlab.train import memory
    from thrlab.train.model import available_memory

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", nargs="+", default=PAPER_PRESETS)
    ap.add_argument("--layers", type=int, default=0, help="0 = full depth")
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--engines", nargs="+", default=["generate", "exact", "fast"])
    ap.add_argument("--problems", type=int, default=1546)
    ap.add_argument("--mean-steps", type=int, default=1000)
    ap.add_argument("--bandwidth-gbs", type=float, default=None)
    ap.add_argument("--quick", action="store_true", help="CPU smoke: 1 layer, 2 prompts")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    bw = card_bandwidth(name, args.bandwidth_gbs) or (10.0 if device.type == "cpu" else None)
    report = {"device": name, "bandwidth_gbs": bw, "torch": torch.__version__, "presets": {},
              "dequantized_4bit": dequant_check(device)}
    print(f"{name}: bandwidth {bw} GB/s; dequantised once vs bnb: {report['dequantized_4bit']}",
          flush=True)
    # the smoke run takes the narrowest paper preset (its real vocabulary, one layer)
    for preset in ["qwen2.5-0.5b-instruct"] if args.quick else args.presets:
        t0 = time.perf_counter()
        cfg, card, model = build(preset, 1 if args.quick else args.layers, device)
        arch = memory.Architecture.of(card.config_dict())
        eval_prompts = cfg.eval_batch_size or memory.eval_batch_size(
            cfg, arch, args.prompt_tokens, available_memory(device), device.type)
        if args.quick:
            eval_prompts = 2
        eos = list(card.tokenizer.generation_eos_ids)
        shapes = {"train": (2 if args.quick else cfg.prompts_per_step,
                            2 if args.quick else cfg.group_size, cfg.temperature, cfg.top_p),
                  "eval_sampled": (eval_prompts, 2 if args.quick else cfg.eval_samples,
                                   cfg.eval_temperature, cfg.eval_top_p),
                  "eval_greedy": (eval_prompts, 1, None, None)}
        new = 3 if args.quick else args.new_tokens
        out = {"eval_batch_size": eval_prompts, "layers": model.config.num_hidden_layers}
        for label, (p, n, temp, top_p) in shapes.items():
            ids, att = random_prompts(card, p, args.prompt_tokens, device,
                                      torch.Generator().manual_seed(0))
            sampling = dict(do_sample=temp is not None, temperature=temp or 1.0,
                            top_p=top_p or 1.0, pad_id=0, eos_ids=eos)
            engines = [e for e in args.engines if temp is not None or e != "fast"]
            res = measure(f"{preset} {label}", model, ids, att, n, new, sampling, 1, engines)
            b = bounds(model, p * n, args.prompt_tokens + new // 2, bw, float("inf"))
            b["bandwidth_ms"] *= 0.5 if device.type == "cuda" else 1.0  # bf16: half of fp32
            res["bounds"] = b
            out[label] = res
            for e, r in res["engines"].items():
                print(f"{preset:24s} {label:13s} {p * n:5d} rows {e:9s} {r['ms_per_step']:8.2f} "
                      f"ms/step (bound {b['bandwidth_ms']:.2f}), prefill {r['prefill_s']:.2f} s,"
                      f" {r['tokens_per_s']:.0f} tokens/s", flush=True)
        calls = math.ceil(args.problems / eval_prompts)
        proj = {}
        for e in args.engines:
            if e == "fast":
                greedy = out["eval_greedy"]["engines"]["exact"]  # greedy draws nothing
            else:
                greedy = out["eval_greedy"]["engines"][e]
            sampled = out["eval_sampled"]["engines"][e]
            for steps, key in ((cfg.eval_max_new_tokens, "to_the_cap_h"),
                               (args.mean_steps, "mean_steps_h")):
                cost = sum(r["prefill_s"] + steps * r["ms_per_step"] / 1e3
                           for r in (greedy, sampled))
                proj.setdefault(e, {})[key] = calls * cost / 3600
        out["evaluation_projection"] = dict(proj, calls=calls, problems=args.problems,
                                            mean_steps=args.mean_steps)
        out["wall_s"] = time.perf_counter() - t0
        print(f"{preset}: evaluation of {args.problems} problems in {calls} x 2 calls: "
              + "; ".join(f"{e} {v['to_the_cap_h']:.2f} h to the cap, {v['mean_steps_h']:.2f} h "
                          f"at {args.mean_steps} steps" for e, v in proj.items()), flush=True)
        report["presets"][preset] = out
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(report, default=float))


if __name__ == "__main__":
    main()
