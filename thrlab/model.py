"""Model loading: 4-bit NF4 base + LoRA (bitsandbytes, peft), the CPU gradient guard, the
reference policy (= adapters disabled, no second copy) and the one forward pass that yields
per-token log-probs, entropy and last-layer hidden states together.
"""
from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager

import torch

from .config import Config

# bitsandbytes logs a harmless failure to fetch optional hub kernels on CPU (ENVIRONMENT.md).
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
# peft calls a transformers attribute that transformers 5 deprecates; nothing for users to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but no CUDA GPU is visible; use --set device=cpu "
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
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    peft_model = get_peft_model(model, lcfg)
    guard_cpu_4bit(peft_model)
    return peft_model


def load_policy(cfg: Config, path: str, device: torch.device):
    """Return (peft model, tokenizer): the policy; the reference is the same model, adapters off."""
    return add_lora(load_base(cfg, path, device), cfg), load_tokenizer(path)


@contextmanager
def dequantized_4bit_cpu(model):
    """Context in which CPU 4-bit layers reuse one dequantised weight instead of making it per call.

    bitsandbytes' CPU path dequantises each NF4 weight on every forward (dequantize + F.linear).
    Generation runs the model once per new token, so inside this context every
    `bitsandbytes.nn.Linear4bit` on CPU computes `F.linear(x, W, bias)` with W made once on entry
    by the same ops and dtype as bnb's `gemm_4bit` (outputs bit-identical; tested). Only without
    grad (bnb's autograd path is left alone), only on guarded layers (`guard_cpu_4bit`; bnb would
    repack an unguarded one for another kernel), and only on CPU: bnb's CUDA kernels read the 4-bit
    weight directly, which beats a dequantised copy in memory traffic. Costs an fp32 copy of the
    4-bit weights while inside.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        yield model
        return
    mods = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)
            and m.weight.device.type == "cpu"
            and not getattr(m, "support_avx512bf16_for_cpu", False)  # unguarded: bnb repacks
            and not getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    for m in mods:
        m.forward = _dequantized_forward(m)  # instance attribute shadows the class method
    try:
        yield model
    finally:
        for m in mods:
            del m.forward


def _dequantized_forward(m):
    """Linear4bit.forward of bnb 0.50 without grad, its weight dequantised once per dtype."""
    import bitsandbytes as bnb
    import torch.nn.functional as F

    cache: dict = {}
    qs = m.weight.quant_state

    def weight(dtype):  # bnb's gemm_4bit default (CPU) implementation, step by step
        if dtype not in cache:
            absmax = qs.absmax
            if qs.nested:
                absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
                    qs.absmax, qs.state2.absmax, qs.state2.code, qs.state2.blocksize,
                    torch.float32) + qs.offset
            cache[dtype] = torch.ops.bitsandbytes.dequantize_4bit.default(
                m.weight.view(-1, 1), absmax, qs.blocksize, qs.quant_type, qs.shape, dtype)
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
                       *, need_hidden: bool = False, need_entropy: bool = True):
    """Run the model once over prompt+completion; return per-completion-token quantities.

    input_ids, attention_mask: (B, L) with prompts left-padded to prompt_len, completions after.
    Returns dict: logp (B, T) log pi(y_t) at `temperature`; entropy (B, T) (no grad);
    hidden (B, T, H) post-final-norm states that predict each completion token (if asked).
    """
    backbone, lm_head = lm_parts(model)
    pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: positions start at 0
    h = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos,
                 use_cache=False).last_hidden_state  # (B, L, H)
    h = h[:, prompt_len - 1:-1]  # (B, T, H): state at t predicts token t+1
    tokens = input_ids[:, prompt_len:]  # (B, T)
    logits = lm_head(h).float() / temperature  # (B, T, V)
    logz = torch.logsumexp(logits, dim=-1)  # (B, T)
    logp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logz  # (B, T)
    out = {"logp": logp}
    if need_entropy:
        with torch.no_grad():
            p = torch.softmax(logits, dim=-1)
            out["entropy"] = logz - (p * logits).sum(-1)  # (B, T)
    if need_hidden:
        out["hidden"] = h
    return out
