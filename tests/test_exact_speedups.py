"""The speed-ups are exact: thrlab's decode loop (sampler="exact") reproduces transformers' generate(),
the dequantise-once context bitsandbytes' 4-bit layers (tokens, logits and the random numbers
drawn, bit for bit), and the shared-prompt, chunked completion_forward a plain pass (values to
the rounding of GEMMs blocked by row count, bit for bit on some CPU kinds; gradients to float
rounding). Each test says what is exact by construction and what depends on the CPU's kernels."""
import contextlib
import warnings

import pytest
import torch

from thrlab.train import decode, rollout
from thrlab.train.presets import from_preset
from thrlab.train import model as thrmodel
from thrlab.train.model import completion_forward, dequantized_4bit, lm_parts, load_policy
from thrlab.core.unembed import _RowwiseLinear, unembed

CASES = {"sample": dict(do_sample=True, temperature=1.0, top_p=1.0),  # training rollouts
         "eval": dict(do_sample=True, temperature=0.6, top_p=0.95),  # pass@k sampling
         "greedy": dict(do_sample=False, temperature=1.0, top_p=1.0)}
PROMPTS = ["Q: 12*7+35=? A:", "Q: 1*2=? A:", "Q: 99*9+99=? A:"]  # unequal: left padding


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(from_preset("tiny"), str(tiny_model_dir), torch.device("cpu"))


@pytest.mark.parametrize("case", sorted(CASES))
def test_decode_loop_equals_generate(policy, case, monkeypatch):
    """Prefill once per prompt, preallocated cache and mask, finished rows dropped: the same
    tokens and random numbers as generate(), and rows were dropped on the way."""
    model, tok = policy
    dropped = []
    monkeypatch.setattr(decode, "COMPACT_FRACTION", 0.1)  # drop rows as soon as 2 of 12 end
    layer = decode._preallocated_layer_class()
    monkeypatch.setattr(decode, "_PREALLOCATED", type("Spy", (layer,), {
        "batch_select_indices": lambda self, i: (dropped.append(len(i)),
                                                 layer.batch_select_indices(self, i))}))
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    # frequent ids as EOS, so rows of the random model end at different steps (its greedy
    # rows repeat one character, then some switch to id 15)
    eos = [15] if case == "greedy" else [1, 5, 9]
    kw = dict(CASES[case], max_new_tokens=6, pad_id=tok.pad_token_id, eos_ids=eos)
    model.eval()
    out = {}
    for name in ("generate", "shared"):
        torch.manual_seed(7)
        with torch.no_grad():
            if name == "generate":
                toks = rollout._hf_generate(model, enc.input_ids, enc.attention_mask, 4, **kw)
            else:
                toks = decode.sample(model.get_base_model(), enc.input_ids, enc.attention_mask,
                                     4, **kw)
        out[name] = (toks, torch.get_rng_state())
    model.train()
    assert (out["generate"][0] == tok.pad_token_id).any()  # some rows did end early
    assert torch.equal(out["generate"][0], out["shared"][0])
    assert torch.equal(out["generate"][1], out["shared"][1])  # the same random numbers drawn
    assert dropped and min(dropped) < 12  # the batch of 12 rows did shrink


def test_generate_equals_the_plain_transformers_path(policy, monkeypatch):
    model, tok = policy
    got, want = [], []
    for engine, acc in (("auto", got), ("generate", want)):
        if engine == "generate":  # what generate() did before: transformers' generate, bnb's layers
            monkeypatch.setattr(rollout, "dequantized_4bit", contextlib.nullcontext)
        torch.manual_seed(3)
        for kw in CASES.values():
            r = rollout.generate(model, tok, PROMPTS, n=4, max_new_tokens=5, batch_size=2,
                                 engine=engine, **kw)
            acc.append((r.input_ids, r.attention_mask, r.texts, r.prompt_len))
    for a, b in zip(got, want):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[2:] == b[2:]
    assert model.training  # generate() restores the mode it found


def test_dequantized_4bit_layers_are_bit_identical(policy):
    model, tok = policy
    ids = tok(["Q: 12*7+35=? A: 119"], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with dequantized_4bit(model):
            got = model(input_ids=ids).logits
            again = model(input_ids=ids).logits  # the cached weights are reused
    assert torch.equal(want, got) and torch.equal(want, again)
    assert not any("forward" in vars(m) for m in model.modules())  # nothing left patched
    with dequantized_4bit(model):  # with grad: bnb's autograd path, gradients flow
        model(input_ids=ids).logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)


def _plain_forward(model, ids, att, lp, temperature):
    """completion_forward as one unshared pass with (B, T, V) logits: the reference."""
    backbone, lm_head = lm_parts(model)
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    h = backbone(input_ids=ids, attention_mask=att, position_ids=pos,
                 use_cache=False).last_hidden_state[:, lp - 1:-1]
    logits = lm_head(h).float() / temperature
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, ids[:, lp:, None]).squeeze(-1) - logz
    ent = logz - (torch.softmax(logits, -1) * logits).sum(-1)
    return {"logp": logp, "entropy": ent.detach(), "hidden": h}


def _agree_to_rounding(want: torch.Tensor, got: torch.Tensor, ulps: int = 64) -> bool:
    """|want - got| within `ulps` units in the last place of want's largest magnitude.

    For two computations that run the same ops with a GEMM's reduction split differently (its
    blocking, chosen by kernel and row count): each GEMM adds a few ulps, and the tiny model's
    2 layers hold about 16 of them in a row; 64 ulps of the largest magnitude covers that with
    room (seen: 0 on an Intel Xeon with AVX512, up to 5 with AVX2 kernels)."""
    eps = torch.finfo(want.dtype).eps
    return float((want - got).abs().max()) <= ulps * eps * max(float(want.abs().max()), 1.0)


def test_shared_prompt_chunked_completion_forward_is_exact(policy, monkeypatch):
    """The shared-prompt pass runs the prompt once per group and the completions against its KV
    cache: the same ops as a plain pass, each attention reduction over the same L keys, but its
    GEMMs see B*T rows where the plain pass's see B*L. Whether a GEMM's result for a row depends
    on the row count is a property of the CPU's kernels (it does not on an Intel Xeon with
    AVX512, bit for bit; it does with AVX2 kernels, a few ulps; on an AMD EPYC without AVX512 it
    did with grad enabled), so the two passes are compared to rounding, and the test prints
    which it saw. Exact by construction: chunking the vocabulary changes only the head, so the
    states of a chunked pass equal the unchunked pass's bit for bit."""
    model, tok = policy
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # LoRA B starts at 0; make the adapters matter
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    torch.manual_seed(0)
    r = rollout.generate(model, tok, PROMPTS, n=4, do_sample=True, temperature=1.0, top_p=1.0,
                         max_new_tokens=6)
    args = (r.input_ids, r.attention_mask, r.prompt_len, 0.7)
    monkeypatch.setattr(thrmodel, "_MIN_SHARED_ROWS", 0)  # share even this small batch
    shared = []
    check = thrmodel._plain_kv_cache
    monkeypatch.setattr(thrmodel, "_plain_kv_cache", lambda c: shared.append(1) or check(c))
    with torch.no_grad():  # one vocabulary chunk, as always on the tiny preset
        want, got = _plain_forward(model, *args), completion_forward(model, *args, need_hidden=True)
    assert all(_agree_to_rounding(want[k], got[k]) for k in want)
    print("shared vs plain pass, no grad:",
          "bit for bit" if all(torch.equal(want[k], got[k]) for k in want) else "to rounding")
    # Many 5-row chunks: a GEMM's rounding may depend on its row count (thread blocking,
    # kernel choice), so chunked lm_head rows agree to rounding; the states stay bit for bit.
    with monkeypatch.context() as m, torch.no_grad():
        m.setattr(thrmodel, "_LOGIT_ELEMENTS", 21 * 5)
        chunked = completion_forward(model, *args, need_hidden=True)
    assert all(_agree_to_rounding(got[k], chunked[k]) for k in want)
    assert torch.equal(got["hidden"], chunked["hidden"])
    params = [p for p in model.parameters() if p.requires_grad]
    grads, outs = [], []
    for fn in (_plain_forward, lambda *a: completion_forward(*a, need_hidden=True)):
        model.zero_grad(set_to_none=True)
        o = fn(model, *args)
        ((o["logp"] * r.mask).sum() + 1e-3 * o["hidden"].sum()).backward()
        grads.append([p.grad.clone() for p in params])
        outs.append({k: v.detach() for k, v in o.items()})
    assert all(_agree_to_rounding(outs[0][k], outs[1][k]) for k in want)  # with grad
    print("shared vs plain pass, with grad:",
          "bit for bit" if all(torch.equal(outs[0][k], outs[1][k]) for k in want)
          else "to rounding")
    model.zero_grad(set_to_none=True)
    assert len(shared) == 3  # every completion_forward call above took the shared path
    # gradients sum over a group's rows in the shared prompt's backward, in another order
    scale = max(float(a.abs().max()) for a in grads[0])
    assert max(float((a - b).abs().max()) for a, b in zip(*grads)) < 1e-5 * scale


def test_completion_forward_of_an_empty_batch_is_empty(policy):
    model, tok = policy
    torch.manual_seed(0)
    r = rollout.generate(model, tok, PROMPTS[:1], n=2, do_sample=True, temperature=1.0, top_p=1.0,
                         max_new_tokens=4)
    none = torch.zeros(0, dtype=torch.long)
    with torch.no_grad():
        out = completion_forward(model, r.input_ids[none], r.attention_mask[none], r.prompt_len,
                                 1.0, need_hidden=True)
    T = r.input_ids.shape[1] - r.prompt_len
    assert out["logp"].shape == out["entropy"].shape == (0, T)
    assert out["hidden"].shape == (0, T, model.config.hidden_size)


def _peak_bytes(fn) -> float:
    from thrlab.plan.profiling import phase_peaks

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        with torch.profiler.record_function("thrlab/x"):
            fn()
    return phase_peaks(prof)["x"]


def test_unembed_equals_lm_head_bit_for_bit(policy):
    model, tok = policy
    lm = model.get_base_model()
    head = lm.get_output_embeddings()
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():  # the prefill's last position, as generate() computes it
        want = lm(**enc, logits_to_keep=1).logits  # (b, 1, V)
        h = lm.get_decoder()(**enc).last_hidden_state
        assert torch.equal(unembed(head, h[:, -1:]), want)
    h = lm.get_decoder()(**enc).last_hidden_state[:, 2:]  # completion positions, with grad
    a, b = head(h), unembed(head, h)
    assert torch.equal(a, b)
    ga, gb = (torch.autograd.grad(x.logsumexp(-1).sum(), h, retain_graph=True)[0] for x in (a, b))
    assert torch.equal(ga, gb)
    # Exact by construction at any width and dtype: each row runs the 2-D kernel lm_head runs
    # (mm, or addmm with a bias) on the same shapes, forward and backward.
    for dtype in (torch.bfloat16, torch.float32):
        for bias in (False, True):
            lin = torch.nn.Linear(96, 1000, bias=bias, dtype=dtype).requires_grad_(False)
            states = torch.randn(3, 9, 96, dtype=dtype, requires_grad=True)
            rowwise = torch.stack([lin(x) for x in states[:, 2:]])
            ours = unembed(lin, states[:, 2:])
            assert torch.equal(ours, rowwise)
            g = [torch.autograd.grad(x.float().logsumexp(-1).sum(), states)[0]
                 for x in (ours, rowwise)]
            assert torch.equal(*g)


def test_unembed_gradients_match_finite_differences():
    """A trainable head too (weight and bias): float64 against central differences."""
    lin = torch.nn.Linear(6, 11, dtype=torch.float64)
    states = torch.randn(3, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda s, w, b: _RowwiseLinear.apply(s[:, 1:], w, b),
                                    (states, lin.weight, lin.bias))


def test_unembed_calls_a_hooked_head_as_a_module():
    """A hook (or a patched forward, e.g. accelerate's offloading) is part of what the head
    computes: unembed must not bypass it (the fault tests poison logits through one)."""
    lin = torch.nn.Linear(8, 16)
    h = torch.randn(2, 5, 8)[:, 1:]
    plain = unembed(lin, h)
    handle = lin.register_forward_hook(lambda mod, inp, out: out * 2)
    assert torch.equal(unembed(lin, h), 2 * plain)
    handle.remove()
    lin.forward = lambda x: torch.nn.functional.linear(x, lin.weight, lin.bias) + 1
    assert torch.equal(unembed(lin, h), plain + 1)


@contextlib.contextmanager
def _onednn(enabled: bool):
    """oneDNN as the CPU kind has it, or off: torch's own kernels, as on a CPU without AVX512."""
    if enabled:
        yield
        return
    with warnings.catch_warnings():  # flags() says TF32 over oneDNN needs an Intel GPU
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            yield


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "no-onednn"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_unembed_never_holds_more_than_f_linear(dtype, onednn):
    """F.linear on a slice of longer sequences runs bmm with the unembedding expanded per row.
    Whether the kernel materialises that copy is a property of the CPU kind: with a frozen bf16
    weight (a 4-bit base's) it does where oneDNN's bf16 kernels run (seen on an Intel Xeon with
    AVX512-BF16) and does not elsewhere (seen on an AMD EPYC without AVX512, and with oneDNN off
    on the Intel); in fp32 it never does. On every kind, and with oneDNN off (so both behaviours
    are checked on any machine), unembed holds the logits and nothing the size of the
    unembedding. The slack of one row's logits covers a GEMM's scratch (oneDNN bf16: 0.04-0.07x
    the logits, seen)."""
    n, T, H, V = 8, 4, 256, 8192
    size = torch.finfo(dtype).bits // 8
    logits, row = n * T * V * size, T * V * size
    wide = torch.nn.Linear(H, V, bias=False, dtype=dtype).requires_grad_(False)
    x = torch.randn(n, T + 1, H, dtype=dtype)[:, 1:]
    # the prefill's last position and evaluation: no gradient
    with _onednn(onednn), torch.inference_mode():
        copied = _peak_bytes(lambda: wide(x))
        ours = _peak_bytes(lambda: unembed(wide, x))
        # the same product per row; at this width the GEMM's blocking may differ from bmm's
        torch.testing.assert_close(unembed(wide, x), wide(x))
    copies = copied >= n * H * V * size
    print(f"{dtype}, oneDNN {'on' if onednn else 'off'}: F.linear holds "
          f"{copied / logits:.2f}x the logits "
          f"({'a copy of the unembedding per row' if copies else 'no copy'}), unembed "
          f"{ours / logits:.2f}x")
    assert ours <= logits + row and ours <= copied + row
    states = torch.randn(n, T + 1, H, dtype=dtype, requires_grad=True)  # the update: with grad

    def step(f):
        return lambda: f(states[:, 1:]).float().logsumexp(-1).sum().backward()

    with _onednn(onednn):
        copied = _peak_bytes(step(wide))
        ours = _peak_bytes(step(lambda h: unembed(wide, h)))
    print(f"{dtype} with grad: F.linear {copied / logits:.2f}x, unembed {ours / logits:.2f}x")
    assert ours <= copied + row
