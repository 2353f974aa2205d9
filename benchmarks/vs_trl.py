"""thrlab vs TRL: the same tiny GRPO configuration through both trainers, alternately, in one process.

    python benchmarks/vs_trl.py --json                 # embedded tiny model, 4 rounds x 3 steps each
    python benchmarks/vs_trl.py --quick --json         # smoke run: random tiny model, 2 prompts x G=4

Contestants (each owns its own copy of the model, loaded the same way):
  thrlab       thrlab.train.trainer.GRPOTrainer, plain GRPO (thr_mode=off)
  thrlab_thr   the same with THR reweighting on (thr_mode=thr, p=+0.1, exact full vocabulary)
  trl          trl.GRPOTrainer (the `bench` extra) configured to the same algorithm: G, prompts per
               step, max new tokens, temperature 1 / top-p 1 / top-k off, clip eps 0.2, beta = kl_coef
               (k3 KL to the adapters-disabled base, use_bias_correction_kl=False: TRL 1.16's
               default multiplies it by the ratio), loss_type "dapo" (= thrlab's token_mean:
               sum over tokens / tokens in the batch), num_iterations = epochs, mini_batches
               optimizer steps per rollout batch (micro-batches as gradient accumulation), AdamW with thrlab's lr / betas / weight decay, grad-norm clip
               1, constant lr, no vLLM, thrlab's gradient checkpointing setting, no autocast (the
               4-bit layers compute in cfg's dtype); the same 4-bit NF4 base (thrlab.train.model.
               load_base, CPU gradient guard applied) and LoRA r / alpha / dropout / all-linear.
               TRL casts a quantised model's LoRA weights to bf16; they are cast back to fp32 so both
               train the same fp32 adapters. The reward is thrlab's grader, called by both.

Timing: TRL's Trainer loop is the outer loop; a callback at the end of every `--steps` TRL steps
runs `--steps` steps of each thrlab contestant (their order rotating from round to round), so
every round sees the same machine noise. A step's
time is wall-clock from the end of the previous step to the end of this one (TRL: between
`on_step_end` calls, the callback's own time excluded; thrlab: one `train_step` plus its metrics
line). The first `--warmup-rounds` rounds are not counted. `speedup_vs_trl` = median TRL step /
median thrlab step. Per-phase seconds come from thrlab's own timers and from timers wrapped around
TRL's methods (`_generate`, `_calculate_rewards`, `_get_per_token_logps_and_entropies` without grad
= reference pass and with grad = policy forward, backward, optimizer), so the reasons are measured.

Parity (same batch, advantages and adapters: loss and LoRA gradients agree) is a test:
tests/test_integration_trl.py::test_thrlab_loss_and_gradients_equal_trls. Known algorithmic
differences are listed in the JSON (`differences`).
The last line printed is JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings

import torch

from thrlab.train.experiment import build_trainer
from thrlab.plan.profiling import peak_rss_mb, phase_row
from thrlab.train.runs import environment_info
from thrlab.train.tiny import save_random_model

DIFFERENCES = [
    "advantage std: TRL divides by the sample std (Bessel) + 1e-4, thrlab by the population std "
    "+ 1e-6 (docs/method.md section 1); for a group of 8 binary rewards TRL's advantages are sqrt(7/8) = 0.935x "
    "thrlab's. The parity test (tests/test_integration_trl.py) feeds both the same advantages.",
    "positions: TRL's training forward passes no position_ids (0..L-1 including left padding), "
    "thrlab derives them from the attention mask as generate() does; identical when prompts are "
    "unpadded (the tiny task's prompts all have one length).",
    "TRL scores every position through its fused LM head on CPU (prompt positions too, then masks); "
    "thrlab projects only the completion positions.",
    "TRL 1.16's default use_bias_correction_kl=True multiplies the k3 KL by the importance ratio; "
    "the race sets it False (the k3 KL of docs/method.md section 1, as thrlab).",
]


# -- TRL side ---------------------------------------------------------------------------------------
class PhaseTimer:
    """Accumulate wall seconds per name; wrap(obj, method, name_fn) times a bound method."""

    def __init__(self):
        self.acc: dict[str, float] = {}
        self.ended: dict[str, float] = {}  # perf_counter() when each name last finished

    def add(self, name: str, dt: float) -> None:
        self.acc[name] = self.acc.get(name, 0.0) + dt
        self.ended[name] = time.perf_counter()

    def wrap(self, obj, method: str, name_fn) -> None:
        orig = getattr(obj, method)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return orig(*a, **kw)
            finally:
                self.add(name_fn(), time.perf_counter() - t0)

        setattr(obj, method, timed)

    def pop(self) -> dict:
        out, self.acc = self.acc, {}
        return out


def build_trl(cfg, model_path: str, out_dir: str, max_steps: int, timer: PhaseTimer,
              problems=None, grade_fn=None):
    """A trl.GRPOTrainer configured to cfg's GRPO algorithm (see the module docstring)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import GRPOConfig, GRPOTrainer

    from thrlab.train.experiment import make_grade_fn, train_problems
    from thrlab.train.model import guard_cpu_4bit, load_base, load_tokenizer, resolve_device
    from thrlab.tasks.benchmarks import format_prompt

    tok = load_tokenizer(model_path)
    base = load_base(cfg, model_path, resolve_device(cfg))
    problems = problems or train_problems(cfg)
    ds = Dataset.from_list([{"prompt": format_prompt(p.question, cfg.template, tok),
                             "answer": p.answer} for p in problems])
    grade_fn = grade_fn or make_grade_fn(cfg)

    def reward(completions, answer, **_):
        return grade_fn(completions, answer).rewards

    B = cfg.prompts_per_step * cfg.group_size
    mb = min(cfg.micro_batch_size or B, B // cfg.mini_batches)  # sequences per fwd/bwd
    args = GRPOConfig(  # one generation batch of B, mini_batches optimizer steps of B/mini_batches
        output_dir=out_dir, max_steps=max_steps * cfg.mini_batches * cfg.epochs, seed=cfg.seed,
        use_cpu=cfg.device == "cpu", per_device_train_batch_size=mb,
        gradient_accumulation_steps=B // cfg.mini_batches // mb, steps_per_generation=B // mb,
        num_generations=cfg.group_size, num_iterations=cfg.epochs,
        max_completion_length=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
        top_k=0, repetition_penalty=1.0, beta=cfg.kl_coef, epsilon=cfg.clip_eps_low,
        epsilon_high=cfg.clip_eps_high, loss_type="dapo", scale_rewards="group",
        use_bias_correction_kl=False,  # TRL 1.16 default True multiplies the KL by the ratio
        mask_truncated_completions=False, disable_dropout=True, entropy_coef=0.0,
        top_entropy_quantile=1.0, cast_lm_head_to_fp32=False,
        learning_rate=cfg.lr, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        lr_scheduler_type="constant", warmup_steps=0, optim="adamw_torch",
        bf16=False, fp16=False, gradient_checkpointing=cfg.gradient_checkpointing,
        use_vllm=False,
        report_to="none", save_strategy="no", logging_steps=10, log_completions=False,
        dataloader_num_workers=0, remove_unused_columns=False, disable_tqdm=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets, bias="none", task_type="CAUSAL_LM")
    tr = GRPOTrainer(model=base, reward_funcs=reward, args=args, train_dataset=ds,
                     processing_class=tok, peft_config=lora)
    from transformers.trainer_callback import PrinterCallback

    tr.remove_callback(PrinterCallback)  # its log lines would interleave with this script's output
    for p in tr.model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # TRL casts QLoRA adapters to bf16; train fp32 like thrlab
    guard_cpu_4bit(tr.model)
    grad = lambda: "policy_forward" if torch.is_grad_enabled() else "ref_logp"  # noqa: E731
    timer.wrap(tr, "_generate", lambda: "generate")
    timer.wrap(tr, "_calculate_rewards", lambda: "reward")
    timer.wrap(tr, "_get_per_token_logps_and_entropies", grad)
    timer.wrap(tr, "_generate_and_score_completions", lambda: "generate_and_score")
    timer.wrap(tr, "training_step", lambda: "training_step")
    timer.wrap(tr, "compute_loss", lambda: "compute_loss")
    return tr


def trl_phase_row(acc: dict, opt_s: float, step_s: float) -> dict:
    """TRL's step in the phases of step_breakdown (update = policy forward + backward + optimizer)."""
    g = lambda k: acc.get(k, 0.0)  # noqa: E731
    gen_score_rest = g("generate_and_score") - g("generate") - g("reward") - g("ref_logp")
    backward = g("training_step") - g("generate_and_score") - g("compute_loss")
    row = {"generate": g("generate"), "reward": g("reward"), "old_logp": 0.0,
           "ref_logp": g("ref_logp"), "thr": 0.0,
           "update": g("compute_loss") + backward + opt_s, "step": step_s,
           "detail": {"policy_forward": g("policy_forward"),
                      "loss_outside_forward": g("compute_loss") - g("policy_forward"),
                      "backward_and_prepare": backward, "optimizer_and_clip": opt_s,
                      "scoring_bookkeeping": gen_score_rest}}
    row["other"] = step_s - sum(row[k] for k in ("generate", "reward", "old_logp", "ref_logp",
                                                 "thr", "update"))
    return row


# -- the race -------------------------------------------------------------------------------------
def race(cfg, model_path: str, steps: int, rounds: int, warmup_rounds: int, with_thr: bool,
         problems=None, grade_fn=None) -> dict:
    """Run the contestants alternately (module docstring); problems / grader default to cfg's."""
    from transformers import TrainerCallback

    timer = PhaseTimer()
    B = cfg.prompts_per_step * cfg.group_size
    with tempfile.TemporaryDirectory() as d:
        data = dict(problems=problems, grade_fn=grade_fn)
        contestants = {"thrlab": build_trainer(cfg, model_path, f"{d}/thrlab", **data)}
        if with_thr:
            cthr = cfg.replace(thr_mode="thr", thr_p=0.1)
            contestants["thrlab_thr"] = build_trainer(cthr, model_path, f"{d}/thrlab_thr", **data)
        trl_tr = build_trl(cfg, model_path, f"{d}/trl", steps * rounds, timer, **data)
        rows = {k: [] for k in ["trl", *contestants]}

        per_gen = cfg.mini_batches * cfg.epochs

        class Race(TrainerCallback):
            def __init__(self):
                self.last, self.n, self.k, self.opt_s = None, 0, 0, 0.0

            def on_train_begin(self, *a, **kw):
                self.last = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()  # the step's kernels belong to the step
                now = time.perf_counter()
                # after training_step: grad clip, optimizer step, lr scheduler, zero_grad
                self.opt_s += now - timer.ended.get("training_step", now)
                self.k += 1  # TRL optimizer steps; a GRPO step (one rollout batch) has per_gen
                if self.k % per_gen:
                    return
                rows["trl"].append(trl_phase_row(timer.pop(), self.opt_s, now - self.last))
                self.opt_s = 0.0
                self.n += 1
                if self.n % steps == 0:  # thrlab's turn: the same number of steps per contestant
                    names = list(contestants)
                    i = (self.n // steps) % len(names)  # rotate who runs right after TRL
                    for name in names[i:] + names[:i]:
                        tr = contestants[name]
                        for _ in range(steps):
                            t0 = time.perf_counter()
                            stats = tr.train_step()
                            tr.run.append_metrics(stats)
                            if torch.cuda.is_available():
                                torch.cuda.synchronize()
                            row = phase_row(stats, B)
                            row["step"] = time.perf_counter() - t0
                            row["other"] = row["step"] - sum(
                                row[k] for k in ("generate", "reward", "old_logp", "ref_logp",
                                                 "thr", "update"))
                            rows[name].append(row)
                self.last = time.perf_counter()

        trl_tr.add_callback(Race())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trl_tr.train()
        out = {"rows": rows}
        skip = warmup_rounds * steps
        for name, rs in rows.items():
            rs = rs[skip:]
            out[name] = {
                "step_s_median": statistics.median(r["step"] for r in rs),
                "step_s_mean": statistics.fmean(r["step"] for r in rs),
                "phases_s_median": {k: statistics.median(r[k] for r in rs)
                                    for k in ("generate", "reward", "old_logp", "ref_logp", "thr",
                                              "update", "other")},
                "steps_counted": len(rs)}
            if name == "trl":
                out[name]["detail_s_median"] = {
                    k: statistics.median(r["detail"][k] for r in rs) for k in rs[0]["detail"]}
        out["speedup_vs_trl"] = out["trl"]["step_s_median"] / out["thrlab"]["step_s_median"]
        if with_thr:
            out["speedup_vs_trl_thr"] = (out["trl"]["step_s_median"]
                                         / out["thrlab_thr"]["step_s_median"])
        comp = {name: statistics.fmean(
            float(r.get("train/completion_len", 0)) for r in tr.run.metrics())
            for name, tr in contestants.items()}
        out["completion_len_mean"] = comp
    return out


def format_table(res: dict) -> str:
    names = [n for n in ("thrlab", "thrlab_thr", "trl") if n in res]
    lines = [f"{'phase (median s)':<18}" + "".join(f"{n:>12}" for n in names)]
    for k in ("generate", "reward", "old_logp", "ref_logp", "thr", "update", "other"):
        lines.append(f"{k:<18}" + "".join(f"{res[n]['phases_s_median'][k]:>12.4f}" for n in names))
    lines.append(f"{'step':<18}" + "".join(f"{res[n]['step_s_median']:>12.4f}" for n in names))
    lines.append(f"speedup_vs_trl = {res['speedup_vs_trl']:.2f}x"
                 + (f" (with THR: {res['speedup_vs_trl_thr']:.2f}x)"
                    if "speedup_vs_trl_thr" in res else ""))
    lines.append("TRL detail (median s): " + ", ".join(
        f"{k} {v:.4f}" for k, v in res["trl"]["detail_s_median"].items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for both trainers, repeatable")
    ap.add_argument("--steps", type=int, default=3, help="steps per contestant per round")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--warmup-rounds", type=int, default=1, help="first rounds not counted")
    ap.add_argument("--no-thr", action="store_true", help="leave out the thrlab + THR contestant")
    ap.add_argument("--random-model", action="store_true")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: random model, 2 prompts x G=4, 2 rounds x 1 step")
    ap.add_argument("--json", action="store_true", help="(the JSON line is always printed last)")
    args = ap.parse_args()

    from thrlab.train.config import parse_overrides
    from thrlab.train.presets import from_preset
    from thrlab.train.experiment import resolve_model_path

    over = dict(sft_control=False, thr_save_every=0, save_every=10**6, seed=0, device="cpu")
    if args.quick:
        over.update(prompts_per_step=2, group_size=4)
        args.steps, args.rounds, args.warmup_rounds, args.random_model = 1, 2, 1, True
    over.update(parse_overrides(args.set))
    cfg = from_preset(args.preset, **over)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        path = save_random_model(cfg, d) if args.random_model else resolve_model_path(cfg, False)
        res = race(cfg, path, args.steps, args.rounds, args.warmup_rounds, not args.no_thr)
    import trl

    res.update({"preset": cfg.preset, "overrides": over,
                "model": "random" if args.random_model else cfg.model,
                "shape": {"P": cfg.prompts_per_step, "G": cfg.group_size,
                          "T": cfg.max_new_tokens, "B": cfg.prompts_per_step * cfg.group_size},
                "steps_per_round": args.steps, "rounds": args.rounds,
                "warmup_rounds": args.warmup_rounds, "differences": DIFFERENCES,
                "trl_version": trl.__version__, "wall_s": time.perf_counter() - t0,
                "peak_rss_mb": peak_rss_mb(), "machine": environment_info()})
    print(format_table(res))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
