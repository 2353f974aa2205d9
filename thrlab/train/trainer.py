"""The GRPO loop: `train_step` is the paper's algorithm box, one named stage per line.

  for each step:
    1. sample P prompts, G completions each (B = P*G rows)     -> rollout.generate
    2. grade them; response advantages (B,)                    -> loss.response_advantages
       (dynamic sampling: drop groups without signal, draw more prompts)
    3. the old-policy view: a frozen pass or the update pass   -> old_policy
       reference log-probs (adapters disabled) when kl_coef > 0
    4. epochs x mini-batches: token advantages (THR plugs in)  -> reweight.thr_token_advantages
    5.   loss per micro-batch, accumulated; one optimizer step -> loss.policy_loss, aggregate
  checkpoint adapter + optimizer + RNG every save_every steps; metrics.jsonl every step
  (mirrored to TensorBoard or W&B by report_to, thrlab.train.tracking).

Micro-batch accumulation, the OOM retry, NaN/inf checks and phase timers live in `step`; which
variant of each stage runs is chosen by name, from the config, in thrlab.core.variants.
Shapes: B rows (whole groups, group-major), T completion tokens, H hidden, b rows of a mini-batch.
"""
from __future__ import annotations

import contextlib
import logging
import random
import time

import torch

from thrlab.core.guards import (NonFiniteError, OutOfMemoryReport, is_nonfinite_sampling_error,
                                is_oom, oom_message)
from thrlab.core.loss import aggregate, policy_loss, response_advantages, top_tokens
from thrlab.core.reweight import thr_token_advantages
from thrlab.core.seeds import prompt_order_seed, step_seed
from thrlab.core.stats import label_entropy
from thrlab.tasks.benchmarks import format_prompt
from thrlab.tasks.task import task_of

from .checkpoint import TrainState, load_checkpoint, save_checkpoint
from .config import Config
from .drift import ParamDrift
from .faults import failpoint
from .memory import PHASES, check
from .model import completion_forward, lm_parts
from .old_policy import FrozenPass, UpdatePass, frozen_pass, update_pass_is_old_policy
from .records import save_token_records, token_records
from .rollout import Rollout, cat_rollouts, generate
from .runs import RunDir
from .step import MicroBatches, Timers, finite, make_optimizer, mini_batch_rows
from .tracking import open_tracker

log = logging.getLogger(__name__)
WARN_AFTER = 5  # steps in a row without learning signal before the trainer warns


class GRPOTrainer:
    def __init__(self, cfg: Config, model, tok, problems: list, run: RunDir, grade_fn):
        self.cfg, self.model, self.tok, self.problems, self.run = cfg, model, tok, problems, run
        self.grade_fn = grade_fn
        self.task = task_of(cfg)  # what the samples are labelled by (strategies), if anything
        self.steps_without_signal = 0  # consecutive steps whose groups all had equal rewards
        self.params, self.opt = make_optimizer(model, cfg)
        # the start adapter (a checkpoint, when one is loaded, restores the run's own)
        self.drift = ParamDrift({n: p for n, p in model.named_parameters() if p.requires_grad})
        # step, prompt cursor, skipped steps, micro-batch size: what checkpoints keep
        self.state = TrainState(micro_batch_size=cfg.micro_batch_size)
        self._order: tuple[int, list[int]] = (-1, [])  # (pass, its shuffled order), cached
        # THR needs whole groups per micro-batch, so the OOM retry never halves below one
        self.micro = MicroBatches(cfg, self.state, floor=cfg.group_size if cfg.thr_on else 1)
        old = UpdatePass if update_pass_is_old_policy(cfg) else FrozenPass
        self.old_policy = old(model, cfg, self.micro, self.token_advantages)
        self.device = next(model.parameters()).device
        self.token_record = None  # this step's saved THR token record (report_to mirrors it)

    @property
    def step(self) -> int:
        return self.state.step

    # -- the algorithm box -----------------------------------------------------------------------
    def train_step(self) -> dict:
        """One GRPO step; a step with NaN/inf is skipped and counted (guards.py)."""
        t0, stats = time.perf_counter(), {"train/skipped": 1, "train/nonfinite_skipped": 0}
        with self.skip_nonfinite(stats):
            batch, rollout_stats = self.rollout()  # 1-2. B = P*G graded rows, or None
            stats.update(rollout_stats)
            if batch is not None:  # None: dynamic sampling found no group with a signal
                adv = self.response_advantages(batch.rewards)  # (B,)
                stats.update(self.micro.run(lambda acc: self.update(batch, adv, acc),
                                            len(batch.tokens), self.zero_grad))
                stats["train/skipped"] = 0
        self.state.step += 1
        stats["train/distance"] = self.drift.distance()
        stats.update({"step": self.step, "time/step": time.perf_counter() - t0,
                      "train/lr": self.cfg.lr, "train/micro_batch_size": self.micro.size})
        return stats

    def update(self, batch, adv: torch.Tensor, acc) -> dict:
        """3-5: the old policy and the reference, the token advantages (GRPO's or THR's), then
        epochs x mini-batches of optimizer steps; returns the update's metrics."""
        cfg, timers = self.cfg, Timers({"time/old_logp": 0.0, "time/ref_logp": 0.0})
        self.model.train()
        with timers("old_logp") if self.old_policy.runs_pass else contextlib.nullcontext():
            self.old_policy.prepare(batch)  # 3. pi_old of every row (B, T)
        with timers("ref_logp"):
            ref_logp = self.reference_logp(batch)  # (B, T) or None
        # 4. token advantages (B, T): THR here, once per batch, from the frozen pass; when the
        # update pass is the old policy, per micro-batch inside optimize (no extra forward)
        self.old_policy.batch_advantages(batch, adv)
        t0, thr_s = time.perf_counter(), self.old_policy.thr_stats.get("time/thr", 0.0)
        gen = torch.Generator().manual_seed(step_seed("mini_batches", cfg.seed, self.step))
        with torch.profiler.record_function("thrlab/update"):  # as step.Timers' phases
            self.optimize(batch, adv, ref_logp, gen, acc)  # 5.
        thr = self.old_policy.thr_stats  # thr/* of this batch (empty when THR is off)
        self.save_token_records(batch, adv)
        update_s = time.perf_counter() - t0 - (thr.get("time/thr", 0.0) - thr_s)  # THR apart
        return {**timers, **thr, **acc.metrics(cfg.epochs), "time/update": update_s,
                "train/adv_abs_mean": float(adv.abs().mean())}

    def optimize(self, batch, adv: torch.Tensor, ref_logp, gen: torch.Generator, acc) -> None:
        """5. epochs x mini-batches of optimizer steps, each accumulated over micro-batches."""
        cfg = self.cfg
        for rows in self.mini_batch_order(len(batch.tokens), gen):  # epochs x mini-batches
            keep = self.loss_tokens(batch, rows, acc)  # (b, T) tokens that carry gradient
            n_tok = float(keep.sum())  # token-mean: over the tokens that carry gradient
            self.zero_grad()
            for pos in self.micro.split(torch.arange(len(rows))):
                idx = rows[pos]
                out = completion_forward(
                    self.model, batch.input_ids[idx], batch.attention_mask[idx], batch.prompt_len,
                    cfg.temperature, need_hidden=self.old_policy.update_needs_states,
                    need_logits=self.old_policy.update_needs_states)
                old_logp, adv_tok = self.old_policy.micro_view(batch, adv, idx, out)  # 4.
                loss_tok, st = policy_loss(out["logp"], old_logp, adv_tok, batch.mask[idx], cfg,
                                           ref_logp=None if ref_logp is None else ref_logp[idx],
                                           generator=gen)  # 5. (b_micro, T)
                loss = aggregate(loss_tok, keep[pos], cfg.loss_agg, n_tokens=n_tok,
                                 n_seqs=float(len(rows)), max_len=cfg.max_new_tokens)
                value = finite(loss.item(), "loss")  # one device sync per micro-batch
                loss.backward()
                failpoint("update")
                acc.add_micro(value, batch.mask[idx], st, out["entropy"])
            self.optimizer_step(acc)

    # -- the stages --------------------------------------------------------------------------------
    def next_prompts(self, n: int) -> list:
        """Next n prompts of a seeded order that is reshuffled every pass over the data."""
        out = []
        while len(out) < n:
            epoch, pos = divmod(self.state.cursor, len(self.problems))
            if self._order[0] != epoch:  # one shuffle per pass (a function of seed and pass)
                order = list(range(len(self.problems)))
                random.Random(prompt_order_seed(self.cfg.seed, epoch)).shuffle(order)
                self._order = (epoch, order)
            out.append(self.problems[self._order[1][pos]])
            self.state.cursor += 1
        return out

    def sample_and_grade(self, timers: Timers):
        """1-2 once: P prompts, G completions each, graded; (rollout, grading counts)."""
        cfg = self.cfg
        problems = self.next_prompts(cfg.prompts_per_step)
        with timers("generate"):
            batch = self.sample(problems)
        failpoint("generate")
        with timers("reward"):
            res = self.grade_fn(batch.texts, [problems[i].answer for i in batch.problem_index])
        batch.rewards = torch.tensor(res.rewards, dtype=torch.float32, device=batch.tokens.device)
        batch.questions = [problems[i].question for i in batch.problem_index]  # token records
        return batch, res.as_metrics()

    def sample(self, problems: list) -> Rollout:
        """G completions of each problem's templated prompt from the current policy (B rows)."""
        cfg = self.cfg
        return generate(self.model, self.tok,
                        [format_prompt(p.question, cfg.template, self.tok) for p in problems],
                        n=cfg.group_size, do_sample=True, temperature=cfg.temperature,
                        top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, sampler=cfg.sampler)

    def rollout(self):
        """Sampled, graded groups (B rows) and the rollout's metrics; with dynamic sampling only
        groups with a non-zero advantage under the run's estimator (None if none was found)."""
        cfg, G = self.cfg, self.cfg.group_size
        timers, grading = Timers({"time/generate": 0.0, "time/reward": 0.0}), {}
        kept, n_kept, rounds = [], 0, 0
        while True:
            rounds += 1
            batch, counts = self.sample_and_grade(timers)
            for k, v in counts.items():
                grading[k] = grading.get(k, 0) + v if k != "reward/mean" else v
            if rounds == 1:
                first = batch  # rollout statistics describe the policy before any filtering
            if not cfg.dynamic_sampling:
                kept = [batch]
                break
            # keep the groups that carry a learning signal under the run's own estimator: a
            # Pass@K group with fewer than K wrong answers has mixed rewards but zero advantages
            signal = self.response_advantages(batch.rewards).view(-1, G).ne(0).any(-1)  # (P,)
            take = signal.nonzero().flatten().tolist()[:cfg.prompts_per_step - n_kept]
            if take:
                kept.append(batch.select([g * G + j for g in take for j in range(G)]))
                n_kept += len(take)
            if n_kept == cfg.prompts_per_step or rounds >= cfg.max_sampling_rounds:
                break
        stats = {**timers, **grading, "train/sampling_rounds": rounds, **self.rollout_stats(first)}
        if not kept:
            return None, stats
        return cat_rollouts(kept, self.tok.pad_token_id) if len(kept) > 1 else kept[0], stats

    def rollout_stats(self, batch) -> dict:
        """train/* statistics of one sampled batch (B rows): rewards, groups, lengths."""
        G = self.cfg.group_size
        grp = batch.rewards.view(-1, G)  # (P, G)
        out = {"train/reward_mean": float(batch.rewards.mean()),
               "train/reward_std": float(grp.std(-1, unbiased=False).mean()),
               "train/frac_zero_std_groups": float((grp.max(-1).values == grp.min(-1).values)
                                                   .float().mean()),
               "train/frac_zero_adv_groups": float(
                   self.response_advantages(batch.rewards).view(-1, G).eq(0).all(-1)
                   .float().mean()),
               "train/completion_len": float(batch.lengths.float().mean()),
               "train/truncated_frac": float(batch.truncated.float().mean())}
        labels = self.task.labels_of(batch.questions, batch.texts)
        if labels is not None:  # e.g. the strategies task: how diverse the ways to the answer are
            out["train/strategy_entropy"] = label_entropy(labels)
            for name in self.task.labels:
                out[f"train/strategy_frac/{name}"] = labels.count(name) / max(len(labels), 1)
        return out

    def response_advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Per-response advantages (B,) by cfg.adv_estimator (loss.ADVANTAGE_ESTIMATORS)."""
        return response_advantages(rewards, self.cfg.group_size, self.cfg)

    def reference_logp(self, batch) -> torch.Tensor | None:
        """Log-probs (B, T) of the reference (adapters disabled) when the k3 KL is on."""
        if self.cfg.kl_coef == 0:
            return None
        return frozen_pass(self.model, batch, self.cfg, self.micro, reference=True)["logp"]

    def token_advantages(self, hidden, tokens, mask, rewards, adv, logits=None):
        """Per-token advantages (B, T) of whole groups: GRPO's, or THR's (thr_mode); returns
        (adv_tok, thr/* stats, THR (B, T) or None).

        hidden (B, T, H) are the old policy's states (needed only when THR is on); logits
        (B, T, V) the same pass's, when it kept them (on-policy), else THR streams them from the
        unembedding.
        """
        cfg = self.cfg
        if not cfg.thr_on:
            return adv.unsqueeze(-1) * mask.float(), {}, None

        t0 = time.perf_counter()
        # the unembedding (V, H), never LoRA-wrapped, streams probabilities when no logits
        w = lm_parts(self.model)[1].weight if logits is None else None
        # the random-mask control draws from its own stream: one per step, part of the run
        gen = torch.Generator().manual_seed(step_seed("random_mask", cfg.seed, self.step))
        with torch.profiler.record_function("thrlab/thr"):  # as step.Timers' phases
            adv_tok, thr, stats = thr_token_advantages(cfg, hidden, tokens, mask, rewards, adv, w,
                                                       group_size=cfg.group_size,
                                                       temperature=cfg.temperature,
                                                       logits=logits, generator=gen)
        stats["time/thr"] = time.perf_counter() - t0
        return adv_tok, stats, thr

    def mini_batch_order(self, n_rows: int, gen: torch.Generator):
        """Rows of each optimizer step: epochs x mini-batches, reshuffled every epoch."""
        for _ in range(self.cfg.epochs):
            perm = (torch.randperm(n_rows, generator=gen) if self.cfg.mini_batches > 1
                    else torch.arange(n_rows))
            yield from mini_batch_rows(perm, self.cfg.mini_batches)

    def loss_tokens(self, batch, rows: torch.Tensor, acc) -> torch.Tensor:
        """Bool (b, T): the mini-batch's tokens that carry gradient (forking tokens: the top
        fraction by the old policy's entropy)."""
        keep = batch.mask[rows]
        if self.cfg.entropy_top_frac > 0:
            keep = top_tokens(self.old_policy.fork_entropy(rows), keep, self.cfg.entropy_top_frac)
            acc.fork_selected += float(keep.sum())
        return keep

    def optimizer_step(self, acc) -> None:
        """Clip the accumulated gradient, check it, step; the norms drift.py defines."""
        gn = finite(float(torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)),
                    "gradient norm")
        acc.grad_norm += gn
        # what clip_grad_norm_ left: it scales by min(1, max_norm / (norm + 1e-6))
        acc.grad_norm_clipped += gn * min(1.0, self.cfg.max_grad_norm / (gn + 1e-6))
        self.drift.before_step()
        self.opt.step()
        acc.update_norm += self.drift.update_norm()
        acc.opt_steps += 1

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def save_token_records(self, batch, adv) -> None:
        """Per-token THR, entropy and text every thr_save_every steps and at the last."""
        cfg = self.cfg
        last = self.step + 1 == cfg.steps  # always saved, so short runs have records too
        if not (cfg.thr_on and cfg.thr_save_every
                and ((self.step + 1) % cfg.thr_save_every == 0 or last)):
            return

        record = token_records(
            self.tok, batch.tokens, batch.mask, torch.cat(self.old_policy.thr_parts),
            self.old_policy.entropy(), batch.rewards, adv, cfg.group_size, cfg.thr_save_rows,
            cfg.thr_save_tokens, batch.questions)
        save_token_records(self.run.path, self.step + 1, record)
        self.token_record = dict(record, step=self.step + 1)  # for the tracker, after metrics

    def warn_without_signal(self, row: dict) -> None:
        """Log when the groups of WARN_AFTER steps in a row all had equal rewards (no advantage,
        no gradient), and every 20 steps while it lasts; the run goes on (metrics say it too:
        train/frac_zero_adv_groups = 1). A single such step is common with few prompts per step;
        a streak means the model cannot solve or read the prompts, or the grader never matches."""
        if row.get("train/frac_zero_adv_groups", 0.0) < 1.0:
            self.steps_without_signal = 0
            return
        self.steps_without_signal += 1
        if self.steps_without_signal % 20 == WARN_AFTER % 20:
            log.warning(
                "no learning signal in %d steps in a row (to step %d): in every group all %d "
                "samples got the same reward (mean %.3f now), so every advantage is 0. The model "
                "may not solve or not read the prompts, or the grader may never match: look at "
                "the samples (thr_tokens/, or `thrlab evaluate`).", self.steps_without_signal,
                self.step, self.cfg.group_size, row.get("train/reward_mean", 0.0))

    # -- skipping, the loop ------------------------------------------------------------------------
    def skip_nonfinite(self, stats: dict):
        """Context for one step: NaN/inf (update or sampling) skips it; OOM in generation is
        reported with the knobs to turn (the update's own OOM is MicroBatches')."""
        @contextlib.contextmanager
        def guard():
            try:
                yield
            except NonFiniteError as err:
                self._skip(stats, f"non-finite update ({err})")
            except OutOfMemoryReport:
                raise
            except RuntimeError as err:
                if is_nonfinite_sampling_error(err):
                    self._skip(stats, "NaN/inf in the sampling distribution")
                elif is_oom(err):
                    raise OutOfMemoryReport(oom_message(self.cfg, "generation",
                                                        self.micro.size)) from err
                else:
                    raise
        return guard()

    def _skip(self, stats: dict, why: str) -> None:
        """Drop this step's pending gradients, count it, and stop past max_nonfinite_steps."""
        self.zero_grad()
        self.state.nonfinite_steps += 1
        stats["train/nonfinite_skipped"] = 1
        log.warning("step %d skipped: %s (%d skipped so far)", self.step + 1, why,
                    self.state.nonfinite_steps)
        if self.state.nonfinite_steps > self.cfg.max_nonfinite_steps:
            raise FloatingPointError(
                f"{self.state.nonfinite_steps} steps had NaN/inf (> max_nonfinite_steps="
                f"{self.cfg.max_nonfinite_steps}); last: {why}. The last checkpoint is intact. "
                "Lower lr or max_grad_norm, check rewards for NaN, or use compute_dtype=float32")

    def train(self, progress: bool = True, on_step=None) -> list[dict]:
        """Run (or resume) cfg.steps steps, logging and checkpointing; return all metric rows.

        on_step(trainer, row), when given, runs after each step and may add keys to that step's
        metrics row before it is written (e.g. experiment's likelihood probe); it must not
        touch the random state the next step samples from (use torch.random.fork_rng)."""
        from tqdm.auto import tqdm

        # on CUDA: the memory plan of a step, and a warning naming the knob when it does not fit
        check(self.cfg, self.model, self.tok, self.problems,
              phases=[p for p in PHASES if p != "evaluate"])
        load_checkpoint(self, self.run / "checkpoint")
        self.run.truncate_metrics(self.step)  # drops steps past the checkpoint and torn lines
        tracker = open_tracker(self.run.path, self.cfg, self.step)  # fails here, not hours in
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="GRPO", disable=not progress)
        try:
            while self.step < self.cfg.steps:
                self.token_record = None
                row = self.train_step()
                self.warn_without_signal(row)
                if on_step is not None:
                    on_step(self, row)
                self.run.append_metrics(row)
                tracker.log(row, self.step)  # a mirror: metrics.jsonl is written first
                if self.token_record is not None:
                    tracker.log_tokens(self.token_record, self.step)
                bar.update(1)
                bar.set_postfix(reward=f"{row.get('train/reward_mean', float('nan')):.2f}")
                if self.step % self.cfg.save_every == 0 or self.step == self.cfg.steps:
                    save_checkpoint(self, self.run / "checkpoint")
        finally:
            bar.close()
            tracker.close()
        return self.run.metrics()
