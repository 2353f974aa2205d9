"""Where a GRPO step spends its time: per-phase seconds, generation tokens/s, peak RSS, THR share.

    python benchmarks/step_breakdown.py --preset tiny --json          # the embedded tiny model
    python benchmarks/step_breakdown.py --preset tiny --set mini_batches=2   # off-policy: old pass
    python benchmarks/step_breakdown.py --quick --json                # smoke run (random model)
    python benchmarks/step_breakdown.py --preset tiny --ablation      # before/after of each change

Runs thrlab's own GRPOTrainer (`train_step`, the real rollout, grading, reference pass and update)
with THR on (`thr_mode=thr`, `thr_p=0.1`, exact full vocabulary) on the preset's model, and reads
the phase timers the trainer logs. Phases per step (seconds, median over the measured steps after
`--warmup` discarded ones):

  generate     sampling P x G completions (`time/generate`)
  reward       grading them (`time/reward`)
  old_logp     old-policy log-probs + hidden states (`time/old_logp`; 0 on on-policy steps, where
               the update pass is the old-policy pass and THR reads its hidden states)
  ref_logp     reference log-probs, adapters disabled (`time/ref_logp`)
  thr          token hidden rewards and the reweighting (`time/thr`)
  update       forward + backward + optimizer step, THR excluded (`time/update - time/thr`
               on on-policy steps, where THR runs inside the update)
  other        the rest of `time/step` (advantages, bookkeeping)

`gen_tokens_per_s` counts real completion tokens (EOS included, padding not) per generation second;
`thr_overhead_frac` = sum of THR time / sum of step time over the measured steps (and the median of
the per-step ratio). `peak_rss_mb` is the process's peak resident memory (ru_maxrss), model load
included. The last line printed is JSON.

`--ablation` instead times each speed change against what it replaced, alternately on the same
batch of the preset (`--reps` rounds, medians), and checks the results are unchanged:
  generate      transformers' generate() on G copies of each prompt with bnb's per-call 4-bit
                path (before) / + the shared-prefill sampling loop / + weights dequantised once
                per call (now); tokens and the RNG state after must be equal
  ref pass      completion_forward without grad, as one plain pass (before) / now (shared
                prompts); log-probs must be equal
  update pass   forward + backward, plain (before) / now; values equal, LoRA gradients compared
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from thrlab.train.experiment import build_trainer
from thrlab.plan.profiling import PHASES, peak_rss_mb, phase_row, summarise
from thrlab.train.runs import environment_info
from thrlab.train.tiny import save_random_model


def run(cfg, model_path: str, steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tr = build_trainer(cfg, model_path, os.path.join(d, "run"))
        B = cfg.prompts_per_step * cfg.group_size
        rows = []
        for i in range(warmup + steps):
            stats = tr.train_step()
            if i >= warmup:
                rows.append(phase_row(stats, B))
    return {"rows": rows, **summarise(rows)}


def plain_completion_forward(model, ids, att, lp: int, temperature: float,
                             need_entropy: bool = True) -> dict:
    """completion_forward as it was: one unshared pass, (B, T, V) logits (the 'before')."""
    from thrlab.train.model import lm_parts

    backbone, lm_head = lm_parts(model)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    h = backbone(input_ids=ids, attention_mask=att, position_ids=pos,
                 use_cache=False).last_hidden_state[:, lp - 1:-1]  # (B, T, H)
    logits = lm_head(h).float() / temperature  # (B, T, V)
    logz = torch.logsumexp(logits, dim=-1)
    out = {"logp": logits.gather(-1, ids[:, lp:, None]).squeeze(-1) - logz}
    if need_entropy:
        with torch.no_grad():
            out["entropy"] = logz - (torch.softmax(logits, -1) * logits).sum(-1)
    return out


def ablation(cfg, model_path: str, reps: int) -> dict:
    """Before/after timings of the generation and forward-pass changes (module docstring)."""
    from thrlab.train import rollout
    from thrlab.train.experiment import train_problems
    from thrlab.train.model import completion_forward, load_policy, reference_policy, resolve_device
    from thrlab.tasks.benchmarks import format_prompt

    model, tok = load_policy(cfg, model_path, resolve_device(cfg))
    prompts = [format_prompt(p.question, cfg.template, tok)
               for p in train_problems(cfg)[:cfg.prompts_per_step]]
    kw = dict(n=cfg.group_size, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
              max_new_tokens=cfg.max_new_tokens)
    variants = {"before": (False, False), "shared_prefill": (True, False), "now": (True, True)}
    gen = {k: [] for k in variants}
    out = {}
    for rep in range(reps):
        for name, (shared, dq) in variants.items():
            torch.manual_seed(rep)
            t0 = time.perf_counter()
            r = rollout.generate(model, tok, prompts, engine="auto" if shared else "generate",
                                 dequantize=dq, **kw)
            gen[name].append(time.perf_counter() - t0)
            out[name] = (r, torch.get_rng_state())
        same = all(torch.equal(out["before"][0].tokens, out[k][0].tokens)
                   and torch.equal(out["before"][1], out[k][1]) for k in variants)
        if not same:
            raise AssertionError("a generation variant changed the sampled tokens")
    r = out["now"][0]
    args = (r.input_ids, r.attention_mask, r.prompt_len, cfg.temperature)
    params = [p for p in model.parameters() if p.requires_grad]
    fwd = {"before": [], "now": []}
    upd = {"before": [], "now": []}
    res = {}
    for rep in range(reps):
        for name, fn in (("before", plain_completion_forward), ("now", completion_forward)):
            t0 = time.perf_counter()
            with torch.no_grad(), reference_policy(model):
                ref = fn(model, *args, need_entropy=False)["logp"]
            fwd[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            o = fn(model, *args)
            (o["logp"] * r.mask).sum().backward()
            upd[name].append(time.perf_counter() - t0)
            res[name] = (ref, o["logp"].detach(), [p.grad.clone() for p in params])
    model.zero_grad(set_to_none=True)
    b, n = res["before"], res["now"]
    scale = max(float(g.abs().max()) for g in b[2])
    med = statistics.median
    table = {
        "generate": {k: med(v) for k, v in gen.items()},
        "ref_pass": {k: med(v) for k, v in fwd.items()},
        "update_fwd_bwd": {k: med(v) for k, v in upd.items()}}
    for v in table.values():
        v["speedup"] = v["before"] / v["now"]
    table["exact"] = {"generate_tokens_and_rng_equal": True,
                      "ref_logp_equal": bool(torch.equal(b[0], n[0])),
                      "update_logp_equal": bool(torch.equal(b[1], n[1])),
                      "lora_grad_max_diff_over_max": max(
                          float((x - y).abs().max()) for x, y in zip(b[2], n[2])) / scale}
    table["batch"] = {"B": len(r.tokens), "L": r.input_ids.shape[1], "prompt_len": r.prompt_len,
                      "reps": reps}
    return table



def format_table(res: dict) -> str:
    med, frac = res["phases_s"], res["phase_frac"]
    lines = [f"{'phase':<10} {'median s':>9} {'share':>7}"]
    for k in PHASES:
        lines.append(f"{k:<10} {med[k]:>9.4f} {100 * frac[k]:>6.1f}%")
    lines.append(f"{'step':<10} {med['step']:>9.4f}")
    lines.append(f"generation {res['gen_tokens_per_s']:.0f} tokens/s; THR share "
                 f"{100 * res['thr_overhead_frac']:.2f}% (median per step "
                 f"{100 * res['thr_overhead_frac_median']:.2f}%); peak RSS "
                 f"{res['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--method", default="thr_exploit",
                    help="a thrlab.train.presets.METHODS recipe (default: THR on, p = +0.1)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, repeatable (e.g. --set mini_batches=2)")
    ap.add_argument("--steps", type=int, default=10, help="measured steps")
    ap.add_argument("--warmup", type=int, default=2, help="steps run first and not measured")
    ap.add_argument("--random-model", action="store_true",
                    help="a random model of the tiny shape instead of the cold-started one")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: random model, 2 prompts x G=4, 2 steps after 1 warm-up")
    ap.add_argument("--ablation", action="store_true",
                    help="time each speed change against what it replaced (module docstring)")
    ap.add_argument("--reps", type=int, default=5, help="ablation rounds")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()

    from thrlab.train.config import parse_overrides
    from thrlab.train.presets import from_preset
    from thrlab.train.experiment import resolve_model_path

    over = dict(sft_control=False, thr_save_every=0, save_every=10**6, seed=0)
    if args.quick:
        over.update(prompts_per_step=2, group_size=4)
        args.steps, args.warmup, args.random_model = 2, 1, True
    over.update(parse_overrides(args.set))
    cfg = from_preset(args.preset, args.method, **over)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as d:
        if args.random_model:
            path = save_random_model(cfg, d)
        else:
            path = resolve_model_path(cfg, progress=False)
        t0 = time.perf_counter()
        if args.ablation:
            ab = ablation(cfg, path, args.reps)
            ab.update(preset=cfg.preset, model="random" if args.random_model else cfg.model,
                      wall_s=time.perf_counter() - t0, machine=environment_info())
            for k in ("generate", "ref_pass", "update_fwd_bwd"):
                print(f"{k:<16} before {ab[k]['before']:.4f} s  now {ab[k]['now']:.4f} s  "
                      f"({ab[k]['speedup']:.2f}x)"
                      + (f"  shared prefill only {ab[k]['shared_prefill']:.4f} s"
                         if "shared_prefill" in ab[k] else ""))
            print("exact: " + ", ".join(f"{k} {v}" for k, v in ab["exact"].items()))
            print(json.dumps(ab))
            return
        res = run(cfg, path, args.steps, args.warmup)
        wall = time.perf_counter() - t0
    res = {"preset": cfg.preset, "method": args.method, "overrides": over,
           "model": "random" if args.random_model else cfg.model,
           "shape": {"P": cfg.prompts_per_step, "G": cfg.group_size, "T": cfg.max_new_tokens,
                     "B": cfg.prompts_per_step * cfg.group_size},
           "steps": args.steps, "warmup": args.warmup, "wall_s": wall, **res,
           "peak_rss_mb": peak_rss_mb(), "machine": environment_info()}
    print(format_table(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
