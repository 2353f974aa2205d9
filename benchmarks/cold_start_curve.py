"""Supervised learning curve of the tiny model on a synthetic task (why the tiny default is a*b).

    python benchmarks/cold_start_curve.py --op mul --steps 800 --every 100
    python benchmarks/cold_start_curve.py --op mul_add --steps 1500 --every 300
    python benchmarks/cold_start_curve.py --op mul_chain --steps 1500 --every 100 --samples 16

Trains exactly like `thrlab.train.tiny.cold_start` (fp32, all weights, target tokens only; the
strategies task's targets are chains of a strategy drawn per example) and evaluates greedy
accuracy, units-digit accuracy and pass@1/pass@n (--samples samples, T=0.6, top-p 0.95) on 500
held-out problems every --every steps; on the strategies task also the entropy (bits) of the
samples' strategy labels. Prints a table and, on its last line, JSON.
"""
from __future__ import annotations

import argparse
import json
import random
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="mul")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--arch", default="qwen2", choices=("qwen2", "llama"))
    args = ap.parse_args()

    from thrlab.core.stats import label_entropy
    from thrlab.tasks.chains import strategy_of
    from thrlab.train.presets import from_preset
    from thrlab.train.evaluate import summarise
    from thrlab.tasks.rewards import extract_answer
    from thrlab.train.rollout import generate
    from thrlab.tasks.arithmetic import arithmetic_problems
    from thrlab.tasks.benchmarks import format_prompt
    from thrlab.train.tiny import build_model, build_tokenizer, sft_loop

    chain = args.op == "mul_chain"
    style, new_tokens, n = ("chain", 28, args.samples) if chain else ("plain", 8, args.samples)
    cfg = from_preset("tiny", arith_op=args.op, sft_lr=args.lr, sft_batch=args.batch,
                      answer_style=style, tiny_arch=args.arch)
    tok = build_tokenizer()
    model = build_model(cfg, len(tok))
    pool = arithmetic_problems(None, "train", seed=cfg.sft_seed, op=args.op)
    held = arithmetic_problems(500, "heldout", seed=0, op=args.op)
    prompts = [format_prompt(p.question, "plain") for p in held]
    rng = random.Random(cfg.sft_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rows, t0 = [], time.time()

    def measure(step: int, loss: float) -> None:
        if step % args.every:
            return
        torch.manual_seed(0)
        g = generate(model, tok, prompts, n=1, do_sample=False, temperature=1.0, top_p=1.0,
                     max_new_tokens=new_tokens)
        s = generate(model, tok, prompts, n=n, do_sample=True, temperature=0.6, top_p=0.95,
                     max_new_tokens=new_tokens)
        model.train()
        ans = [extract_answer(t, style) for t in g.texts]
        greedy = [float(a == p.answer) for a, p in zip(ans, held)]
        samples = [[float(extract_answer(s.texts[i * n + j], style) == p.answer)
                    for j in range(n)] for i, p in enumerate(held)]
        summ = summarise(greedy, samples)
        units = sum(a[-1:] == p.answer[-1] for a, p in zip(ans, held)) / len(held)
        rows.append({"step": step, "loss": loss, "greedy_acc": summ["greedy_acc"],
                     "units_digit_acc": units, "pass@1": summ["pass@1"],
                     f"pass@{n}": summ[f"pass@{n}"], "wall_s": time.time() - t0})
        if chain:
            rows[-1]["strategy_entropy"] = label_entropy(
                [strategy_of(held[i // n].question, t) for i, t in enumerate(s.texts)])
        print(" ".join(f"{k}={v:.3f}" for k, v in rows[-1].items()), flush=True)

    sft_loop(model, tok, opt, pool, rng, steps=args.steps, batch_size=args.batch,
             template="plain", op=args.op, progress=False, on_step=measure)
    print(json.dumps({"op": args.op, "arch": args.arch, "lr": args.lr, "batch": args.batch,
                      "samples": n, "rows": rows}))


if __name__ == "__main__":
    main()
