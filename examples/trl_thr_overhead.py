"""What THR adds to a TRL GRPO step: plain trl.GRPOTrainer vs THRGRPOTrainer, same data and seed.

    python examples/trl_thr_overhead.py [--hidden 128 --layers 4] [--steps 6] [--out FILE.json]

Builds a random Qwen2-shaped model (thrlab.train.tiny, char tokenizer) of the given width, loads it
4-bit NF4 + LoRA with thrlab.train.model.load_policy, and runs `steps` steps of each trainer with TRL's
own sampling and a reward a random model hits half the time (even completion length). Reports the
TRL step_time per generation batch of each (first one dropped: warm-up) and THR's two parts
(medians): time/thr_backbone
(the extra no-grad backbone pass) and time/thr (thrlab.core.thr on whole groups). One process: the
data-parallel exchange adds nothing when each rank holds whole groups (see README).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def even_length(completions, **_):
    return [float(len(c) % 2 == 0) for c in completions]


def run(cls, cfg, model_dir: str, out_dir: str) -> list[dict]:
    from datasets import Dataset

    from thrlab.integrations.trl import THRGRPOTrainer, grpo_config
    from thrlab.train.model import load_policy
    from thrlab.tasks.arithmetic import arithmetic_problems
    from thrlab.tasks.benchmarks import format_prompt

    torch.manual_seed(cfg.seed)
    model, tok = load_policy(cfg, model_dir, torch.device("cpu"))
    probs = arithmetic_problems(cfg.prompts_per_step * cfg.steps, "train", seed=0)
    ds = Dataset.from_dict({"prompt": [format_prompt(p.question, "plain") for p in probs]})
    args = grpo_config(cfg, out_dir, report_to="none", save_strategy="no", logging_steps=1,
                       disable_tqdm=True)
    kw = {"thr_config": cfg} if cls is THRGRPOTrainer else {}
    tr = cls(model=model, reward_funcs=even_length, args=args, train_dataset=ds,
             processing_class=tok, **kw)
    tr.train()
    return [h for h in tr.state.log_history if "step_time" in h]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--mini-batches", type=int, default=1,
                    help="optimizer steps per generation; > 1 makes TRL run its own old-policy "
                         "pass, which THR then reuses")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)

    from trl import GRPOTrainer

    from thrlab.train.presets import from_preset
    from thrlab.integrations.trl import THRGRPOTrainer
    from thrlab.train.tiny import save_random_model

    cfg = from_preset("tiny", "thr_exploit", tiny_hidden=a.hidden, tiny_layers=a.layers,
                      tiny_ffn=4 * a.hidden, steps=a.steps, prompts_per_step=a.prompts,
                      group_size=a.group_size, max_new_tokens=a.max_new_tokens,
                      mini_batches=a.mini_batches, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        save_random_model(cfg, tmp)
        logs = {name: run(cls, cfg, tmp, str(Path(tmp) / name))
                for name, cls in (("trl", GRPOTrainer), ("thr", THRGRPOTrainer))}

    def per_rollout(name):  # wall seconds per generation batch (= per thrlab step), warm-up dropped
        return sum(h["step_time"] for h in logs[name][a.mini_batches:]) / (a.steps - 1)

    def med(name, key):  # TRL logs every optimizer step; THR's times once per generation
        vals = [h[key] for h in logs[name] if key in h]
        return statistics.median(vals[1:] if len(vals) > 2 else vals)

    res = {"shape": dict(hidden=a.hidden, layers=a.layers, rows=a.prompts * a.group_size,
                         new_tokens=a.max_new_tokens, mini_batches=a.mini_batches,
                         threads=torch.get_num_threads()),
           "step_s_trl": per_rollout("trl"), "step_s_thr": per_rollout("thr"),
           "thr_backbone_s": med("thr", "time/thr_backbone"), "thr_s": med("thr", "time/thr")}
    res["thr_parts_frac_of_thr_step"] = (res["thr_backbone_s"] + res["thr_s"]) / res["step_s_thr"]
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
