"""A memory plan before a run starts: the peak accelerator memory of each phase of a run, from
its config and the model's architecture alone (no weights loaded, seconds).

`plan(cfg, arch, prompt_tokens)` sums, per phase, the tensors that phase holds at its peak:

  weights     4-bit NF4 linear layers (0.5 byte per weight plus the block scales) and the
              embedding / unembedding, norms and biases in compute dtype (left unquantised)
  lora        the adapters in fp32 (peft casts them up), and in training their gradients and
              AdamW's two moments: 16 bytes per adapter weight
  kv_cache    generation's keys and values: 2 x layers x rows x KV heads x head_dim x
              (prompt + new tokens) in compute dtype; rows = P x G in training, eval_batch_size x
              eval_samples in evaluation (its sampled pass; greedy uses eval_batch_size rows)
  sampling    per new token, the fp32 logits of every row and their softmax / top-p copies
  activations a forward over one micro-batch: without gradient one layer's tensors at a time;
              with gradient every layer's saved tensors, or with gradient checkpointing each
              layer's input plus one layer recomputed
  logits      the (micro-batch x T x V) log-prob tensors: chunks of model._LOGIT_ELEMENTS
              without gradient; with gradient the fp32 logits kept for the backward and their
              gradient (`_LOGITS_GRAD_BYTES` per element)
  thr         THR streamed from the unembedding (thr.py): the old policy's states (B, T, H) of
              the batch, an fp32 copy of W (V, H), the factorised route's M (V, H) and four
              (chunk x V) fp32 buffers
  dequant     the largest 4-bit weight dequantised for one matmul (bitsandbytes does this per call);
              in generation every 4-bit weight, dequantised once per call (model.dequantized_4bit)

Each term is a formula over the shapes, not a measurement; `benchmarks/rehearse.py` measures the
tracked tensor bytes of every phase at real width on CPU and prints them beside this plan (the
error is recorded in benchmarks/RESULTS.md). `check(cfg, arch, ...)` is what `train` and
`evaluate` print on CUDA: the plan, and a warning naming the knob to turn when a phase exceeds
the device's memory. `prompt_assumption(cfg)` measures the prompt length a plan needs from the
config's own prompts and tokenizer when both are on this machine (`thrlab plan` says which it did).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from thrlab.core.errors import ThrlabError
from thrlab.core.thr import CHUNK_SIZE as _THR_CHUNK, route_flops
from thrlab.tasks.benchmarks import format_prompt
from thrlab.tasks.task import eval_task, task_of
from thrlab.tasks.word_problems import WORD_OPS

from .model import _LOGIT_ELEMENTS, load_tokenizer, resolve_dtype
from .model_cards import CARDS
from .packaged import PACKAGED, ensure_packaged_model
from .presets import preset_config
from .tiny import build_model, build_tokenizer

# With gradient, per (row, token, vocab) element: five fp32 tensors at the backward's peak: the
# logits / temperature kept for it, their gradient, and logsumexp's backward temporaries
# (logits - logsumexp, its exp, the product with the gradient); measured by the rehearsal.
_LOGITS_GRAD_BYTES = 20
PHASES = ("generate", "old_logp", "ref_logp", "thr", "update", "evaluate")
# The prompt length a plan assumes when it cannot measure one: MATH's longest prompt with the
# Qwen2.5 tokenizer (the rehearsal's, benchmarks/RESULTS.md), the paper presets' worst case.
DEFAULT_PROMPT_TOKENS = 1800
PROMPT_SAMPLE = 2000  # prompts measured per set (`prompt_tokens`, also at the start of a run)


@dataclass(frozen=True)
class Architecture:
    """The numbers of a decoder-only transformer that memory depends on."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    qkv_bias: bool = False  # Qwen2 adds biases to q, k and v

    @classmethod
    def of(cls, config) -> Architecture:
        """From a transformers config (or any object / dict with its attribute names)."""
        get = config.get if isinstance(config, dict) else (lambda k, d=None: getattr(config, k, d))
        heads = get("num_attention_heads")
        return cls(vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
                   intermediate_size=get("intermediate_size"),
                   num_hidden_layers=get("num_hidden_layers"), num_attention_heads=heads,
                   num_key_value_heads=get("num_key_value_heads") or heads,
                   head_dim=get("head_dim") or get("hidden_size") // heads,
                   tie_word_embeddings=bool(get("tie_word_embeddings", False)),
                   qkv_bias=get("model_type") == "qwen2" or bool(get("attention_bias", False)))

    @property
    def q_dim(self) -> int:
        """Width of the queries (and the attention output): heads x head_dim."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        """Width of the keys (and of the values): KV heads x head_dim."""
        return self.num_key_value_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer (the LoRA targets of all-linear)."""
        H, I, q, kv = self.hidden_size, self.intermediate_size, self.q_dim, self.kv_dim
        return {"q_proj": (H, q), "k_proj": (H, kv), "v_proj": (H, kv), "o_proj": (q, H),
                "gate_proj": (H, I), "up_proj": (H, I), "down_proj": (I, H)}


def architecture_of(model: str, cfg=None) -> Architecture:
    """The architecture of a model id or folder: its card (thrlab.train.model_cards) when there is
    one; for "tiny" the shape cfg's tiny_* fields give (default the tiny preset's), built on the
    meta device (no weights, no cold start, the global RNG untouched); else its config.json (a
    local folder, or the hub cache / the hub)."""

    if model in CARDS:
        return Architecture.of(CARDS[model].config_dict())
    if model in PACKAGED:  # its converted folder (converted once, here if not yet)
        model = str(ensure_packaged_model(model, progress=False))
    if model == "tiny":
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            lm = build_model(cfg or preset_config("tiny"), len(build_tokenizer()))
        return Architecture.of(lm.config)
    from transformers import AutoConfig

    return Architecture.of(AutoConfig.from_pretrained(model))


def nf4_bytes(n_weights: int, double_quant: bool) -> float:
    """Bytes of n weights in bitsandbytes NF4 (blocks of 64; double quantisation stores the block
    scales as uint8 in blocks of 256 with one fp32 scale each, else one fp32 scale per block)."""
    blocks = n_weights / 64
    return n_weights / 2 + (blocks + 4 * blocks / 256 if double_quant else 4 * blocks)


def nf4_layer_constant(double_quant: bool) -> int:
    """Bytes every NF4 layer holds besides its weights' share: the 16-value NF4 code in fp32,
    and with double quantisation the 256-value code of the scales and its fp32 offset."""
    return 4 * 16 + (4 * 256 + 4 if double_quant else 0)


def _lora_targets(arch: Architecture, targets: str) -> list[str]:
    names = list(arch.linear_shapes())
    if targets == "all-linear":
        return names
    wanted = {t.strip() for t in targets.split(",")}
    return [n for n in names if n in wanted]


def _layer_act_bytes(arch: Architecture, d: int, lora: list[str]) -> float:
    """Bytes one decoder layer saves for the backward, per token (compute dtype d bytes; each of
    `lora` adapted linears keeps an fp32 copy of its input, peft's cast to the adapter dtype)."""
    H, I, q, kv = arch.hidden_size, arch.intermediate_size, arch.q_dim, arch.kv_dim
    norms = 2 * (4 * H + d * H)  # RMSNorm keeps its fp32 input and its output, twice
    attn = d * (q + 2 * kv) + d * (q + kv) + d * 2 * q + d * q + 4 * arch.num_attention_heads
    # q, k, v; q, k after RoPE; k, v repeated to every head (GQA); the output; its logsumexp
    mlp = d * 4 * I  # gate, up, act(gate), act(gate) * up
    resid = 2 * d * H
    lora_in = sum(4 * i for n, (i, _) in arch.linear_shapes().items() if n in lora)
    return norms + attn + mlp + resid + lora_in


def _layer_nograd_bytes(arch: Architecture, d: int) -> float:
    """Peak bytes per token of one layer's forward without gradient (a few tensors live at once)."""
    H, I, q, kv = arch.hidden_size, arch.intermediate_size, arch.q_dim, arch.kv_dim
    return max(4 * H + d * (2 * H + q + 2 * kv + 2 * q), d * (2 * H + 3 * I))


def plan(cfg, arch: Architecture, prompt_tokens: int, *, eval_prompt_tokens: int | None = None,
         device: str = "cuda") -> dict:
    """{phase: {term: bytes}} of cfg's run on arch with training prompts of prompt_tokens tokens
    (the longest prompt a batch will hold) and evaluation prompts of eval_prompt_tokens (default
    the same). `total(plan)[phase]` is the phase's peak."""
    d = resolve_dtype(cfg, torch.device(device)).itemsize  # compute-dtype bytes
    H, V, n_layers = arch.hidden_size, arch.vocab_size, arch.num_hidden_layers
    shapes = arch.linear_shapes()
    n_lin = n_layers * sum(i * o for i, o in shapes.values())
    embed = V * H * d * (1 if arch.tie_word_embeddings else 2)
    bias = n_layers * (arch.q_dim + 2 * arch.kv_dim) if arch.qkv_bias else 0
    small = d * ((2 * n_layers + 1) * H + bias)
    quantized = (nf4_bytes(n_lin, cfg.bnb_double_quant) + n_layers * len(shapes)
                 * nf4_layer_constant(cfg.bnb_double_quant) if cfg.load_in_4bit else n_lin * d)
    weights = quantized + embed + small  # + norms and biases (unquantised)
    targets = _lora_targets(arch, cfg.lora_targets)
    n_lora = n_layers * sum(cfg.lora_r * sum(shapes[t]) for t in targets)
    lora_eval, lora_train = 4 * n_lora, 16 * n_lora
    dequant = max(i * o for i, o in shapes.values()) * d if cfg.load_in_4bit else 0
    kv_tok = 2 * n_layers * arch.kv_dim * d  # per row and token
    P, G, T = cfg.prompts_per_step, cfg.group_size, cfg.max_new_tokens
    B, L = P * G, prompt_tokens + T
    mb = min(cfg.micro_batch_size or B, B // cfg.mini_batches)  # rows per forward/backward
    mf = min(cfg.micro_batch_size or B, B)  # rows per forward of the no-grad passes (whole batch)
    chunk = 4 * min(_LOGIT_ELEMENTS, max(mf * T, 1) * V)  # fp32 bytes of one logits chunk
    nograd = dict(activations=mf * L * _layer_nograd_bytes(arch, d) + mf * L * H * d,
                  logits=3 * chunk)  # logits, and the entropy's softmax and product
    ref = dict(nograd, logits=2 * chunk)  # no entropy: logits and logsumexp's temporary

    # generation dequantises every 4-bit weight once per call (model.dequantized_4bit; it stops
    # at a quarter of the free memory and leaves the rest to bnb's per-call path)
    dequant_gen = n_lin * d if cfg.load_in_4bit else 0

    def generation(prompts: int, n: int, prompt: int, new: int) -> dict:
        rows = prompts * n  # each prompt is prefilled once (rollout's shared prefill), then n rows
        return dict(kv_cache=rows * (prompt + new) * kv_tok,
                    sampling=4 * 4 * rows * V,  # logits, softmax, sorted copy, cumulative sum
                    activations=prompts * prompt * _layer_nograd_bytes(arch, d),
                    dequant=dequant_gen)

    fixed_train = dict(weights=weights, lora=lora_train)
    states = B * T * H * d if cfg.thr_on else 0  # the old pass's states, kept for THR
    act = _layer_act_bytes(arch, d, targets)
    saved = (n_layers * mb * L * H * d + mb * L * act if cfg.gradient_checkpointing
             else n_layers * mb * L * act)
    out = {
        "generate": {**fixed_train, **generation(P, G, prompt_tokens, T)},
        "old_logp": {**fixed_train, **nograd, "thr_states": states, "dequant": dequant},
        "ref_logp": ({**fixed_train, **ref, "thr_states": states, "dequant": dequant}
                     if cfg.kl_coef > 0 else {}),
        "thr": ({**fixed_train, "thr_states": states, "thr": thr_bytes(V, H, G * T, G // 2 * T)}
                if cfg.thr_on else {}),
        "update": {**fixed_train, "thr_states": 0 if cfg.on_policy else states,
                   "activations": saved, "logits": _LOGITS_GRAD_BYTES * mb * T * V,
                   "dequant": dequant},
        "evaluate": {"weights": weights, "lora": lora_eval,
                     **generation(cfg.eval_batch_size, cfg.eval_samples,
                                  eval_prompt_tokens or prompt_tokens, cfg.eval_max_new_tokens)},
    }
    return {k: {t: float(b) for t, b in v.items()} for k, v in out.items() if v}


def thr_bytes(V: int, H: int, n: int, n_c: int, chunk: int = _THR_CHUNK) -> float:
    """THR's buffers for a group of n real tokens, n_c of them anchors (correct responses'), at
    vocabulary V and width H, streamed from the unembedding: W in fp32 and the states (n, H) in
    fp32, then the route thr.token_hidden_reward picks (thr.route_flops): factorised holds
    M (V, H) and four (chunk x V) rows (probabilities held and made, M h, their product); gram
    two (chunk x V) rows, the anchors' probabilities at every token (chunk x n) and four
    (chunk x chunk) products."""
    flops = route_flops(n, n_c, V, H, True, chunk)
    c = min(chunk, n)
    route = (4 * V * H + 4 * c * V if min(flops, key=flops.get) == "factorised"
             else 2 * c * V + c * n + 4 * c * c)
    return 4.0 * (V * H + n * H + route)


def total(p: dict) -> dict[str, float]:
    """{phase: peak bytes} of a plan."""
    return {k: sum(v.values()) for k, v in p.items()}


# What lowers each phase's peak: (config field, the value to set, or None for "a smaller
# number", why it helps). `over` names only those the config has not already turned.
_KNOBS = {
    "generate": (("prompts_per_step", None, "fewer rows in flight"),
                 ("max_new_tokens", None, "")),
    "old_logp": (("micro_batch_size", None, ""),),
    "ref_logp": (("micro_batch_size", None, ""), ("kl_coef", 0.0, "skips the reference pass")),
    "thr": (("prompts_per_step", None, "THR keeps the batch's states"),
            ("max_new_tokens", None, ""), ("thr_vocab", "group", "")),
    "update": (("micro_batch_size", None, ""), ("gradient_checkpointing", True, "")),
    "evaluate": (("eval_batch_size", None, "prompts per generate call; x eval_samples rows in "
                                           "flight"),),
}


def _floor(cfg, field: str) -> int:
    """The smallest valid value of a count knob: THR on-policy needs whole groups per
    micro-batch; every other count can go down to 1."""
    if field == "micro_batch_size" and cfg.thr_on and cfg.on_policy:
        return cfg.group_size
    return 1


def knobs(phase: str, cfg=None) -> list[str]:
    """The knobs that lower `phase`'s peak, as advice ("lower micro_batch_size (now 8)",
    "set gradient_checkpointing=true"); with cfg, only those cfg can still turn: none already
    at the value it would be set to, no count already at its floor (micro_batch_size=0 means the
    whole batch, which can be lowered)."""
    out = []
    for field, value, why in _KNOBS[phase]:
        note = f": {why}" if why else ""
        if value is None:
            now = None if cfg is None else getattr(cfg, field)
            if now is not None and 0 < now <= _floor(cfg, field):
                continue
            shown = "" if now is None else f" (now {now or 'the whole batch'})"
            out.append(f"lower {field}{shown}{note}")
        elif cfg is None or getattr(cfg, field) != value:
            shown = str(value).lower() if isinstance(value, bool) else value
            out.append(f"set {field}={shown}{note}")
    return out


def format_plan(p: dict, capacity: float | None = None) -> str:
    """A table, one row per phase: its peak in GB and its three largest terms."""
    lines = [f"memory plan (GB){'' if capacity is None else f', capacity {capacity / 1e9:.1f}'}"]
    for phase, terms in p.items():
        top = sorted(terms.items(), key=lambda kv: -kv[1])[:3]
        detail = ", ".join(f"{t} {b / 1e9:.2f}" for t, b in top)
        lines.append(f"  {phase:<9}{sum(terms.values()) / 1e9:8.2f}   ({detail})")
    return "\n".join(lines)


def over(p: dict, capacity: float, cfg=None) -> list[str]:
    """A warning per phase whose peak exceeds capacity bytes, naming the knobs to turn (with
    cfg, only those it has not already turned; see `knobs`)."""
    out = []
    for phase, b in total(p).items():
        if b <= capacity:
            continue
        advice = knobs(phase, cfg)
        what = ("; or ".join(advice) if advice else "every knob that lowers it is already "
                "turned; plan for a larger card (--capacity-gb) or a smaller model")
        out.append(f"{phase} needs ~{b / 1e9:.1f} GB of the {capacity / 1e9:.1f} GB capacity: "
                   f"{what}")
    return out


def prompt_tokens(problems, tok, template: str, limit: int = PROMPT_SAMPLE) -> int:
    """The longest templated prompt, in tokens, among the first `limit` problems."""
    texts = [format_prompt(p.question, template, tok) for p in problems[:limit]]
    return max((len(ids) for ids in tok(texts, add_special_tokens=False).input_ids), default=0)


def _offline_tokenizer(model: str):
    """The model's tokenizer from this machine only: the tiny model's is built in code, a folder's
    read from it, a hub id's from the hub cache (never downloaded)."""
    if model == "tiny":
        return build_tokenizer()
    if model in PACKAGED:
        model = str(ensure_packaged_model(model, progress=False))
    if Path(model).is_dir():
        return load_tokenizer(model)
    from transformers import AutoTokenizer  # the hub cache only, below

    return AutoTokenizer.from_pretrained(model, local_files_only=True)


def _offline(name: str, cfg) -> bool:
    """Whether a task or eval set loads without the hub: a synthetic task (arithmetic, the word
    problems), a JSONL path, or a benchmark name read from data_dir / $THRLAB_DATA_DIR."""
    return (name in ("arithmetic", *WORD_OPS) or str(name).endswith(".jsonl")
            or bool(cfg.data_dir or os.environ.get("THRLAB_DATA_DIR")))


def prompt_assumption(cfg, given: int | None = None) -> tuple[int, int, str]:
    """(training prompt tokens, evaluation prompt tokens, where they come from) for cfg's plan:
    `given` when the caller gives it; else the longest of the first PROMPT_SAMPLE prompts of
    cfg's task and of its eval sets, measured with the model's tokenizer when both are on this
    machine (nothing is downloaded); else DEFAULT_PROMPT_TOKENS, said to be an assumption."""
    if given is not None:
        return given, given, f"{given} tokens, as given (--prompt-tokens)"
    names = [f"task={cfg.task}"] + [f"eval set {n}" for n in cfg.eval_sets]
    remote = [n for n in (cfg.task, *cfg.eval_sets) if not _offline(n, cfg)]
    why = None
    if remote:
        why = (f"{', '.join(remote)} would load from the hub (set data_dir= or $THRLAB_DATA_DIR "
               "to a folder of their JSONL files to measure them)")
    else:
        what = f"the tokenizer of {cfg.model}"
        try:
            tok = _offline_tokenizer(cfg.model)
            what = "the prompts"
            train = prompt_tokens(task_of(cfg).train(cfg.seed), tok, cfg.template, PROMPT_SAMPLE)
            evals = max(prompt_tokens(eval_task(n, cfg).heldout(cfg.eval_limit or None), tok,
                                      cfg.template, PROMPT_SAMPLE) for n in cfg.eval_sets)
        except (OSError, ValueError, ThrlabError) as err:  # not cached, no such file, bad rows
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            why = f"{what} could not be read on this machine ({first})"
        else:
            model = "the tiny model" if cfg.model == "tiny" else cfg.model
            return train, evals, (
                f"{train} tokens in training, {evals} in evaluation: the longest of (up to) the "
                f"first {PROMPT_SAMPLE:,} prompts of {' and '.join(names)}, measured with "
                f"{model}'s tokenizer and template={cfg.template}")
    n = DEFAULT_PROMPT_TOKENS
    return n, n, (f"assumed {n:,} tokens (MATH's longest prompt with the Qwen2.5 tokenizer), not "
                  f"measured: {why}; --prompt-tokens N plans for another length")


def eval_batch_size(cfg, arch: Architecture, prompt_tokens: int, free_bytes: float,
                    device: str = "cuda") -> int:
    """Prompts per evaluation generate() call that fit `free_bytes` (memory free now, the model
    already loaded): the plan's evaluation terms are affine in the prompts per call (KV cache,
    sampling buffers and prefill activations grow with it; the dequantised copy does not), so
    this is the largest count whose growth fits EVAL_MEMORY_FRAC of what is free; at least 1."""
    from dataclasses import replace

    def grown(b: int) -> float:
        e = plan(replace(cfg, eval_batch_size=b), arch, prompt_tokens, device=device)["evaluate"]
        return sum(v for k, v in e.items() if k not in _RESIDENT)

    fixed = grown(0)
    return max(1, int((EVAL_MEMORY_FRAC * free_bytes - fixed) // (grown(1) - fixed)))


def eval_batch_size_on_card(cfg, arch: Architecture, prompt_tokens: int, capacity: float) -> int:
    """`eval_batch_size` on a card of `capacity` bytes holding only the model (its weights and
    adapters, as the plan counts them): what evaluation will choose there."""
    e = plan(cfg, arch, prompt_tokens)["evaluate"]
    return eval_batch_size(cfg, arch, prompt_tokens, capacity - sum(e[k] for k in _RESIDENT))


_RESIDENT = ("weights", "lora")  # evaluation terms held before its first call
EVAL_MEMORY_FRAC = 0.8


def check(cfg, model, tok, problems, *, phases=PHASES, log=print) -> dict:
    """On CUDA, print the plan of `phases` for cfg on model's architecture, and a warning per
    phase that exceeds the device's memory; return the plan ({} on other devices)."""
    device = next(model.parameters()).device
    if device.type != "cuda":
        return {}
    capacity = float(torch.cuda.get_device_properties(device).total_memory)
    p = {k: v for k, v in plan(cfg, Architecture.of(model.config),
                               prompt_tokens(problems, tok, cfg.template)).items() if k in phases}
    log(format_plan(p, capacity))
    for warning in over(p, capacity, cfg):
        log(f"WARNING: {warning}")
    return p
