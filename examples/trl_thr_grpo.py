"""THR-GRPO with TRL beyond one GPU: a thrlab preset + method, run by TRL's GRPOTrainer.

One process (CPU smoke run on a local tiny model):
    python examples/trl_thr_grpo.py --preset tiny --method thr_exploit --set model=DIR --set steps=2

Four GPUs, DDP, vLLM generation colocated with training (see README, "Beyond one GPU"):
    accelerate launch --multi_gpu --num_processes 4 examples/trl_thr_grpo.py \
        --preset qwen2.5-math-1.5b --method thr_explore --set load_in_4bit=false \
        --trl use_vllm=true --trl vllm_mode=colocate --trl vllm_gpu_memory_utilization=0.3

Every thrlab setting goes through --set (the Config, mapped by grpo_config); TRL-only knobs
(vLLM, logging, checkpoints) through --trl KEY=VALUE (parsed as JSON when possible). Writes the
LoRA adapter to OUTPUT_DIR/adapter, which `python -m thrlab evaluate --adapter` scores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def parse_trl(pairs: list[str]) -> dict:
    """--trl KEY=VALUE pairs -> kwargs; values parsed as JSON (true, 0.3, "x"), else strings."""
    out = {}
    for p in pairs:
        k, _, v = p.partition("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def dataset(cfg, tok):
    """Training prompts (thrlab's template) and gold answers as a datasets.Dataset."""
    from datasets import Dataset

    from thrlab.train.experiment import train_problems
    from thrlab.tasks.benchmarks import SYSTEM_BOXED, format_prompt

    probs = train_problems(cfg)
    if cfg.template == "chat":  # conversational: TRL renders the template (one BOS, not two)
        prompts = [[{"role": "system", "content": SYSTEM_BOXED},
                    {"role": "user", "content": p.question}] for p in probs]
    else:
        prompts = [format_prompt(p.question, cfg.template, tok) for p in probs]
    return Dataset.from_dict({"prompt": prompts, "answer": [p.answer for p in probs]})


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--method", default="thr_exploit", help="a THR recipe of thrlab.train.presets.METHODS")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--trl", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--output-dir", default="runs/trl")
    args = ap.parse_args(argv)

    from accelerate import PartialState

    from thrlab.train.checkpoint import save_adapter
    from thrlab.train.config import parse_overrides
    from thrlab.train.presets import from_preset
    from thrlab.train.experiment import make_grade_fn, resolve_model_path
    from thrlab.integrations.trl import THRGRPOTrainer, grpo_config
    from thrlab.train.model import load_policy, resolve_device

    cfg = from_preset(args.preset, args.method, **parse_overrides(args.set))
    trl_kwargs = dict(dict(report_to="none", logging_steps=1, save_strategy="no"),
                      **parse_trl(args.trl))
    train_args = grpo_config(cfg, args.output_dir, **trl_kwargs)  # before any CUDA work
    device = resolve_device(cfg)
    if device.type == "cuda":  # one GPU per rank: the 4-bit loader places the whole model
        device = torch.device("cuda", PartialState().local_process_index)
    model, tok = load_policy(cfg, resolve_model_path(cfg), device)
    grade = make_grade_fn(cfg)

    def correct(completions, answer, **_):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return grade(texts, list(answer)).rewards

    trainer = THRGRPOTrainer(model=model, reward_funcs=correct, args=train_args,
                             train_dataset=dataset(cfg, tok), processing_class=tok,
                             thr_config=cfg)
    trainer.train()
    if trainer.accelerator.is_main_process:
        save_adapter(trainer.accelerator.unwrap_model(trainer.model),
                     Path(args.output_dir) / "adapter")
        (Path(args.output_dir) / "thrlab_config.json").write_text(cfg.to_json())
    return {"log_history": trainer.state.log_history}


if __name__ == "__main__":
    main()
