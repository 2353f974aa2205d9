"""How the smollm2-135m preset's task, prompt, temperature and precision were chosen: measured on
SmolLM2-135M-Instruct (make smollm), held-out word problems, strict grading of `#### n`.

    python benchmarks/smollm_design.py                 # all four measurements (~20 min, 2 cores)
    python benchmarks/smollm_design.py --only tiers    # or prompts, temperature, nf4

1. prompts: four phrasings of the request for `#### n` (A: the issue's one-line user
   instruction, B: "Solve it in one line", C: a system turn = thrlab's chat-gsm8k, D: an example
   in the user turn): greedy accuracy, malformed share, mean length on 40 word_add1 problems;
   sampled at 0.7 (8 per problem, 10 problems): Pass@1, Pass@8, share of mixed groups.
2. temperature: chat-gsm8k sampled at 0.4, 0.55, 0.7, 1.0 (8 per problem, 16 problems).
3. tiers: greedy on 40 problems of each tier (word_add1, word_add2, word_mul1).
4. nf4: greedy on 40 word_add1 problems with the base in fp32 and re-quantised to NF4
   (bitsandbytes, as load_in_4bit does).

Sampling is seeded (torch.manual_seed(0) before each call); greedy is deterministic on one machine.
Prints a table and, on its last line, JSON.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from thrlab.tasks.benchmarks import SYSTEM_GSM8K
from thrlab.tasks.task import word_task
from thrlab.train.experiment import resolve_model_path
from thrlab.train.model import dequantized_4bit, load_base, load_tokenizer
from thrlab.train.presets import from_preset

PROMPTS = {  # A: the issue's; C: thrlab's chat-gsm8k
    "A": lambda q: [{"role": "user", "content": f"{q} Put the final answer after ####."}],
    "B": lambda q: [{"role": "user", "content": f"{q}\nSolve it in one line, then write the "
                                                "answer as: #### <number>"}],
    "C": lambda q: [{"role": "system", "content": SYSTEM_GSM8K}, {"role": "user", "content": q}],
    "D": lambda q: [{"role": "user", "content": f"{q} Write the calculation, then the final "
                                                "answer after ####, like this: 2 + 3 = 5\n#### 5"}],
}


def measure(lm, tok, task, problems, turns, *, samples=0, temperature=1.0, max_new=96) -> dict:
    """Greedy (samples=0) or `samples` draws per problem: accuracy, malformed share, lengths."""
    n = max(samples, 1)
    texts = [tok.apply_chat_template(turns(p.question), tokenize=False, add_generation_prompt=True)
             for p in problems for _ in range(n)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(0)
    t0 = time.time()
    with torch.no_grad(), dequantized_4bit(lm):
        kw = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0) if samples else \
            dict(do_sample=False)
        out = lm.generate(**enc, max_new_tokens=max_new, pad_token_id=tok.pad_token_id, **kw)
    comp = out[:, enc.input_ids.shape[1]:]
    res = task.grade(tok.batch_decode(comp, skip_special_tokens=True),
                     [p.answer for p in problems for _ in range(n)])
    r = torch.tensor(res.rewards).view(len(problems), n)
    row = {"accuracy": float(r.mean()), "malformed": res.parse_failures / len(texts),
           "mean_tokens": float((comp != tok.pad_token_id).sum(1).float().mean()),
           "capped": float(((comp != tok.pad_token_id).sum(1) >= max_new).float().mean()),
           "seconds": round(time.time() - t0, 1)}
    if samples:
        row.update(pass_at_n=float(r.max(1).values.mean()),
                   mixed=float(((r.max(1).values > 0) & (r.min(1).values == 0)).float().mean()))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=("prompts", "temperature", "tiers", "nf4"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = from_preset("smollm2-135m")
    path = resolve_model_path(cfg)
    tok = load_tokenizer(path)
    lm = load_base(cfg, path, torch.device("cpu")).eval()
    add1 = word_task("word_add1")
    rows = []
    if args.only in (None, "prompts"):
        for name, turns in PROMPTS.items():
            rows.append(dict(part="prompts", case=f"{name} greedy",
                             **measure(lm, tok, add1, add1.heldout(40), turns)))
            rows.append(dict(part="prompts", case=f"{name} T=0.7",
                             **measure(lm, tok, add1, add1.heldout(10), turns, samples=8,
                                       temperature=0.7)))
    if args.only in (None, "temperature"):
        for temp in (0.4, 0.55, 0.7, 1.0):
            rows.append(dict(part="temperature", case=f"C T={temp}",
                             **measure(lm, tok, add1, add1.heldout(16), PROMPTS["C"], samples=8,
                                       temperature=temp)))
    if args.only in (None, "tiers"):
        for tier in ("word_add1", "word_add2", "word_mul1"):
            task = word_task(tier)
            rows.append(dict(part="tiers", case=f"{tier} greedy",
                             **measure(lm, tok, task, task.heldout(40), PROMPTS["C"])))
    if args.only in (None, "nf4"):
        q4 = load_base(cfg.replace(load_in_4bit=True), path, torch.device("cpu")).eval()
        for name, model in (("fp32", lm), ("nf4", q4)):
            rows.append(dict(part="nf4", case=f"{name} greedy",
                             **measure(model, tok, add1, add1.heldout(40), PROMPTS["C"])))
    cols = ["part", "case", "accuracy", "malformed", "pass_at_n", "mixed", "mean_tokens", "capped",
            "seconds"]
    print(" ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print(" ".join(f"{r.get(c, ''):>12.3f}" if isinstance(r.get(c), float) else
                       f"{str(r.get(c, '')):>12}" for c in cols))
    print(json.dumps({"cpu": platform.processor() or platform.machine(),
                      "threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
