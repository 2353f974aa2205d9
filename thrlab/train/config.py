"""Typed configuration: frozen sections, one flat Config made of them, a stable hash.

Each section (ModelConfig, DataConfig, RolloutConfig, OptimConfig, LossConfig, THRConfig,
EvalConfig, TinyConfig, SystemConfig) is a frozen dataclass that checks its own values; Config
inherits every section, so a field has one flat name everywhere (field name = notebook parameter
= CLI --set key = logged key, STYLE.md) and a function that needs one section takes it: a Config
is a THRConfig, and the TRL integration can build a THRConfig alone. Checks between sections live
on Config. Every knob that changes results lives here explicitly (never a library default);
SystemConfig holds the ones that do not (where and how fast a run goes), which stay out of the
run id. No torch import: run folders and figures can be read on any laptop.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, fields

from thrlab.core.errors import ConfigError, ConfigTypeError
from thrlab.core.variants import (ADV_ESTIMATORS, AGGREGATIONS, COV_MODES, FAMILIES, OBJECTIVES,
                                  THR_MODES, THR_TAU_MODES)
from thrlab.tasks.arithmetic import ARITH_OPS
from thrlab.tasks.rewards import GRADERS, STYLES


def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(f"bad config: {msg}")


def _choose(obj, **choices) -> None:
    for key, allowed in choices.items():
        _need(getattr(obj, key) in allowed, f"{key}={getattr(obj, key)!r}; choose one of {allowed}")


class _Section:
    """A group of Config fields: `of(cfg)` is that group alone, `names()` its field names."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, cfg):
        return cls(**{k: getattr(cfg, k) for k in cls.names()})

    def __post_init__(self) -> None:  # a section built alone checks itself; Config checks all
        _check_types(self)
        type(self).check(self)

    def check(self) -> None:
        pass


@dataclass(frozen=True)
class ModelConfig(_Section):
    model: str = "tiny"  # "tiny" = the embedded cold-started model; else an HF id or local path
    load_in_4bit: bool = True  # NF4 base weights (bitsandbytes), LoRA adapters on top
    compute_dtype: str = "auto"  # "auto" = bfloat16 on CUDA, float32 on CPU (bf16 is slower on CPU)
    lora_r: int = 16  # LoRA rank
    lora_alpha: int = 32  # LoRA scale alpha (the update is alpha / r * B A)
    lora_dropout: float = 0.0  # dropout makes the old-policy pass differ from the update pass
    lora_targets: str = "all-linear"  # peft target_modules; "all-linear" leaves lm_head alone
    bnb_double_quant: bool = True  # QLoRA's double quantisation of the NF4 scales
    gradient_checkpointing: bool = False  # trade compute for memory on long GPU rollouts
    device: str = "auto"  # auto | cpu | cuda

    def check(self) -> None:
        _choose(self, compute_dtype=("auto", "float32", "bfloat16", "float16"),
                device=("auto", "cpu", "cuda"))
        _need(self.lora_r >= 1, "lora_r must be >= 1")


@dataclass(frozen=True)
class DataConfig(_Section):
    task: str = "arithmetic"  # "arithmetic" or a benchmark name / JSONL path for training prompts
    arith_op: str = "mul"  # synthetic family: mul (a*b, 3-digit a) | mul_add (a*b+c) | mul_chain (strategies)
    train_levels: tuple[int, ...] = ()  # MATH level filter, e.g. (3, 4, 5); () = all
    template: str = "plain"  # prompt template (thrlab.tasks.benchmarks.TEMPLATES)
    answer_style: str = "plain"  # how the answer is read from a completion: plain | boxed | gsm8k | chain
    grader: str = "exact_int"  # exact_int (arithmetic) | math_verify
    grader_timeout_s: float = 5.0  # per-item wall-clock limit of the verifier
    data_dir: str = ""  # local folder holding benchmark JSONL files ("" = hub or $THRLAB_DATA_DIR)

    def check(self) -> None:
        _choose(self, answer_style=STYLES, grader=GRADERS, arith_op=tuple(ARITH_OPS))
        _need(self.grader_timeout_s > 0, "grader_timeout_s must be > 0")
        _need(all(1 <= lv <= 5 for lv in self.train_levels), "train_levels must be MATH levels 1..5")
        _need(not (self.train_levels and self.task == "arithmetic"),
              f"train_levels={self.train_levels} filters MATH levels and means nothing for the "
              "arithmetic task; drop it (train_levels=) or pick a MATH task (e.g. task=math_train)")
        _need(self.task != "arithmetic"
              or (self.arith_op == "mul_chain") == (self.answer_style == "chain"),
              f"arith_op={self.arith_op!r} with answer_style={self.answer_style!r}: the "
              "strategies task (mul_chain) is graded on the number after the last '=' "
              "(answer_style=chain), the other arithmetic families on the whole completion (plain)")


@dataclass(frozen=True)
class RolloutConfig(_Section):
    prompts_per_step: int = 16  # P, prompts drawn per step
    group_size: int = 8  # G, completions sampled per prompt (one group)
    temperature: float = 1.0  # rollout sampling temperature (also divides the training logits)
    top_p: float = 1.0  # rollout nucleus sampling (1 = off)
    max_new_tokens: int = 8  # completion length limit of training rollouts
    dynamic_sampling: bool = False  # drop all-equal groups and draw new prompts (DAPO)
    max_sampling_rounds: int = 4  # generation rounds per step when dynamic_sampling is on

    def check(self) -> None:
        _need(self.group_size >= 2,
              f"group_size={self.group_size}; GRPO needs at least 2 responses per prompt")
        _need(self.prompts_per_step >= 1, "prompts_per_step must be >= 1")
        _need(self.max_new_tokens >= 1, "max_new_tokens must be >= 1")
        _need(self.temperature > 0,
              "temperature must be > 0 (sampling); greedy is only used for evaluation")
        _need(0 < self.top_p <= 1, "top_p must be in (0, 1]")


@dataclass(frozen=True)
class OptimConfig(_Section):
    seed: int = 0  # LoRA init, prompt order, rollouts; evaluations: experiment.eval_seed
    steps: int = 60  # GRPO steps, one rollout batch each (0 = evaluate only)
    lr: float = 3e-4  # tiny default: +10.3 greedy points over 3 seeds vs +7.7 at 1e-4 (RESULTS.md)
    weight_decay: float = 0.0  # AdamW weight decay of the LoRA parameters
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.99  # AdamW beta2
    max_grad_norm: float = 1.0  # clip the LoRA gradient norm to this before each step
    epochs: int = 1  # optimisation passes over each rollout batch
    mini_batches: int = 1  # optimizer steps per epoch
    micro_batch_size: int = 0  # sequences per forward/backward (0 = whole mini-batch)
    save_every: int = 20  # checkpoint (adapter + optimizer + RNG) every N steps
    probe_every: int = 0  # log probe/loglik (the start policy's correct responses' log-lik.) and probe/kl_start every N steps (0 = off)
    probe_prompts: int = 64  # held-out problems whose first correct sample forms the probe set
    frontier_every: int = 0  # evaluate the policy every N steps into eval_step<N>.json: the greedy-vs-Pass@K frontier (0 = off)
    frontier_limit: int = 0  # problems per eval set in those evaluations, greedy and sampled (0 = the run's eval_limit / eval_passk_limit)
    sft_control: bool = True  # also train an equal-compute SFT control (LoRA, same steps/sequences)

    def check(self) -> None:
        _need(self.steps >= 0, "steps must be >= 0")
        _need(self.lr > 0, "lr must be > 0")
        _need(self.epochs >= 1 and self.mini_batches >= 1, "epochs and mini_batches must be >= 1")
        _need(self.micro_batch_size >= 0, "micro_batch_size must be >= 0 (0 = whole mini-batch)")
        _need(self.save_every >= 1, "save_every must be >= 1")
        _need(self.probe_every >= 0 and self.probe_prompts >= 1,
              "probe_every must be >= 0 (0 = off) and probe_prompts >= 1")
        _need(self.frontier_every >= 0 and self.frontier_limit >= 0,
              "frontier_every and frontier_limit must be >= 0 (0 = off / the run's own limits)")

    @property
    def on_policy(self) -> bool:
        """One epoch of one mini-batch: the rollout's policy is the one the update starts from."""
        return self.epochs == 1 and self.mini_batches == 1


@dataclass(frozen=True)
class LossConfig(_Section):
    objective: str = "grpo"  # the token ratio of the clipped surrogate
    clip_eps_low: float = 0.2  # the ratio is clipped below at 1 - clip_eps_low
    clip_eps_high: float = 0.2  # > clip_eps_low = DAPO clip-higher
    kl_coef: float = 1e-4  # k3 KL to the reference (= base model, adapters disabled); 0 skips the pass
    loss_agg: str = "token_mean"  # how per-token losses reduce to the mini-batch loss
    adv_estimator: str = "grpo"  # response advantages from the group's rewards
    adv_eps: float = 1e-6  # A = (r - mean) / (std + adv_eps), population std
    adv_std_norm: bool = True  # False = Dr. GRPO (no division by std)
    passk_k: int = 4  # K of Pass@K training, 1 <= K < group_size (K = 1 is GRPO)
    passk_chi: float = 0.2  # passk_mixed: chi * Pass@K advantage + (1 - chi) * GRPO advantage
    cov_mode: str = "off"  # token-covariance penalty (Cui et al. 2025)
    cov_ratio: float = 2e-4  # a fraction (not a percent) of the micro-batch's valid tokens
    cov_kl_coef: float = 1.0  # KL-Cov: weight of |logp - old_logp| on the top-covariance tokens
    cov_clip_lb: float = 1.0  # Clip-Cov: detach random tokens whose covariance lies in (lb, ub)
    cov_clip_ub: float = 5.0  # Clip-Cov: upper end of that window
    entropy_top_frac: float = 0.0  # forking tokens: train on this top fraction by entropy (0 = off)

    def check(self) -> None:
        _choose(self, objective=OBJECTIVES.names(), loss_agg=AGGREGATIONS.names(),
                adv_estimator=ADV_ESTIMATORS.names(), cov_mode=COV_MODES.names())
        _need(self.clip_eps_low >= 0 and self.clip_eps_high >= 0, "clip eps must be >= 0")
        _need(self.kl_coef >= 0, "kl_coef must be >= 0")
        _need(0 <= self.passk_chi <= 1, f"passk_chi={self.passk_chi} must be in [0, 1]")
        _need(0 < self.cov_ratio <= 1,
              f"cov_ratio={self.cov_ratio} is a fraction in (0, 1] (2e-4 = 0.02%)")
        _need(self.cov_kl_coef >= 0, "cov_kl_coef must be >= 0")
        _need(self.cov_clip_lb < self.cov_clip_ub, "cov_clip_lb must be < cov_clip_ub")
        _need(0 <= self.entropy_top_frac <= 1, f"entropy_top_frac={self.entropy_top_frac} is a "
              "fraction in [0, 1] (0 = off, paper 0.2)")


@dataclass(frozen=True)
class THRConfig(_Section):
    """docs/method.md sections 2-3."""

    thr_mode: str = "off"  # token advantages from THR: the method, NTHR or a control of its mask
    thr_p: float = 0.0  # p: > 0 exploitation, < 0 exploration (paper: +-0.1)
    thr_mask: bool = True  # keep only dominant tokens, |THR| > threshold
    thr_beta: float = 1.0  # threshold = beta * max(0, min over correct responses of mean THR)
    thr_tau_mode: str = "min_mean"  # the dominant-token threshold tau
    thr_tau_quantile: float = 0.8  # quantile mode: threshold = this quantile of abs(THR) in the group
    thr_vocab: str = "full"  # full (exact) | group (token ids seen in the group; approximation)
    thr_length_normalize: bool = True  # weight anchors by 1/|y_i|
    thr_advantage_weighted: bool = False  # A_j instead of (2 r_j - 1)
    thr_save_every: int = 10  # save per-token THR/entropy/text every N steps (0 = never)
    thr_save_rows: int = 32  # responses saved per such step (whole groups)
    thr_save_tokens: int = 512  # tokens saved per response

    def check(self) -> None:
        _choose(self, thr_mode=THR_MODES.names(), thr_vocab=("full", "group"),
                thr_tau_mode=THR_TAU_MODES.names())
        _need(-1.0 <= self.thr_p <= 1.0,
              f"thr_p={self.thr_p} must be in [-1, 1] (the paper uses +-0.1)")
        _need(not THR_MODES.describe(self.thr_mode).startswith("control:")
              or (self.thr_p == 0 and self.thr_mask),
              f"thr_mode={self.thr_mode} is a control of THR's mask at p = 0: it needs thr_p=0 "
              "and thr_mask=true")
        _need(self.thr_beta >= 0, "thr_beta must be >= 0")
        _need(0 <= self.thr_tau_quantile <= 1, "thr_tau_quantile must be in [0, 1]")
        _need(self.thr_save_every >= 0 and self.thr_save_rows >= 1 and self.thr_save_tokens >= 1,
              "thr_save_every must be >= 0, thr_save_rows and thr_save_tokens >= 1")

    @property
    def thr_on(self) -> bool:
        """Whether the run computes THR (the method or one of its controls)."""
        return self.thr_mode != "off"


@dataclass(frozen=True)
class EvalConfig(_Section):
    eval_sets: tuple[str, ...] = ("arithmetic",)  # benchmark names or JSONL paths
    eval_limit: int = 500  # problems per eval set (0 = all)
    eval_samples: int = 8  # n samples per problem for pass@k
    eval_passk_limit: int = 0  # problems per set that get the samples (0 = all); greedy uses all
    eval_temperature: float = 0.6  # sampling temperature of the pass@k samples
    eval_top_p: float = 0.95  # nucleus sampling of the pass@k samples
    eval_max_new_tokens: int = 8  # completion length limit in evaluation

    def check(self) -> None:
        _need(self.eval_max_new_tokens >= 1, "max_new_tokens must be >= 1")
        _need(0 < self.eval_top_p <= 1, "top_p must be in (0, 1]")
        _need(self.eval_samples >= 1, "eval_samples must be >= 1")
        _need(self.eval_limit >= 0 and self.eval_passk_limit >= 0,
              "eval_limit and eval_passk_limit must be >= 0 (0 = all)")
        _need(len(self.eval_sets) >= 1,
              "eval_sets is empty; name at least one set (e.g. arithmetic)")


@dataclass(frozen=True)
class TinyConfig(_Section):
    """The embedded tiny model and its cold start (used only when model == "tiny")."""

    tiny_arch: str = "qwen2"  # qwen2 | llama
    tiny_hidden: int = 128  # multiples of 64: bitsandbytes' CPU kernels need them
    tiny_layers: int = 4  # decoder layers of the tiny model
    tiny_heads: int = 4  # attention heads (tiny_hidden must be divisible by it)
    tiny_ffn: int = 512  # MLP width (a multiple of 64)
    # 600 steps leave the model mid-way up its learning curve (~30% greedy, ~48% pass@8):
    # competent enough for mixed-reward groups, far enough from saturation for RL to show.
    sft_steps: int = 600  # cold-start supervised steps
    sft_batch: int = 64  # cold-start problems per step
    sft_lr: float = 1e-3  # constant; 2e-3 plateaued higher in measurement
    sft_seed: int = 0  # the cold start has its own seed so GRPO seeds share one starting model

    def check(self) -> None:
        _choose(self, tiny_arch=("qwen2", "llama"))
        for w in ("tiny_hidden", "tiny_ffn"):
            _need(getattr(self, w) % 64 == 0, f"{w}={getattr(self, w)} must be a multiple of 64 "
                  "(bitsandbytes' 4-bit CPU kernels fail or go wrong on other widths)")
        _need(self.tiny_hidden % self.tiny_heads == 0, "tiny_hidden must be divisible by tiny_heads")


@dataclass(frozen=True)
class SystemConfig(_Section):
    """Where and how fast a run goes, never what it computes: outside the run id."""

    threads: int = 0  # torch CPU threads (0 = torch default)
    eval_batch_size: int = 256  # prompts per evaluation generate() call; 0 = what the memory plan fits in the free memory
    sampler: str = "exact"  # exact: generate()'s random numbers (its tokens bit for bit) | fast: inverse-CDF draws and a top-k nucleus, the same distribution (docs/method.md, Sampling)
    max_nonfinite_steps: int = 3  # skip NaN/inf steps; stop once more than this many were skipped
    oom_halve_micro_batch: bool = True  # on OOM in the update, halve the micro-batch and retry
    report_to: str = "none"  # mirror metrics.jsonl and THR token tables to: none | tensorboard | wandb

    def check(self) -> None:
        _need(self.max_nonfinite_steps >= 0, "max_nonfinite_steps must be >= 0")
        _choose(self, report_to=("none", "tensorboard", "wandb"), sampler=("exact", "fast"))
        _need(self.eval_batch_size >= 0, "eval_batch_size must be >= 0 (0: from the memory plan)")


SECTIONS = (ModelConfig, DataConfig, RolloutConfig, OptimConfig, LossConfig, THRConfig,
            EvalConfig, TinyConfig, SystemConfig)


@dataclass(frozen=True)
class Config(SystemConfig, TinyConfig, EvalConfig, THRConfig, LossConfig, OptimConfig,
             RolloutConfig, DataConfig, ModelConfig):
    """All settings of one thrlab run: every section's fields. Field docs are the CLI's --help."""

    preset: str = "tiny"  # the preset the config was built from (first part of the run id)

    def __post_init__(self) -> None:
        _check_types(self)
        for section in SECTIONS:
            section.check(self)
        _check_across_sections(self)

    # -- serialisation -----------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        _reject_unknown(d)
        return cls(**{k: _coerce(cls, k, v) for k, v in d.items()})

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    def replace(self, **overrides) -> Config:
        _reject_unknown(overrides)
        return dataclasses.replace(self, **{k: _coerce(Config, k, v) for k, v in overrides.items()})

    def result_dict(self) -> dict:
        """The fields that change results (all but SystemConfig's), as config.json stores them."""
        d = json.loads(self.to_json())
        for k in SystemConfig.names():
            d.pop(k)
        return d

    def config_hash(self) -> str:
        """Hash of every field that changes results (stable across field order and Python runs)."""
        text = json.dumps(self.result_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def _reject_unknown(d: dict) -> None:
    known = {f.name for f in fields(Config)}
    unknown = sorted(set(d) - known)
    if unknown:
        import difflib

        hints = [f"{u!r} (did you mean {difflib.get_close_matches(u, known, 1)[0]!r}?)"
                 if difflib.get_close_matches(u, known, 1) else repr(u) for u in unknown]
        raise ConfigError(f"unknown config key(s): {', '.join(hints)}. "
                         f"Known keys are the fields of thrlab.train.config.Config.")


def _coerce(cls, key: str, value):
    """Convert CLI/JSON values (strings, lists) to the field's declared type."""
    tp = typing.get_type_hints(cls)[key]
    origin = typing.get_origin(tp)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        elif not isinstance(value, (list, tuple)):
            value = [value]  # train_levels=3 means (3,)
        try:
            return tuple(inner(v) if isinstance(v, str) else v for v in value)
        except ValueError:
            raise ConfigError(f"config key {key!r} expects {inner.__name__} values, got "
                              f"{value!r}") from None
    if isinstance(value, str) and tp is not str:
        if tp is bool:
            low = value.strip().lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"config key {key!r} expects a bool (true/false), got {value!r}")
            return low in ("true", "1", "yes")
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"config key {key!r} expects {tp.__name__}, got {value!r}") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _check_types(cfg) -> None:
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        v, tp = getattr(cfg, f.name), hints[f.name]
        if typing.get_origin(tp) is tuple:
            inner = typing.get_args(tp)[0]
            ok = isinstance(v, tuple) and all(isinstance(x, inner) for x in v)
        elif tp is float:
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        elif tp is int:
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, tp)
        if not ok:
            raise ConfigTypeError(f"config key {f.name!r} must be {getattr(tp, '__name__', tp)}, "
                            f"got {type(v).__name__} {v!r}")


def _check_across_sections(c: Config) -> None:
    """The checks that read fields of more than one section."""
    _need(c.prompts_per_step * c.group_size % c.mini_batches == 0,
          f"prompts_per_step*group_size={c.prompts_per_step * c.group_size} is not divisible by "
          f"mini_batches={c.mini_batches}")
    _need(c.task == "arithmetic" or c.eval_sets != ("arithmetic",),
          f"task={c.task!r} trains on other data, but eval_sets is the default ('arithmetic',): "
          f"evaluation would score the embedded arithmetic set. Set eval_sets={c.task} (its "
          "held-out split) or name the sets to evaluate on (e.g. --set eval_sets=math500)")
    _need(not c.sft_control or c.task == "arithmetic",
          "sft_control is defined for the embedded arithmetic task only; set sft_control=false")
    _need(not c.adv_estimator.startswith("passk") or 1 <= c.passk_k < c.group_size,  # Pass@K's
          f"passk_k={c.passk_k} must be in [1, group_size={c.group_size}): Pass@K draws K of the "
          "group's G responses, and at K = G the draw is the whole group, so every advantage is 0")
    _need(c.cov_mode != "kl_cov" or not c.on_policy,
          "cov_mode=kl_cov with epochs=1 and mini_batches=1 is GRPO under another name: its "
          "penalty |logp - old_logp| is 0, with zero gradient, on an on-policy update. Set "
          "mini_batches >= 2 (or epochs >= 2) for every method of the comparison, e.g. "
          "--set mini_batches=2")
    _need(not c.thr_on or not c.on_policy or c.micro_batch_size % c.group_size == 0,
          f"THR needs whole groups per micro-batch: micro_batch_size={c.micro_batch_size} must be "
          f"a multiple of group_size={c.group_size} (or 0)")
    _need(not c.thr_on or "lm_head" not in c.lora_targets,
          f"lora_targets={c.lora_targets!r} puts LoRA on lm_head, but THR streams its "
          "probabilities from the unembedding's base weight and would ignore the LoRA delta; "
          "leave lm_head out (the default 'all-linear' does)")


def config_diff(stored: dict, cfg: Config) -> dict[str, tuple]:
    """{field: (stored, cfg's)} for the result fields where a stored config.json (a dict) differs
    from cfg; fields outside the hash (threads, ...) never count."""
    new, missing = cfg.result_dict(), "<absent>"
    keys = sorted((set(stored) | set(new)) - set(SystemConfig.names()))
    return {k: (stored.get(k, missing), new.get(k, missing)) for k in keys
            if stored.get(k, missing) != new.get(k, missing)}


def parse_overrides(pairs: list[str]) -> dict:
    """Turn CLI `key=value` strings into a dict (values are coerced by Config.replace)."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"override {p!r} is not key=value (e.g. --set lr=1e-4)")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def field_docs() -> dict[str, str]:
    """Return {field: comment} parsed from this module's source, for --help."""
    import inspect
    import re

    src = "".join(inspect.getsource(c) for c in (Config, *SECTIONS))
    docs = {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^\s+(\w+): [^=]+=[^#\n]*#\s*(.+)$", src, re.M)}
    for family in FAMILIES:  # the choices, from the one list of them
        docs[family.field] += ": " + " | ".join(family.names())
    return docs

