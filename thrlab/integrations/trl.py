"""THR-GRPO inside TRL's GRPOTrainer, for runs beyond one GPU (accelerate / DeepSpeed / vLLM).

The smallest hook TRL 1.16 allows: `THRGRPOTrainer` overrides `_generate_and_score_completions`,
lets TRL generate, grade and compute its per-response advantages A_j (B,), then

1. takes the post-final-norm states h_{j,k} behind TRL's old-policy log-probs: captured from
   TRL's own no-grad old-policy pass when it runs one (several optimizer steps per generation,
   num_iterations > 1, or vLLM with its importance-sampling correction), else from one extra
   no-grad backbone pass called exactly as TRL's forward calls it (TRL keeps no hidden states;
   its fused LM head returns only log-probs). Cost of that pass: docs/trl.md;
2. calls `thrlab.core.reweight.thr_token_advantages` (the function thrlab's trainer calls) on whole groups,
   with probabilities softmax(h W^T / temperature) streamed from the unembedding, the same
   temperature TRL samples and scores with;
3. hands TRL per-token advantages A'_{j,k} (B, T), which TRL 1.16's loss accepts as they are
   (it unsqueezes only 1-D advantages), and logs thrlab's thr/* metrics.

Under data parallelism THR sees whole groups through `thrlab.integrations.groups`. Everything
else (loss, clipping, KL, optimizer, vLLM, DeepSpeed) is TRL's. `grpo_config` maps a thrlab
`Config` onto `GRPOConfig`, so no TRL default that changes results is inherited silently.
"""
from __future__ import annotations

import time

import torch

TRL_RANGE = ("1.16", "1.17")  # supported: trl >= 1.16, < 1.17 (the pin of the `trl` extra)


def check_trl_version(version: str | None = None) -> str:
    """Return the TRL version, or raise ImportError when it is outside TRL_RANGE."""
    from packaging.version import Version

    if version is None:
        try:
            import trl
        except ImportError as err:
            raise ImportError("thrlab.integrations.trl needs TRL: pip install 'thrlab[trl]' "
                              f"(trl>={TRL_RANGE[0]},<{TRL_RANGE[1]})") from err
        version = trl.__version__
    lo, hi = TRL_RANGE
    if not Version(lo) <= Version(version) < Version(hi):
        raise ImportError(
            f"thrlab.integrations.trl supports trl>={lo},<{hi}; found trl {version}. It overrides "
            "GRPOTrainer._generate_and_score_completions / _calculate_rewards and relies on how "
            "that release lays groups out over ranks and accepts (B, T) advantages, all of which "
            f"move between releases. Install the tested range: pip install 'trl>={lo},<{hi}'.")
    return version


check_trl_version()

from trl import GRPOConfig, GRPOTrainer  # noqa: E402  (after the version check, on purpose)

from thrlab.core.reweight import thr_token_advantages  # noqa: E402
from thrlab.train.config import Config, THRConfig  # noqa: E402
from thrlab.train.model import lm_parts  # noqa: E402
from thrlab.train.model import resolve_device, resolve_dtype

from .groups import GroupLayout, assemble, exchange_shared_rows, merge_thr_stats  # noqa: E402

# thrlab loss_agg -> TRL loss_type with the same normaliser: token_mean divides by the tokens
# of the optimizer step over all ranks (TRL's dapo), seq_mean_token_mean averages per-sequence
# means (grpo), seq_mean_token_sum_norm divides by sequences x max_new_tokens (dr_grpo).
LOSS_TYPES = {"token_mean": "dapo", "seq_mean_token_mean": "grpo",
              "seq_mean_token_sum_norm": "dr_grpo"}

# TRL knobs thrlab has no field for, pinned to the values under which TRL computes thrlab's GRPO
# (TRL's own defaults move between releases: beta 0.04 -> 0, loss_type bnpo -> dapo). Callers may
# override these; the fields mapped from Config they may not.
TRL_PINNED = dict(
    importance_sampling_level="token", multi_objective_aggregation="sum_then_normalize",
    mask_truncated_completions=False,  # thrlab trains on truncated completions too
    top_k=0, min_p=None, repetition_penalty=1.0,  # plain temperature / top-p sampling
    top_entropy_quantile=1.0, entropy_coef=0.0, use_adaptive_entropy=False,
    off_policy_mask_threshold=None, use_bias_correction_kl=False, delta=None,
    cast_lm_head_to_fp32=False, sync_ref_model=False, shuffle_dataset=True,
    lr_scheduler_type="constant", warmup_steps=0,  # thrlab: constant lr, no warm-up
    optim="adamw_torch", adam_epsilon=1e-8,  # thrlab: torch.optim.AdamW, default eps
    # vLLM only: TRL 1.16's correction for the sampler/trainer mismatch, written out
    vllm_importance_sampling_correction=True, vllm_importance_sampling_mode="sequence_mask",
    vllm_importance_sampling_clip_max=3.0,
)


def _expressible(cfg: Config) -> None:
    """Raise for thrlab settings TRL's GRPOTrainer cannot run."""
    bad = {"dynamic_sampling": cfg.dynamic_sampling, "adv_estimator": cfg.adv_estimator != "grpo",
           "cov_mode": cfg.cov_mode != "off", "entropy_top_frac": cfg.entropy_top_frac > 0,
           "objective": cfg.objective != "grpo"}
    bad = [k for k, v in bad.items() if v]
    if bad:
        raise ValueError(f"the TRL path runs GRPO (+ THR) only; these thrlab settings have no TRL "
                         f"1.16 equivalent: {', '.join(f'{k}={getattr(cfg, k)!r}' for k in bad)}. "
                         "Use thrlab's own trainer for them.")


def _rank_batches(cfg: Config, B: int, W: int) -> tuple[int, int]:
    """(rows per micro-batch, micro-batches per optimizer step) on each of W ranks for a rollout
    batch of B rows split into cfg.mini_batches optimizer steps."""
    per_rank = B // cfg.mini_batches // W  # rows of one optimizer step on one rank
    micro = cfg.micro_batch_size or per_rank
    if (B // cfg.mini_batches) % W or per_rank % micro:
        raise ValueError(f"prompts_per_step*group_size/mini_batches = {B // cfg.mini_batches} rows "
                         f"per optimizer step must split into {W} ranks x whole micro-batches of "
                         f"micro_batch_size={cfg.micro_batch_size}")
    return micro, per_rank // micro


def grpo_config(cfg: Config, output_dir: str, *, world_size: int | None = None,
                **trl_kwargs) -> GRPOConfig:
    """Build TRL's GRPOConfig from a thrlab Config; trl_kwargs set TRL-only knobs (vLLM, logging).

    Mapping (thrlab -> TRL): group_size -> num_generations; prompts_per_step * group_size ->
    generation_batch_size (over all ranks); mini_batches optimizer steps per generation ->
    steps_per_generation = mini_batches * gradient_accumulation_steps; micro_batch_size ->
    per_device_train_batch_size (0 = the rank's share of a mini-batch); epochs -> num_iterations;
    steps -> max_steps = steps * epochs * mini_batches (TRL counts optimizer steps); temperature,
    top_p; max_new_tokens -> max_completion_length; clip_eps_low / _high -> epsilon /
    epsilon_high; kl_coef -> beta (k3; for a model passed in already wrapped, TRL 1.16's reference
    is a frozen copy of its adapter, the base model itself when the adapter is fresh, B = 0, as
    thrlab.train.model.load_policy makes it: thrlab's adapters-disabled reference); loss_agg ->
    loss_type (LOSS_TYPES); adv_std_norm -> scale_rewards "group" / "none"; lr, adam_beta1/2,
    weight_decay, max_grad_norm, seed; gradient_checkpointing -> activation_checkpointing
    (non-reentrant); lora_dropout == 0 -> disable_dropout; the resolved compute dtype -> bf16 /
    fp16. Not mappable: TRL's advantage divides by the sample std (G - 1) + 1e-4, thrlab's by the
    population std + adv_eps, so A_TRL = A_thrlab * sqrt((G - 1) / G) up to eps; the integration
    keeps TRL's A (with thr_p = 0 and no mask it is exactly TRL's GRPO). TRL shuffles a generation
    batch once and reuses that split across iterations; thrlab reshuffles every epoch. TRL 1.16
    casts the LoRA adapters of a 4-bit model to bf16 (QLoRA's recommendation) whatever the compute
    dtype, where thrlab's trainer keeps them in the compute dtype (fp32 on CPU): on CPU the two
    agree exactly only with 16/32-bit base weights (tests/test_integration_trl.py).
    """
    from accelerate.utils import get_int_from_env


    _expressible(cfg)
    # The launchers' variables, read before TrainingArguments builds accelerate's state
    W = world_size or get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"], 1)
    B = cfg.prompts_per_step * cfg.group_size
    micro, accum = _rank_batches(cfg, B, W)
    dtype = resolve_dtype(cfg, resolve_device(cfg))
    mapped = dict(
        num_generations=cfg.group_size, per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum, steps_per_generation=cfg.mini_batches * accum,
        num_iterations=cfg.epochs, max_steps=cfg.steps * cfg.epochs * cfg.mini_batches,
        temperature=cfg.temperature, top_p=cfg.top_p, max_completion_length=cfg.max_new_tokens,
        epsilon=cfg.clip_eps_low, epsilon_high=cfg.clip_eps_high, beta=cfg.kl_coef,
        loss_type=LOSS_TYPES[cfg.loss_agg], scale_rewards="group" if cfg.adv_std_norm else "none",
        learning_rate=cfg.lr, adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, seed=cfg.seed,
        disable_dropout=cfg.lora_dropout == 0.0,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16)
    # transformers 5 renamed gradient_checkpointing; thrlab checkpoints without re-entrancy
    ckpt = ("activation_checkpointing" if "activation_checkpointing"
            in GRPOConfig.__dataclass_fields__ else "gradient_checkpointing")
    mapped[ckpt] = cfg.gradient_checkpointing
    mapped[f"{ckpt}_kwargs"] = {"use_reentrant": False} if cfg.gradient_checkpointing else None
    clash = sorted(set(trl_kwargs) & set(mapped))
    if clash:
        raise ValueError(f"{clash} come from the thrlab Config (see grpo_config's docstring); "
                         "set them there, e.g. cfg.replace(...), not as TRL arguments")
    args = GRPOConfig(output_dir=str(output_dir), **{**TRL_PINNED, **trl_kwargs, **mapped})
    if args.generation_batch_size != B or args.world_size != W:
        raise ValueError(f"TRL sees {args.world_size} processes and a generation batch of "
                         f"{args.generation_batch_size}; expected {W} and prompts_per_step*"
                         f"group_size={B}. Pass world_size=, or on CPU use_cpu=True (gloo)")
    return args


class THRGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with THR-reweighted per-token advantages.

    thr_config is a THRConfig (e.g. THRConfig(thr_mode="thr", thr_p=0.1)) or a whole thrlab
    Config (which is one, and whose group_size and temperature must then agree with the args);
    the group size and temperature THR uses are TRL's num_generations and temperature.

    Train mode only: evaluation losses stay plain GRPO. Rewards must be binary (0/1) after TRL's
    reward weighting, since THR's anchors are the correct responses. `thr_last` holds the last
    generation batch's THR (local rows, (b, T)) for inspection.
    """

    def __init__(self, *args, thr_config: THRConfig, **kwargs):
        if not thr_config.thr_on:
            raise ValueError("thr_config.thr_mode is 'off'; use trl.GRPOTrainer, or set thr_mode "
                             "to 'thr' or 'nthr'")
        super().__init__(*args, **kwargs)
        self.thr_config = thr_config
        self._check_args()
        self._thr_rewards = None
        self._thr_capture = None  # list collecting hidden states during TRL's old-policy pass
        self.thr_last = None

    def _check_args(self) -> None:
        cfg, a = self.thr_config, self.args
        wrong = {}
        if isinstance(cfg, Config):
            wrong = {"num_generations": (a.num_generations, cfg.group_size),
                     "temperature": (a.temperature, cfg.temperature)}
            wrong = {k: v for k, v in wrong.items() if v[0] != v[1]}
        if wrong:
            raise ValueError(f"GRPOConfig disagrees with thr_config (TRL value, thrlab value): "
                             f"{wrong}; build the args with thrlab.integrations.trl.grpo_config")
        if (a.loss_type not in ("dapo", "grpo", "dr_grpo", "bnpo")
                or a.importance_sampling_level != "token"
                or a.multi_objective_aggregation != "sum_then_normalize"
                or a.off_policy_mask_threshold is not None):
            raise ValueError(
                "THR-GRPO needs TRL's clipped token-level surrogate with group-normalised summed "
                f"rewards; got loss_type={a.loss_type!r}, importance_sampling_level="
                f"{a.importance_sampling_level!r}, multi_objective_aggregation="
                f"{a.multi_objective_aggregation!r}, off_policy_mask_threshold="
                f"{a.off_policy_mask_threshold!r}")
        if self.is_fsdp_enabled:
            raise NotImplementedError("THR on TRL is implemented for DDP and DeepSpeed; FSDP shards "
                                      "the backbone that the THR pass calls directly")

    def _calculate_rewards(self, *args, **kwargs):
        rewards_per_func = super()._calculate_rewards(*args, **kwargs)  # (B_global, n_funcs)
        self._thr_rewards = rewards_per_func
        return rewards_per_func

    def _binary_rewards(self) -> torch.Tensor:
        """The weighted reward of every row of the generation batch, all ranks; (B_global,)."""
        per_func = self._thr_rewards
        if torch.isnan(per_func).all(1).any():
            raise ValueError("some completions got no reward (every reward function returned "
                             "None); THR needs a 0/1 reward for every completion")
        r = (per_func * self.reward_weights.to(per_func.device)).nansum(1)  # (B_global,)
        if not ((r == 0) | (r == 1)).all():
            raise ValueError(f"THR needs binary 0/1 rewards (its anchors are the correct "
                             f"responses); got {sorted(set(r.tolist()))[:6]}")
        return r

    def _trl_scores_old_policy(self) -> bool:
        """Whether TRL 1.16 runs its own no-grad old-policy pass this generation (its condition)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return (self.args.gradient_accumulation_steps % generate_every != 0
                or (self.use_vllm and self.vllm_importance_sampling_correction))

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           *args, **kwargs):
        call = (model, input_ids, attention_mask, logits_to_keep, *args)
        if self._thr_capture is None or model is not self.model:
            return super()._get_per_token_logps_and_entropies(*call, **kwargs)
        # TRL's old-policy pass, the first policy pass of the generation (before the reference
        # pass): keep what the backbone hands the LM head, so THR costs no forward of its own
        capture, self._thr_capture = self._thr_capture, None
        backbone = lm_parts(self.accelerator.unwrap_model(self.model))[0]
        T = logits_to_keep
        handle = backbone.register_forward_hook(lambda mod, inp, out: capture.append(
            out.last_hidden_state[:, -T - 1:-1].detach()))  # (mb, T, H)
        try:
            return super()._get_per_token_logps_and_entropies(*call, **kwargs)
        finally:
            handle.remove()

    @torch.no_grad()
    def _thr_hidden(self, out: dict) -> torch.Tensor:
        """Post-final-norm states predicting each completion token, (b, T, H); one backbone pass."""
        from trl.models.utils import disable_gradient_checkpointing

        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)  # (b, L)
        att = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)  # (b, L)
        T = out["completion_ids"].shape[1]
        backbone = lm_parts(self.accelerator.unwrap_model(self.model))[0]
        mb = self.args.per_device_train_batch_size
        parts = []
        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            for s in range(0, len(ids), mb):
                with self.accelerator.autocast():
                    # TRL's fused head calls the backbone with input_ids + attention_mask only
                    h = backbone(input_ids=ids[s:s + mb], attention_mask=att[s:s + mb],
                                 use_cache=False).last_hidden_state  # (mb, L, H)
                parts.append(h[:, -T - 1:-1])  # (mb, T, H): the state at t predicts token t+1
        return torch.cat(parts)

    def _thr_advantages(self, hidden, tokens, mask, adv) -> tuple[torch.Tensor, dict]:
        """Per-token advantages of the local rows, (b, T), and the thr/* stats of all ranks."""
        from trl.trainer.utils import maybe_gather_lm_head_ctx

        cfg, acc = self.thr_config, self.accelerator
        rewards = self._binary_rewards()  # (B_global,)
        lay = GroupLayout(acc.process_index, len(adv), self.args.num_generations)
        w = lm_parts(acc.unwrap_model(self.model))[1].weight  # (V, H), replicated on every rank
        b, T = tokens.shape
        remote, adv_all = {}, None
        if lay.b % lay.G:  # some groups straddle ranks: fetch their other rows (a collective)
            remote = exchange_shared_rows(acc, lay, hidden, tokens, mask)
            adv_all = acc.gather(adv)  # (B_global,)
        t_max = max([T] + [y.shape[0] for _, y, _ in remote.values()])
        adv_tok = torch.zeros(b, T, dtype=torch.float32, device=tokens.device)  # (b, T)
        thr_local = torch.zeros_like(adv_tok)  # (b, T)
        mine = (0.0, 0.0, {})  # (real tokens, rows, stats) of the groups this rank owns
        owned = [g for g in lay.groups() if lay.owner(g) == lay.rank]
        with maybe_gather_lm_head_ctx(w):  # ZeRO-3 shards the head; gather it for direct use
            for is_owner, groups in ((True, owned), (False, [g for g in lay.groups()
                                                             if g not in owned])):
                if not groups:
                    continue
                h, y, m = assemble(lay, groups, (hidden, tokens, mask), remote, t_max)
                rows = [r for g in groups for r in range(g * lay.G, (g + 1) * lay.G)]
                where = [lay.local_index(r) for r in rows]  # local index or None
                a = torch.stack([adv[i] if i is not None else adv_all[r]
                                 for i, r in zip(where, rows)])  # (n,)
                a_tok, thr, st = thr_token_advantages(
                    cfg, h, y, m, rewards[rows], a, w, group_size=self.args.num_generations,
                    temperature=self.args.temperature)
                if is_owner:
                    mine = (float(m.sum()), float(len(rows)), st)
                for k, i in enumerate(where):
                    if i is not None:
                        adv_tok[i], thr_local[i] = a_tok[k, :T], thr[k, :T]
        self.thr_last = thr_local
        parts = [mine]
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            parts = gather_object([mine])
        return adv_tok, merge_thr_stats(parts)

    def _generate_and_score_completions(self, inputs):
        self._thr_rewards = None
        captured = [] if self.model.training and self._trl_scores_old_policy() else None
        self._thr_capture = captured
        try:
            out = super()._generate_and_score_completions(inputs)
        finally:
            self._thr_capture = None
        if not self.model.training:
            return out
        t0 = time.perf_counter()
        # (b, T, H) from TRL's old-policy pass when it ran one, else from one pass of our own
        hidden = torch.cat(captured) if captured else self._thr_hidden(out)
        t1 = time.perf_counter()
        mask = out["completion_mask"].bool()  # (b, T) TRL's loss mask
        if "tool_mask" in out:
            mask = mask & out["tool_mask"].bool()
        adv_tok, stats = self._thr_advantages(hidden, out["completion_ids"], mask,
                                              out["advantages"])
        out["advantages"] = adv_tok  # (b, T): TRL's loss uses per-token advantages as given
        stats["time/thr_backbone"] = t1 - t0  # ~0 when TRL's old-policy pass was reused
        stats["time/thr"] = time.perf_counter() - t1
        for k, v in stats.items():
            self._metrics["train"][k].append(v)
        return out
