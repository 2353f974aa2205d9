"""Model loading: 4-bit NF4 base + LoRA (bitsandbytes, peft), the CPU gradient guard, the
reference policy (= adapters disabled, no second copy) and the one forward pass that yields
per-token log-probs, entropy and last-layer hidden states together.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import torch

from thrlab.core.errors import SetupError
from thrlab.core.unembed import unembed

from .config import Config

# bitsandbytes logs a harmless failure to fetch optional hub kernels on CPU (ENVIRONMENT.md).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# peft calls a transformers attribute that transformers 5 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise SetupError("device='cuda' but no CUDA GPU is visible; use --set device=cpu "
                         "(and the tiny preset) or run on a GPU machine")
    return torch.device(cfg.device)


def resolve_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    if cfg.compute_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, cfg.compute_dtype)


def guard_cpu_4bit(model) -> int:
    """Disable bitsandbytes' AVX512-BF16 CPU inference repack, which silently breaks gradients.

    bnb 0.49/0.50 repack each Linear4bit weight on the first no-grad eval forward into a layout
    whose kernel has no autograd; every later backward then drops the gradient through the 4-bit
    layers (LoRA grads ~88% wrong). Returns the number of modules guarded.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_tokenizer(path: str):
    """Load the tokenizer, left-padded, with a pad token.

    A local folder whose tokenizer_config declares a generic fast tokenizer (the embedded tiny
    model's) is loaded as exactly that: AutoTokenizer would pick the class from the model type
    (Qwen2Tokenizer) and rebuild a pre-tokenizer that drops the character tokenizer's spaces.
    """
    import json
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    cfg_file = Path(path) / "tokenizer_config.json"
    generic = cfg_file.exists() and json.loads(cfg_file.read_text()).get("tokenizer_class") in (
        "PreTrainedTokenizerFast", "TokenizersBackend")
    tok = (PreTrainedTokenizerFast if generic else AutoTokenizer).from_pretrained(path)
    tok.padding_side = "left"  # generation appends on the right
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(cfg: Config, path: str, device: torch.device):
    """Load the base causal LM, 4-bit NF4 when cfg.load_in_4bit, with the CPU guard applied."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a per-load weight bar drowns thrlab's own progress bars
    dtype = resolve_dtype(cfg, device)
    kwargs = dict(dtype=dtype)
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=cfg.bnb_double_quant, bnb_4bit_quant_storage=torch.uint8)
        kwargs["device_map"] = {"": device.index or 0} if device.type == "cuda" else {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if not cfg.load_in_4bit:
        model.to(device)
    guard_cpu_4bit(model)
    return model


def add_lora(model, cfg: Config):
    """Wrap the base in trainable LoRA adapters (base weights frozen)."""
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets, bias="none", task_type="CAUSAL_LM")
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x's name
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:  # the older name (a FutureWarning on stderr where the new one exists)
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, lcfg)
    guard_cpu_4bit(peft_model)
    head = peft_model.get_base_model().get_output_embeddings()
    if cfg.thr_mode != "off" and hasattr(head, "lora_A"):  # e.g. a regex that also matched it
        raise ValueError(f"lora_targets={cfg.lora_targets!r} wrapped the unembedding (lm_head) in "
                         "LoRA, but THR streams its probabilities from the base weight and would "
                         "ignore the LoRA delta; choose targets that leave lm_head alone (the "
                         "default 'all-linear' does)")
    return peft_model


def load_policy(cfg: Config, path: str, device: torch.device):
    """Return (peft model, tokenizer): the policy; the reference is the same model, adapters off."""
    return add_lora(load_base(cfg, path, device), cfg), load_tokenizer(path)


@contextmanager
def dequantized_4bit(model):
    """Context in which 4-bit layers reuse one dequantised weight instead of making it per call.

    bitsandbytes dequantises each NF4 weight on every forward of more than one row (its CPU path
    always: dequantize + F.linear; its CUDA path for batched inputs: `MatMul4Bit`). Generation
    runs the model once per new token, so inside this context every `bitsandbytes.nn.Linear4bit`
    computes `F.linear(x, W, bias)` with W made once on entry by bnb's own dequantisation
    (outputs bit-identical on CPU, tested; on CUDA the same ops as `MatMul4Bit`, checked by
    benchmarks/gpu_check.py). Only without grad (bnb's autograd path is left alone) and, on CPU,
    only on guarded layers (`guard_cpu_4bit`; bnb would repack an unguarded one for another
    kernel). Costs a copy of the 4-bit weights in the compute dtype while inside, for at most
    `_DEQUANT_MEM_FRAC` of the memory free on the weights' device (`available_memory`; layers
    past it keep bnb's per-call path; the tiny model needs 4 MB, a 1.5B model 3 GB in bf16).
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        yield model
        return
    mods = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
            and not getattr(m, "support_avx512bf16_for_cpu", False)  # unguarded: bnb repacks
            and not getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    budget = {d: _DEQUANT_MEM_FRAC * available_memory(d)
              for d in {m.weight.device for m in mods}}  # the rest keep bnb's per-call path
    done = []
    for m in mods:
        qs = m.weight.quant_state
        need = qs.shape.numel() * (4 if m.weight.device.type == "cpu" else qs.dtype.itemsize)
        budget[m.weight.device] -= need
        if budget[m.weight.device] < 0:
            continue
        m.forward = _dequantized_forward(m)  # instance attribute shadows the class method
        done.append(m)
    try:
        yield model
    finally:
        for m in done:
            del m.forward


_DEQUANT_MEM_FRAC = 0.25


def available_memory(device: torch.device | None = None) -> int:
    """Bytes free for new tensors: on a CUDA device the allocator's free memory, else the host's
    MemAvailable (8 GiB if unknown)."""
    if device is not None and torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f
                        if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 8 * 2**30


def _dequantized_forward(m):
    """Linear4bit.forward of bnb 0.50 without grad, its weight dequantised once per dtype."""
    import bitsandbytes as bnb
    import torch.nn.functional as F

    cache: dict = {}
    qs = m.weight.quant_state

    def weight(dtype):  # bnb's dequantisation, step by step (CPU: gemm_4bit's default path)
        if dtype not in cache:
            absmax = qs.absmax
            if qs.nested:
                absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
                    qs.absmax, qs.state2.absmax, qs.state2.code, qs.state2.blocksize,
                    torch.float32) + qs.offset
            cuda = m.weight.device.type == "cuda"  # MatMul4Bit: dequantise in qs.dtype, then cast
            w = torch.ops.bitsandbytes.dequantize_4bit.default(
                m.weight.view(-1, 1), absmax, qs.blocksize, qs.quant_type, qs.shape,
                qs.dtype if cuda else dtype)
            cache[dtype] = w.to(dtype)
        return cache[dtype]

    def forward(x):
        if torch.is_grad_enabled() or (qs.nested and qs.state2.blocksize != 256):
            return type(m).forward(m, x)  # bnb's own path (autograd, or an unusual layout)
        if not m.compute_type_is_set:
            m.set_compute_type(x)
            m.compute_type_is_set = True
        inp_dtype = x.dtype
        if m.compute_dtype is not None:
            x = x.to(m.compute_dtype)
        bias = None if m.bias is None else m.bias.to(x.dtype)
        return F.linear(x, weight(x.dtype), bias).to(inp_dtype)

    assert isinstance(m, bnb.nn.Linear4bit)
    return forward


@contextmanager
def reference_policy(model):
    """Context in which `model` computes the reference policy (LoRA adapters disabled)."""
    if hasattr(model, "disable_adapter"):
        with model.disable_adapter():
            yield model
    else:
        yield model


def lm_parts(model):
    """Return (backbone, lm_head) of a (peft-wrapped) causal LM; LoRA layers live inside both."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def completion_forward(model, input_ids, attention_mask, prompt_len: int, temperature: float,
                       *, need_hidden: bool = False, need_entropy: bool = True,
                       need_logits: bool = False):
    """Run the model once over prompt+completion; return per-completion-token quantities.

    input_ids, attention_mask: (B, L) with prompts left-padded to prompt_len, completions after.
    Returns dict: logp (B, T) log pi(y_t) at `temperature`; entropy (B, T) (no grad);
    hidden (B, T, H) post-final-norm states that predict each completion token (if asked);
    logits (B, T, V) at `temperature`, detached (if asked; only with grad enabled, where they are
    kept for the backward anyway, so THR can reuse them instead of recomputing h W^T).
    Rows sharing a prompt share its computation (`completion_states`); the vocabulary-sized
    tensors are made `_LOGIT_ELEMENTS` at a time where no gradient needs them (`_token_stats`).
    """
    backbone, lm_head = lm_parts(model)
    h = completion_states(backbone, input_ids, attention_mask, prompt_len)  # (B, T, H)
    if need_logits and not torch.is_grad_enabled():
        raise ValueError("need_logits is only served with grad enabled (without grad the logits "
                         "are made in chunks and never held)")
    out = _token_stats(lm_head, h, input_ids[:, prompt_len:], temperature, need_entropy,
                       need_logits)
    if need_hidden:
        out["hidden"] = h
    return out


def completion_states(backbone, input_ids, attention_mask, prompt_len: int) -> torch.Tensor:
    """Last-layer states (B, T, H) at the positions that predict the completion tokens.

    The G rows of a group repeat one prompt. When that saves work (and the backbone keeps a KV
    cache: not under gradient checkpointing with grad), the prompt positions run once per
    distinct prompt, on one full-length row of it, and the completions of all rows run against
    its KV cache. Using a full-length row keeps each attention reduction over the same L keys as
    a plain pass, so the states equal `backbone(input_ids)`'s up to the GEMMs seeing B*T rows
    instead of B*L: bit for bit where a kernel's result per row does not depend on the row count
    (seen on an Intel Xeon with AVX512), a few ulps where it does (AVX2 kernels; an AMD EPYC with
    grad enabled); tested to rounding on every kind. Gradients agree to float rounding (the
    shared prompt's gradient sums over its rows).
    """
    B, L = input_ids.shape
    T = L - prompt_len
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at 0

    def plain():
        if B == 0:  # an empty micro-batch: attention layers cannot reshape 0 rows
            return backbone.get_input_embeddings()(input_ids)[:, prompt_len - 1:-1]
        h = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                     use_cache=False).last_hidden_state  # (B, L, H)
        return h[:, prompt_len - 1:-1]  # state at t predicts token t+1

    cache_kw = _cache_kwarg(backbone)
    grad_ckpt = torch.is_grad_enabled() and getattr(backbone, "gradient_checkpointing", False)
    if B == 0 or T < 1 or cache_kw is None or grad_ckpt:
        return plain()
    first, inv = _distinct_rows(torch.cat([input_ids[:, :prompt_len],
                                           attention_mask[:, :prompt_len]], 1))
    saved = B * L - (len(first) * L + B * T)  # token rows the sharing does not compute
    if saved < max(0.1 * B * L, _MIN_SHARED_ROWS):
        return plain()
    head = backbone(input_ids=input_ids[first], attention_mask=attention_mask[first],
                    position_ids=pos[first], use_cache=True)  # (U, L, H) one row per prompt
    cache = getattr(head, cache_kw)
    if not _plain_kv_cache(cache):  # sliding-window / linear-attention layers: no sharing
        return plain()
    cache.crop(-T)  # keep the prompt positions
    cache.reorder_cache(inv)  # (U, ...) -> (B, ...)
    tail = backbone(input_ids=input_ids[:, prompt_len:], attention_mask=attention_mask,
                    position_ids=pos[:, prompt_len:], use_cache=True,
                    **{cache_kw: cache}).last_hidden_state  # (B, T, H)
    return torch.cat([head.last_hidden_state[inv, prompt_len - 1:prompt_len], tail[:, :-1]], 1)


# A second backbone call costs its fixed overhead; below this many saved token rows it is not
# worth it (measured: 8 rows x 21 tokens lose, the tiny preset's 128 x 21 gain 1.8x).
_MIN_SHARED_ROWS = 512


def _distinct_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, inv): x[first] are the distinct rows of x (B, K), x[first[inv]] == x."""
    _, inv = torch.unique(x, dim=0, return_inverse=True)  # (B,)
    rows = torch.arange(len(x), device=x.device)
    first = torch.full((int(inv.max()) + 1,), len(x), dtype=torch.long, device=x.device)
    return first.scatter_reduce(0, inv, rows, "amin"), inv  # (U,), (B,)


def _plain_kv_cache(cache) -> bool:
    """Whether every layer of cache holds all positions' keys and values (cropable, no window)."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _cache_kwarg(backbone) -> str | None:
    """Name of the backbone's KV-cache argument and output ('cache' in transformers 5.2x)."""
    import inspect

    params = inspect.signature(backbone.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


# Vocabulary-sized tensors are made for this many elements at a time where they are not kept
# for a gradient: 2^26 fp32 = 256 MiB (at V = 151,936: 441 tokens per chunk).
_LOGIT_ELEMENTS = 2 ** 26


def _token_stats(lm_head, h, tokens, temperature: float, need_entropy: bool,
                 need_logits: bool = False) -> dict:
    """logp (B, T) of `tokens` and entropy (B, T) at `temperature` from states h (B, T, H).

    With grad the (B, T, V) logits are kept for the backward; the entropy (no grad) is still
    computed in row chunks. Without grad logits exist one chunk at a time. Every row's result is
    computed by the same ops as in one pass: bit for bit when B*T*V fits one chunk (always on
    the tiny preset); across chunks a GEMM's rounding can depend on its row count (thread
    blocking, kernel choice), so chunked lm_head rows agree to rounding.
    """
    B, T, H = h.shape
    V = lm_head.weight.shape[0]
    rows = max(1, _LOGIT_ELEMENTS // V)  # (b*t) rows per chunk
    starts = range(0, max(B * T, 1), rows)  # one (empty) chunk for an empty batch
    flat_h, flat_y = h.reshape(B * T, H), tokens.reshape(B * T)
    if torch.is_grad_enabled():
        logits = unembed(lm_head, h).float() / temperature  # (B, T, V), kept for the backward
        logz = torch.logsumexp(logits, dim=-1)  # (B, T)
        out = {"logp": logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logz}  # (B, T)
        if need_logits:
            out["logits"] = logits.detach()  # (B, T, V), a view of what the backward keeps
        if need_entropy:
            with torch.no_grad():
                flat = logits.detach().reshape(B * T, V)
                out["entropy"] = torch.cat([_entropy(flat[s:s + rows], logz.reshape(-1)[s:s + rows])
                                            for s in starts]).view(B, T)
        return out
    logp, ent = [], []
    for s in starts:
        logits = lm_head(flat_h[s:s + rows]).float() / temperature  # (n, V)
        logz = torch.logsumexp(logits, dim=-1)  # (n,)
        logp.append(logits.gather(-1, flat_y[s:s + rows, None]).squeeze(-1) - logz)
        if need_entropy:
            ent.append(_entropy(logits, logz))
    out = {"logp": torch.cat(logp).view(B, T)}
    if need_entropy:
        out["entropy"] = torch.cat(ent).view(B, T)
    return out


def _entropy(logits: torch.Tensor, logz: torch.Tensor) -> torch.Tensor:
    """-sum_v pi_v log pi_v = logz - sum_v pi_v z_v per row of logits (n, V)."""
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)  # (n,)
