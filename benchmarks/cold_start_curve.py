"""Supervised learning curve of the tiny model on a synthetic task (why the tiny default is a*b).

    python benchmarks/cold_start_curve.py --op mul --steps 800 --every 100
    python benchmarks/cold_start_curve.py --op mul_add --steps 1500 --every 300

Trains exactly like `thrlab.tiny.cold_start` (fp32, all weights, answer tokens only) and evaluates
greedy accuracy, units-digit accuracy and pass@1/pass@8 (8 samples, T=0.6, top-p 0.95) on 500
held-out problems every --every steps. Prints a table and, on its last line, JSON.
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
    args = ap.parse_args()

    from thrlab.config import from_preset
    from thrlab.evaluate import summarise
    from thrlab.rollout import generate
    from thrlab.tasks import arithmetic_problems, format_prompt
    from thrlab.tiny import build_model, build_tokenizer, sft_batch, sft_loss

    cfg = from_preset("tiny", arith_op=args.op, sft_lr=args.lr, sft_batch=args.batch)
    tok = build_tokenizer()
    model = build_model(cfg, len(tok))
    pool = arithmetic_problems(None, "train", seed=cfg.sft_seed, op=args.op)
    held = arithmetic_problems(500, "heldout", seed=0, op=args.op)
    prompts = [format_prompt(p.question, "plain") for p in held]
    rng = random.Random(cfg.sft_seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rows, t0 = [], time.time()
    for step in range(1, args.steps + 1):
        ids, attn, labels = sft_batch(tok, rng.sample(pool, args.batch), "plain")
        loss = sft_loss(model, ids, attn, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % args.every:
            continue
        torch.manual_seed(0)
        g = generate(model, tok, prompts, n=1, do_sample=False, temperature=1.0, top_p=1.0,
                     max_new_tokens=8)
        s = generate(model, tok, prompts, n=8, do_sample=True, temperature=0.6, top_p=0.95,
                     max_new_tokens=8)
        model.train()
        greedy = [float(t.strip() == p.answer) for t, p in zip(g.texts, held)]
        samples = [[float(s.texts[i * 8 + j].strip() == p.answer) for j in range(8)]
                   for i, p in enumerate(held)]
        summ = summarise(greedy, samples)
        units = sum(t.strip()[-1:] == p.answer[-1] for t, p in zip(g.texts, held)) / len(held)
        rows.append({"step": step, "loss": loss.item(), "greedy_acc": summ["greedy_acc"],
                     "units_digit_acc": units, "pass@1": summ["pass@1"],
                     "pass@8": summ["pass@8"], "wall_s": time.time() - t0})
        print(" ".join(f"{k}={v:.3f}" for k, v in rows[-1].items()), flush=True)
    print(json.dumps({"op": args.op, "lr": args.lr, "batch": args.batch, "rows": rows}))


if __name__ == "__main__":
    main()
