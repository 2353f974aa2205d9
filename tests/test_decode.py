"""The decode loop's fast sampler draws from the distribution the loss assumes (a chi-square test
against the probabilities, a nucleus held to transformers' TopPLogitsWarper, and the loop's
tokens against generate()'s by a two-sample test), and grouped-query attention decodes without
repeating K/V. The exact sampler's bit-identity with generate() is in test_exact_speedups."""
import pytest
import torch
from scipy.stats import chi2, chi2_contingency

from thrlab.core.sampling import inverse_cdf_draw, multinomial_draw, top_p_keep
from thrlab.train import decode, rollout
from thrlab.train.model import load_policy
from thrlab.train.presets import from_preset


def _chi2_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    n = counts.sum().item()
    e = probs.double() * n
    keep = e > 0
    x = ((counts.double() - e) ** 2 / e)[keep].sum().item()
    return chi2.sf(x, int(keep.sum()) - 1)


@pytest.mark.parametrize("block", [7, 1024])
def test_inverse_cdf_draws_the_probabilities(block):
    """200k draws of a 50-token distribution with zeros, a 1e-4 and block edges inside it."""
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, generator=g) ** 4
    p[[3, 17, 49]] = 0.0
    p[0] = 1e-4
    p /= p.sum()
    torch.manual_seed(1)
    d = inverse_cdf_draw(p.expand(200_000, 50).contiguous(), block=block)
    counts = torch.bincount(d, minlength=50)
    assert counts[[3, 17, 49]].sum() == 0  # probability 0 is never drawn
    assert _chi2_p(counts, p) > 1e-4


def test_inverse_cdf_never_draws_a_zero_at_the_edges():
    """All mass in the first or the last entry, and a nucleus mass below 1 (unnormalised)."""
    p = torch.zeros(6, 10)
    p[:2, 0], p[2:4, 9], p[4:, 4] = 1.0, 1.0, 0.3
    torch.manual_seed(0)
    for _ in range(200):
        assert inverse_cdf_draw(p, block=3).tolist() == [0, 0, 9, 9, 4, 4]


def test_multinomial_draw_is_torch_multinomial():
    """Rows dropped from the batch still get their random numbers: the kept rows' draws are
    torch.multinomial's on the whole batch, bit for bit, with the same RNG state after."""
    probs = torch.softmax(torch.randn(9, 300) * 3, -1)
    rows = torch.tensor([0, 2, 3, 7])
    torch.manual_seed(5)
    want = torch.multinomial(probs, 1)[rows, 0]
    state = torch.get_rng_state()
    torch.manual_seed(5)
    assert torch.equal(multinomial_draw(probs[rows], rows, 9), want)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.95])
def test_top_p_keeps_the_warpers_nucleus(top_p):
    """The kept set equals TopPLogitsWarper's on 400 rows of peaked and flat logits; k grows
    from 4, so rows whose nucleus is wider than the first top-k are covered."""
    from transformers.generation import TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(400, 3000) * torch.linspace(0.3, 8.0, 400)[:, None]
    probs = torch.softmax(logits, -1)
    vals, ids = top_p_keep(probs, top_p, start_k=4)
    got = torch.zeros_like(probs, dtype=torch.bool).scatter(1, ids, vals > 0)
    want = TopPLogitsWarper(top_p)(None, logits) > -float("inf")
    assert torch.equal(got, want)
    assert torch.allclose(vals.sum(-1), probs.masked_fill(~want, 0).sum(-1))


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(from_preset("tiny"), str(tiny_model_dir), torch.device("cpu"))


@pytest.fixture
def peaked(policy):
    """The tiny random model with its final norm scaled 2x: logits of std ~0.6 instead of ~0.3,
    so that temperature and top-p change the distribution by more than sampling noise."""
    model, tok = policy
    norm = model.get_base_model().model.norm.weight
    saved = norm.detach().clone()
    with torch.no_grad():
        norm.mul_(2.0)
    yield model, tok
    with torch.no_grad():
        norm.copy_(saved)


def test_fast_sampler_tokens_follow_generate_distribution(peaked):
    """2,000 samples of one prompt from generate() and from the loop's fast sampler: the first
    and third tokens and the lengths are one distribution (chi-square homogeneity), and greedy
    decoding is unchanged."""
    model, tok = peaked
    prompt = ["Q: 12*7+35=? A:"]
    kw = dict(n=2000, do_sample=True, temperature=0.6, top_p=0.9, max_new_tokens=4)
    torch.manual_seed(0)
    ref = rollout.generate(model, tok, prompt, engine="generate", **kw)
    got = rollout.generate(model, tok, prompt, sampler="fast", **kw)
    for a, b in ((ref.tokens[:, 0], got.tokens[:, 0]), (ref.tokens[:, 2], got.tokens[:, 2]),
                 (ref.lengths, got.lengths)):
        table = torch.stack([torch.bincount(a, minlength=len(tok)),
                             torch.bincount(b, minlength=len(tok))])
        table = table[:, table.sum(0) > 0]
        assert chi2_contingency(table.numpy())[1] > 1e-4
    assert not torch.equal(ref.tokens, got.tokens)  # other random numbers: a real second draw
    greedy = dict(kw, n=1, do_sample=False)
    assert torch.equal(rollout.generate(model, tok, prompt * 3, engine="generate", **greedy).tokens,
                       rollout.generate(model, tok, prompt * 3, sampler="fast", **greedy).tokens)


def test_sampler_choice_is_checked(policy):
    model, tok = policy
    with pytest.raises(ValueError, match="sampler"):
        rollout.generate(model, tok, ["Q: 1*2=? A:"], n=1, do_sample=True, temperature=1.0,
                         top_p=1.0, max_new_tokens=2, engine="generate", sampler="fast")


def test_grouped_query_decoding_does_not_repeat_kv(monkeypatch):
    """A Llama with 6 query and 2 KV heads, left-padded prompts (so a mask): K/V are repeated in
    the prefill only; each decode step runs attention on the 2 KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.integrations import sdpa_attention

    cfg = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, head_dim=8,
                      attn_implementation="sdpa")
    torch.manual_seed(0)
    lm = LlamaForCausalLM(cfg).eval()
    calls = []
    real = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv",
                        lambda h, n: (calls.append(h.shape[2]), real(h, n))[1])
    ids = torch.randint(2, 64, (2, 5))
    att = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    out = decode.sample(lm, ids, att, 3, do_sample=True, temperature=1.0, top_p=1.0,
                        max_new_tokens=6, pad_id=0, eos_ids=[1])
    assert out.shape[0] == 6
    assert calls and all(q == 5 for q in calls)  # prompt-length K/V only: the prefill
