"""4-bit NF4 + LoRA on CPU: the bitsandbytes gradient guard, reference = adapters off, and the
one forward pass that yields log-probs, entropy and hidden states."""
import pytest
import torch

from thrlab.train.presets import from_preset
from thrlab.train.model import completion_forward, load_base, load_policy, reference_policy
from thrlab.train.rollout import generate

CPU = torch.device("cpu")


def _randomise_lora(model, seed=1):
    # LoRA B starts at zero, which hides any error in the gradient through A; make both non-zero.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _batch(tok):
    prompts = ["Q: 12*7+35=? A:", "Q: 99*9+10=? A:"]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    comp = tok([" 119", " 901"], return_tensors="pt", add_special_tokens=False).input_ids
    ids = torch.cat([enc.input_ids, comp], 1)
    att = torch.cat([enc.attention_mask, torch.ones_like(comp)], 1)
    return ids, att, enc.input_ids.shape[1]


def _lora_grads(model, tok):
    model.train()
    model.zero_grad()
    ids, att, lp = _batch(tok)
    completion_forward(model, ids, att, lp, 1.0)["logp"].sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _fp32_twin(cfg, path, qmodel):
    """fp32 model holding exactly the dequantised 4-bit weights, with the same LoRA weights."""
    import bitsandbytes as bnb
    from thrlab.train.model import add_lora

    twin = load_base(cfg.replace(load_in_4bit=False), path, CPU)
    qmods = dict(qmodel.get_base_model().named_modules())
    with torch.no_grad():
        for name, m in twin.named_modules():
            q = qmods.get(name + ".base_layer", qmods.get(name))  # peft wraps the bnb layer
            if isinstance(q, bnb.nn.Linear4bit):
                m.weight.copy_(bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state))
    twin = add_lora(twin, cfg)
    src = dict(qmodel.named_parameters())
    with torch.no_grad():
        for n, p in twin.named_parameters():
            if p.requires_grad:
                p.copy_(src[n])
    return twin


def _grad_errors_after_generate(path, force_repack: bool) -> dict:
    """Relative LoRA-gradient errors vs the fp32 twin after an eval-mode generate()."""
    import bitsandbytes as bnb

    cfg = from_preset("tiny")
    model, tok = load_policy(cfg, path, CPU)
    if force_repack:  # what an unguarded AVX512-BF16 CPU does; forced so any CPU can show it
        for m in model.modules():
            if isinstance(m, bnb.nn.Linear4bit):
                m.support_avx512bf16_for_cpu = True
    _randomise_lora(model)
    generate(model, tok, ["Q: 1*2+3=? A:"], n=2, do_sample=True, temperature=1.0, top_p=1.0,
             max_new_tokens=4)  # the eval-mode no-grad pass that repacks the 4-bit weights
    got = _lora_grads(model, tok)
    want = _lora_grads(_fp32_twin(cfg, path, model), tok)
    assert got.keys() == want.keys() and len(got) == 4 * 7 * 2
    return {n: float((got[n] - want[n]).norm() / want[n].norm()) for n in got}


def test_cpu_4bit_gradients_exact_after_eval_generate(tiny_model_dir):
    """Regression for the bnb AVX512-BF16 repack bug: eval + generate, then train."""
    import bitsandbytes as bnb

    model, _ = load_policy(from_preset("tiny"), str(tiny_model_dir), CPU)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 == 4 * 7  # q, k, v, o, gate, up, down per layer are quantised
    assert all(m.support_avx512bf16_for_cpu is False for m in model.modules()
               if isinstance(m, bnb.nn.Linear4bit))
    errors = _grad_errors_after_generate(str(tiny_model_dir), force_repack=False)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-4, f"{worst}: LoRA gradient off by {errors[worst]:.2e}"


def test_unguarded_repack_corrupts_gradients(tiny_model_dir):
    """The comparison above detects the bug in either form it takes on this CPU kind.

    Forcing bitsandbytes' AVX512-BF16 repack (what an unguarded CPU with that instruction set
    does) breaks LoRA training in one of two documented ways (ENVIRONMENT.md): the backward
    silently returns wrong gradients (seen on CPUs without AVX512-BF16, where the repacked
    layout falls back to a kernel with no autograd), or it raises `a view of a leaf Variable
    that requires grad is being used in an in-place operation` at the bias add after gemv_4bit
    (seen on an AMD EPYC with AVX512-BF16, bnb 0.50.2). Either is the bug the guard prevents;
    the test fails only if the unguarded path trained correctly, i.e. if the comparison could
    not tell a broken gradient from a good one.
    """
    try:
        errors = _grad_errors_after_generate(str(tiny_model_dir), force_repack=True)
    except RuntimeError as err:  # the form seen on AVX512-BF16 CPUs
        assert "in-place operation" in str(err) or "gemv_4bit" in str(err), err
        print(f"unguarded repack raised (form 2): {str(err)[:120]}")
        return
    print(f"unguarded repack gave wrong gradients (form 1): max rel error {max(errors.values()):.2e}")
    assert max(errors.values()) > 1e-3


@pytest.fixture()
def policy(tiny_model_dir):
    return load_policy(from_preset("tiny"), str(tiny_model_dir), CPU)


def test_completion_forward_matches_full_logits(policy):
    model, tok = policy
    ids, att, lp = _batch(tok)
    with torch.no_grad():
        o = completion_forward(model, ids, att, lp, 0.7, need_hidden=True)
        pos = (att.cumsum(-1) - 1).clamp(min=0)
        full = model(input_ids=ids, attention_mask=att, position_ids=pos,
                     output_hidden_states=True)
        logits = full.logits[:, lp - 1:-1].float() / 0.7  # (B, T, V)
        want = torch.log_softmax(logits, -1).gather(-1, ids[:, lp:, None]).squeeze(-1)
        p = torch.softmax(logits, -1)
        ent = -(p * torch.log_softmax(logits, -1)).sum(-1)
    assert torch.allclose(o["logp"], want, atol=1e-5)
    assert torch.allclose(o["entropy"], ent, atol=1e-5)
    # hidden states are the post-norm states that lm_head maps to the logits (ENVIRONMENT.md)
    assert torch.allclose(o["hidden"], full.hidden_states[-1][:, lp - 1:-1], atol=1e-5)


def test_reference_is_base_model_with_adapters_disabled(policy):
    model, tok = policy
    ids, att, lp = _batch(tok)
    with torch.no_grad():
        before = completion_forward(model, ids, att, lp, 1.0)["logp"]
        _randomise_lora(model)
        moved = completion_forward(model, ids, att, lp, 1.0)["logp"]
        with reference_policy(model):
            ref = completion_forward(model, ids, att, lp, 1.0)["logp"]
    assert not torch.allclose(moved, before)
    assert torch.equal(ref, before)  # no second copy of the weights, yet the exact base policy


def test_left_padding_does_not_change_logp(policy):
    """A prompt's completion log-probs are the same whether or not it was left-padded."""
    model, tok = policy
    ids, att, lp = _batch(tok)
    with torch.no_grad():
        both = completion_forward(model, ids, att, lp, 1.0)["logp"]
        short = tok(["Q: 12*7+35=? A: 119"], return_tensors="pt", add_special_tokens=False)
        alone = completion_forward(model, short.input_ids, short.attention_mask,
                                   short.input_ids.shape[1] - 4, 1.0)["logp"]
    assert torch.allclose(both[0], alone[0], atol=1e-4)


@pytest.mark.gpu
def test_cuda_4bit_loads(tiny_model_dir):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    cfg = from_preset("tiny", device="cuda")
    model, tok = load_policy(cfg, str(tiny_model_dir), torch.device("cuda"))
    out = generate(model, tok, ["Q: 1*2+3=? A:"], n=2, do_sample=True, temperature=1.0,
                   top_p=1.0, max_new_tokens=4)
    assert out.tokens.shape[0] == 2


def test_thr_refuses_lora_on_the_unembedding(tiny_model_dir):
    """THR streams probabilities from lm_head's base weight: a LoRA delta there would be ignored."""
    with pytest.raises(ValueError, match="lm_head"):
        from_preset("tiny", thr_mode="thr", lora_targets="all-linear|lm_head")
    # a pattern that matches the head without naming it is caught once the adapters exist
    cfg = from_preset("tiny", thr_mode="thr", lora_targets=r".*(q_proj|_head)")
    with pytest.raises(ValueError, match="wrapped the unembedding"):
        load_policy(cfg, str(tiny_model_dir), CPU)
    load_policy(cfg.replace(thr_mode="off"), str(tiny_model_dir), CPU)  # plain GRPO may train it
