"""The GRPO loop, sequencing the pure pieces of `loss` like the paper's algorithm box:

  for each step:
    1. sample P prompts, G completions each (old policy)          -> rollout.generate
    2. grade completions, group advantages                        -> rewards.grade, loss.group_advantages
       (dynamic sampling: drop all-equal groups, draw more prompts; Pass@K / mixed estimators)
    3. old-policy pass (log-probs, hidden states) unless on-policy -> model.completion_forward
       reference pass (adapters disabled) when kl_coef > 0
    4. per-token advantages (THR reweighting plugs in here)       -> token_advantages
    5. epochs x mini-batches of clipped-surrogate updates          -> loss.policy_loss, loss.aggregate
       (KL-Cov / Clip-Cov inside policy_loss; forking tokens restrict the loss mask)
  checkpoint adapter + optimizer + RNG every save_every steps; metrics.jsonl every step.
"""
from __future__ import annotations

import logging
import math
import random
import time

import torch

from .config import Config
from .faults import failpoint
from .guards import (NonFiniteError, OutOfMemoryReport, is_nonfinite_sampling_error, is_oom,
                     oom_message)
from .loss import (aggregate, group_advantages, passk_advantages, passk_mixed_advantages,
                   policy_loss, top_tokens)
from .model import completion_forward, lm_parts, reference_policy
from .rollout import cat_rollouts, generate
from .runs import RunDir
from .tasks import format_prompt

log = logging.getLogger(__name__)


def make_optimizer(model, cfg: Config):
    """AdamW over the trainable (LoRA) parameters; returns (params, optimizer)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (expected LoRA adapters)")
    return params, torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                     weight_decay=cfg.weight_decay)


class GRPOTrainer:
    def __init__(self, cfg: Config, model, tok, problems: list, run: RunDir, grade_fn):
        self.cfg, self.model, self.tok, self.problems, self.run = cfg, model, tok, problems, run
        self.grade_fn = grade_fn
        self.params, self.opt = make_optimizer(model, cfg)
        self.step = 0
        self.cursor = 0  # position in the seeded prompt order (saved with checkpoints)
        self._order: tuple[int, list[int]] = (-1, [])  # (pass, its shuffled order), cached
        self.nonfinite_steps = 0  # steps skipped for NaN/inf (saved with checkpoints)
        self.micro_batch_size = cfg.micro_batch_size  # halved on OOM (oom_halve_micro_batch)
        self._thr_parts: list = []  # THR of the current update's micro-batches (token records)
        self.device = next(model.parameters()).device

    # -- 1-2. rollouts and rewards -------------------------------------------------------------
    def next_prompts(self, n: int) -> list:
        """Next n prompts of a seeded order that is reshuffled every pass over the data."""
        out = []
        while len(out) < n:
            epoch, pos = divmod(self.cursor, len(self.problems))
            if self._order[0] != epoch:  # one shuffle per pass (a function of seed and pass)
                order = list(range(len(self.problems)))
                random.Random(self.cfg.seed * 100_003 + epoch).shuffle(order)
                self._order = (epoch, order)
            out.append(self.problems[self._order[1][pos]])
            self.cursor += 1
        return out

    def rollout(self):
        """Generate and grade P groups (with dynamic sampling, only groups with a non-zero
        advantage under the run's estimator)."""
        cfg, G = self.cfg, self.cfg.group_size
        kept, timers, rounds, grading = [], {"time/generate": 0.0, "time/reward": 0.0}, 0, {}
        n_kept = 0
        while True:
            rounds += 1
            probs = self.next_prompts(cfg.prompts_per_step)
            t0 = time.perf_counter()
            r = generate(self.model, self.tok,
                         [format_prompt(p.question, cfg.template, self.tok) for p in probs],
                         n=G, do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p,
                         max_new_tokens=cfg.max_new_tokens)
            t1 = time.perf_counter()
            failpoint("generate")
            res = self.grade_fn(r.texts, [probs[i].answer for i in r.problem_index])
            timers["time/generate"] += t1 - t0
            timers["time/reward"] += time.perf_counter() - t1
            for k, v in res.as_metrics().items():
                grading[k] = grading.get(k, 0) + v if k != "reward/mean" else v
            r.rewards = torch.tensor(res.rewards, dtype=torch.float32, device=r.tokens.device)
            r.questions = [probs[i].question for i in r.problem_index]  # for the token records
            if not cfg.dynamic_sampling:
                kept, first = [r], r
                break
            if rounds == 1:
                first = r
            # keep the groups that carry a learning signal under the run's own estimator: a
            # Pass@K group with fewer than K wrong answers has mixed rewards but zero advantages
            signal = self.response_advantages(r.rewards).view(-1, G).ne(0).any(-1)  # (P,)
            take = signal.nonzero().flatten().tolist()[:cfg.prompts_per_step - n_kept]
            if take:
                kept.append(r.select([g * G + j for g in take for j in range(G)]))
                n_kept += len(take)
            if n_kept == cfg.prompts_per_step or rounds >= cfg.max_sampling_rounds:
                break
        stats = dict(timers, **grading)
        stats["train/sampling_rounds"] = rounds
        # Rollout statistics describe what the policy produced before any filtering.
        grp = first.rewards.view(-1, G)
        stats["train/reward_mean"] = float(first.rewards.mean())
        stats["train/reward_std"] = float(grp.std(-1, unbiased=False).mean())
        stats["train/frac_zero_std_groups"] = float((grp.max(-1).values == grp.min(-1).values)
                                                    .float().mean())
        stats["train/frac_zero_adv_groups"] = float(
            self.response_advantages(first.rewards).view(-1, G).eq(0).all(-1).float().mean())
        stats["train/completion_len"] = float(first.lengths.float().mean())
        stats["train/truncated_frac"] = float(first.truncated.float().mean())
        if cfg.task == "arithmetic" and cfg.arith_op == "mul_chain":
            stats.update(strategy_stats(first.questions, first.texts))
        if not kept:
            return None, stats
        return cat_rollouts(kept, self.tok.pad_token_id) if len(kept) > 1 else kept[0], stats

    def response_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Per-response advantages (B,) by cfg.adv_estimator: grpo, passk or passk_mixed."""
        cfg = self.cfg
        if cfg.adv_estimator == "passk":
            return passk_advantages(rewards, cfg.group_size, cfg.passk_k)
        if cfg.adv_estimator == "passk_mixed":
            return passk_mixed_advantages(rewards, cfg.group_size, cfg.passk_k, cfg.passk_chi,
                                          cfg.adv_eps)
        return group_advantages(rewards, cfg.group_size, cfg.adv_eps, cfg.adv_std_norm)

    # -- 3. old-policy and reference passes ----------------------------------------------------
    def _micro_batches(self, rows: torch.Tensor):
        mb = self.micro_batch_size or len(rows)
        return [rows[i:i + mb] for i in range(0, len(rows), mb)]

    @torch.no_grad()
    def frozen_pass(self, r, reference: bool) -> dict:
        """Log-probs (and hidden states, entropy of the old policy) without grad, in micro-batches.

        Runs in eval mode: the old policy that sampled the rollout (and THR's hidden states) has
        no dropout noise, whatever lora_dropout the update trains with.
        """
        outs, was_training = [], self.model.training
        self.model.eval()
        try:
            for idx in self._micro_batches(torch.arange(len(r.tokens))):
                if reference:
                    with reference_policy(self.model):
                        o = completion_forward(self.model, r.input_ids[idx], r.attention_mask[idx],
                                               r.prompt_len, self.cfg.temperature,
                                               need_entropy=False)
                else:
                    o = completion_forward(self.model, r.input_ids[idx], r.attention_mask[idx],
                                           r.prompt_len, self.cfg.temperature,
                                           need_hidden=self.cfg.thr_mode != "off")
                outs.append(o)
        finally:
            self.model.train(was_training)
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    # -- 4. per-token advantages ---------------------------------------------------------------
    def token_advantages(self, hidden, tokens, mask, rewards, adv,
                         logits=None) -> tuple[torch.Tensor, dict]:
        """Per-token advantages (B, T) of whole groups: plain GRPO, THR or NTHR reweighting.

        hidden (B, T, H) are the old policy's states (needed only when thr_mode != "off");
        logits (B, T, V) the same pass's, when it kept them (on-policy), else THR streams
        them from the unembedding.
        """
        if self.cfg.thr_mode == "off":
            return adv.unsqueeze(-1) * mask.float(), {}
        from .thr import thr_token_advantages

        t0 = time.perf_counter()
        # the unembedding (V, H), never LoRA-wrapped, streams probabilities when no logits
        w = lm_parts(self.model)[1].weight if logits is None else None
        # the random-mask control draws from its own stream: one per step, part of the run
        gen = torch.Generator().manual_seed(self.cfg.seed * 104_729 + self.step)
        adv_tok, thr, stats = thr_token_advantages(self.cfg, hidden, tokens, mask, rewards, adv, w,
                                                   logits=logits, generator=gen)
        self._thr_parts.append(thr)
        stats["time/thr"] = time.perf_counter() - t0
        return adv_tok, stats

    # -- 5. the update -------------------------------------------------------------------------
    def update_pass_is_old_policy(self) -> bool:
        """Whether the update pass itself computes the old policy exactly: on-policy (one epoch,
        one mini-batch) and without dropout noise (lora_dropout = 0). Then its detached log-probs
        are old_logp (ratio exactly 1) and THR reads its states and logits."""
        cfg = self.cfg
        return cfg.epochs == 1 and cfg.mini_batches == 1 and cfg.lora_dropout == 0

    def needs_old_pass(self) -> bool:
        """Whether the old policy needs its own no-grad pass: when the update pass is not the old
        policy (above), and for forking tokens, whose top fraction is taken over the whole
        mini-batch before any backward (so micro-batching cannot change the selection)."""
        return not self.update_pass_is_old_policy() or self.cfg.entropy_top_frac > 0

    def update(self, r, adv: torch.Tensor) -> dict:
        cfg = self.cfg
        B = len(r.tokens)
        timers = {"time/old_logp": 0.0, "time/ref_logp": 0.0}
        self.model.train()
        old = None
        if self.needs_old_pass():
            t0 = time.perf_counter()
            old = self.frozen_pass(r, reference=False)
            timers["time/old_logp"] = time.perf_counter() - t0
        ref_logp = None
        if cfg.kl_coef > 0:
            t0 = time.perf_counter()
            ref_logp = self.frozen_pass(r, reference=True)["logp"]
            timers["time/ref_logp"] = time.perf_counter() - t0
        thr_on = cfg.thr_mode != "off"
        update_is_old = self.update_pass_is_old_policy()
        thr_here = thr_on and update_is_old  # THR from the update pass's states and logits
        self._thr_parts, ent_parts = [], []
        adv_tok, adv_stats = None, {}
        if not thr_here:  # THR once per rollout batch from the old pass, fixed across epochs
            adv_tok, adv_stats = self.token_advantages(old.get("hidden") if thr_on else None,
                                                       r.tokens, r.mask, r.rewards, adv)
        t0 = time.perf_counter()
        acc = {"loss": 0.0, "clip": 0.0, "kl": 0.0, "ent": 0.0, "tok": 0.0, "gn": 0.0,
               "cov": 0.0, "fork": 0.0}
        fork = cfg.entropy_top_frac > 0
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + self.step)
        for _ in range(cfg.epochs):
            perm = torch.randperm(B, generator=gen) if cfg.mini_batches > 1 else torch.arange(B)
            for rows in mini_batch_rows(perm, cfg.mini_batches):
                keep = r.mask[rows]  # (b, T) tokens that carry gradient
                if fork:  # forking tokens: the top fraction by the old policy's entropy
                    keep = top_tokens(old["entropy"][rows], keep, cfg.entropy_top_frac)
                    acc["fork"] += float(keep.sum())
                n_tok = float(keep.sum())  # token-mean: over the tokens that carry gradient
                self.opt.zero_grad(set_to_none=True)
                for pos in self._micro_batches(torch.arange(len(rows))):
                    idx = rows[pos]
                    mask = r.mask[idx]
                    o = completion_forward(self.model, r.input_ids[idx], r.attention_mask[idx],
                                           r.prompt_len, cfg.temperature, need_hidden=thr_here,
                                           need_logits=thr_here)
                    old_logp = o["logp"].detach() if update_is_old else old["logp"][idx]
                    if thr_here:
                        # On-policy: this forward IS the old-policy pass; whole groups per
                        # micro-batch (config check), so THR needs no extra forward.
                        a_mb, st_mb = self.token_advantages(o["hidden"], r.tokens[idx], mask,
                                                            r.rewards[idx], adv[idx], o["logits"])
                        _merge_thr_stats(adv_stats, st_mb)
                        ent_parts.append(o["entropy"])
                    else:
                        a_mb = adv_tok[idx]
                    loss_tok, st = policy_loss(
                        o["logp"], old_logp, a_mb, mask, objective=cfg.objective,
                        eps_low=cfg.clip_eps_low, eps_high=cfg.clip_eps_high,
                        ref_logp=None if ref_logp is None else ref_logp[idx], kl_coef=cfg.kl_coef,
                        cov_mode=cfg.cov_mode, cov_ratio=cfg.cov_ratio, cov_kl_coef=cfg.cov_kl_coef,
                        cov_bounds=(cfg.cov_clip_lb, cfg.cov_clip_ub), generator=gen)
                    if "cov_selected" in st:
                        acc["cov"] += float(st["cov_selected"].sum())
                    loss = aggregate(loss_tok, keep[pos], cfg.loss_agg, n_tokens=n_tok,
                                     n_seqs=float(len(rows)), max_len=cfg.max_new_tokens)
                    loss_value = loss.item()  # one device sync per micro-batch
                    if not math.isfinite(loss_value):
                        raise NonFiniteError(f"loss is {loss_value}")
                    loss.backward()
                    failpoint("update")
                    mf = mask.float()
                    acc["loss"] += loss_value
                    acc["clip"] += float((st["clipped"].float() * mf).sum())
                    acc["kl"] += float((st.get("kl", torch.zeros_like(mf)) * mf).sum())
                    acc["ent"] += float((o["entropy"] * mf).sum())
                    acc["tok"] += float(mf.sum())
                gn = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
                if not math.isfinite(gn):
                    raise NonFiniteError(f"gradient norm is {gn}")
                acc["gn"] += gn
                self.opt.step()
                self._opt_steps += 1
        adv_stats.pop("_n", None)
        last = self.step + 1 == cfg.steps  # always saved, so short runs have records too
        if thr_on and cfg.thr_save_every and ((self.step + 1) % cfg.thr_save_every == 0 or last):
            from .anatomy import save_token_records, token_records

            entropy = torch.cat(ent_parts) if thr_here else old["entropy"]
            save_token_records(self.run.path, self.step + 1, token_records(
                self.tok, r.tokens, r.mask, torch.cat(self._thr_parts), entropy, r.rewards, adv,
                cfg.group_size, cfg.thr_save_rows, cfg.thr_save_tokens, r.questions))
        n_opt = max(self._opt_steps, 1)
        ntok = max(acc["tok"], 1.0)
        return dict(timers, **adv_stats, **{
            "time/update": time.perf_counter() - t0, "train/loss": acc["loss"] / n_opt,
            "train/clip_frac": acc["clip"] / ntok, "train/kl": acc["kl"] / ntok,
            "train/entropy": acc["ent"] / ntok, "train/grad_norm": acc["gn"] / n_opt,
            "train/adv_abs_mean": float(adv.abs().mean()),
            "train/tokens": acc["tok"] / cfg.epochs, "train/opt_steps": self._opt_steps,
            "train/cov_selected_frac": acc["cov"] / ntok,
            "train/fork_selected_frac": acc["fork"] / ntok})

    # -- the loop ------------------------------------------------------------------------------
    def train_step(self) -> dict:
        t0 = time.perf_counter()
        stats = {"train/skipped": 1, "train/nonfinite_skipped": 0}
        try:
            r, rollout_stats = self.rollout()
            stats.update(rollout_stats)
            if r is not None:  # None: dynamic sampling found no group with mixed rewards
                stats.update(self.guarded_update(r, self.response_advantages(r.rewards)))
                stats["train/skipped"] = 0
        except NonFiniteError as err:
            self._skip_nonfinite(stats, f"non-finite update ({err})")
        except OutOfMemoryReport:  # guarded_update's explained OOM: not a generation OOM
            raise
        except RuntimeError as err:
            if is_nonfinite_sampling_error(err):
                self._skip_nonfinite(stats, "NaN/inf in the sampling distribution")
            elif is_oom(err):
                raise OutOfMemoryReport(oom_message(self.cfg, "generation",
                                                    self.micro_batch_size)) from err
            else:
                raise
        self.step += 1
        stats.update({"step": self.step, "time/step": time.perf_counter() - t0,
                      "train/lr": self.cfg.lr, "train/micro_batch_size": self.micro_batch_size})
        return stats

    def guarded_update(self, r, adv) -> dict:
        """update(), retried with half the micro-batch on OOM while no optimizer step has run."""
        G = self.cfg.group_size
        floor = G if self.cfg.thr_mode != "off" else 1  # THR needs whole groups per micro-batch
        while True:
            self._opt_steps = 0
            try:
                return self.update(r, adv)
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                mb = self.micro_batch_size or len(r.tokens) // self.cfg.mini_batches
                # KL-Cov / Clip-Cov select their tokens per micro-batch (as verl does): a
                # smaller micro-batch is another algorithm, so it is never changed mid-run.
                halve = self.cfg.oom_halve_micro_batch and self.cfg.cov_mode == "off"
                if not halve or self._opt_steps or mb // 2 < floor:
                    raise OutOfMemoryReport(oom_message(self.cfg, "update", mb)) from err
                self.opt.zero_grad(set_to_none=True)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.micro_batch_size = mb // 2 // floor * floor
                log.warning("out of memory in the update: micro_batch_size %d -> %d, retrying",
                            mb, self.micro_batch_size)

    def _skip_nonfinite(self, stats: dict, why: str) -> None:
        """Drop this step's pending gradients, count it, and stop past max_nonfinite_steps."""
        self.opt.zero_grad(set_to_none=True)
        self.nonfinite_steps += 1
        stats["train/nonfinite_skipped"] = 1
        log.warning("step %d skipped: %s (%d skipped so far)", self.step + 1, why,
                    self.nonfinite_steps)
        if self.nonfinite_steps > self.cfg.max_nonfinite_steps:
            raise FloatingPointError(
                f"{self.nonfinite_steps} steps had NaN/inf (> max_nonfinite_steps="
                f"{self.cfg.max_nonfinite_steps}); last: {why}. The last checkpoint is intact. "
                "Lower lr or max_grad_norm, check rewards for NaN, or use compute_dtype=float32")

    def train(self, progress: bool = True, on_step=None) -> list[dict]:
        """Run (or resume) cfg.steps steps, logging and checkpointing; return all metric rows.

        on_step(trainer, row), when given, runs after each step and may add keys to that step's
        metrics row before it is written (e.g. experiment's likelihood probe); it must not
        touch the random state the next step samples from (use torch.random.fork_rng)."""
        from tqdm.auto import tqdm

        from .checkpoint import load_checkpoint, save_checkpoint

        load_checkpoint(self, self.run / "checkpoint")
        self.run.truncate_metrics(self.step)  # drops steps past the checkpoint and torn lines
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="GRPO", disable=not progress)
        while self.step < self.cfg.steps:
            row = self.train_step()
            if on_step is not None:
                on_step(self, row)
            self.run.append_metrics(row)
            bar.update(1)
            bar.set_postfix(reward=f"{row.get('train/reward_mean', float('nan')):.2f}")
            if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                save_checkpoint(self, self.run / "checkpoint")
        bar.close()
        return self.run.metrics()


def strategy_stats(questions: list[str], texts: list[str]) -> dict:
    """train/strategy_entropy (bits) and train/strategy_frac/<label> of a strategies-task batch
    (thrlab.chains): how diverse the ways the policy's samples reach their answers are."""
    from .chains import STRATEGIES, strategy_entropy, strategy_of

    labels = [strategy_of(q, t) for q, t in zip(questions, texts)]
    out = {"train/strategy_entropy": strategy_entropy(labels)}
    for name in (*STRATEGIES, "direct", "other"):
        out[f"train/strategy_frac/{name}"] = labels.count(name) / max(len(labels), 1)
    return out


def mini_batch_rows(perm: torch.Tensor, n: int) -> list[torch.Tensor]:
    """Split a permutation of the B rows into n mini-batches of sizes differing by at most one
    (the first ones larger), dropping none: dynamic sampling can return any multiple of G rows.
    Empty mini-batches (B < n) are left out: they would be optimizer steps without a gradient."""
    return [rows for rows in torch.tensor_split(perm, n) if len(rows)]


def _merge_thr_stats(acc: dict, new: dict) -> None:
    """Combine per-micro-batch THR stats: times and masses add, the rest average (equal sizes)."""
    n = acc.get("_n", 0)
    for k, v in new.items():
        if k.startswith("time/") or "mass" in k:
            acc[k] = acc.get(k, 0.0) + v
        else:
            acc[k] = (acc.get(k, 0.0) * n + v) / (n + 1)
    acc["_n"] = n + 1
