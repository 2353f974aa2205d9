"""THR (thrlab.core.thr) against a naive pairwise loop written here, the first-order identity of
docs/method.md section 6 (one SGD step on the unembedding of a real tiny model) checked by finite
differences, and the token advantages THR drives (thrlab.core.reweight) against loops."""
import re

import pytest
import torch
import torch.nn.functional as F

from thrlab.core.reweight import nthr_advantages, reweight_advantages, thr_stats, thr_threshold
from thrlab.core.thr import route_flops, thr_for_batch, token_hidden_reward

G, T, H, V = 4, 5, 8, 11  # small enough for the O((G T)^2 V) python loop below


def naive_thr(hidden, tokens, mask, rewards, logits, length_normalize=True,
              advantage_weighted=False, vocab="full", adv=None):
    """The pairwise definition (docs/method.md section 2) in float64 with explicit loops."""
    hidden, logits, r = hidden.double(), logits.double(), rewards.double()
    g = F.one_hot(tokens, logits.shape[-1]).double() - torch.softmax(logits, -1)  # (G, T, V)
    if vocab == "group":
        g = g[..., sorted(set(tokens[mask].tolist()))]
    out = torch.zeros(tokens.shape, dtype=torch.float64)
    if (r == r[0]).all():
        return out
    std = ((r - r.mean()) ** 2).mean().sqrt()  # population std
    c = (r - r.mean()) / (std + 1e-6) if advantage_weighted else 2 * r - 1
    if advantage_weighted and adv is not None:
        c = adv.double()
    for j in range(len(r)):
        for kp in range(tokens.shape[1]):
            if not mask[j, kp]:
                continue
            s = 0.0
            for i in range(len(r)):
                if r[i] != 1:
                    continue
                w = 1.0 / int(mask[i].sum()) if length_normalize else 1.0
                for k in range(tokens.shape[1]):
                    if mask[i, k]:
                        s += w * (g[i, k] @ g[j, kp]) * (hidden[i, k] @ hidden[j, kp])
            out[j, kp] = c[j] * s
    return out


def make_group(seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(G, T, H, generator=gen)
    W = torch.randn(V, H, generator=gen) / H ** 0.5
    tokens = torch.randint(0, V, (G, T), generator=gen)
    tokens[:, 1] = 3  # a shared token id gives the [y == y'] term something to do
    mask = torch.ones(G, T, dtype=torch.bool)
    mask[1, 3:] = False  # padded tails of different lengths
    mask[2, 4:] = False
    return hidden, W, tokens, mask


def close(got, want, rel=1e-5):
    assert got.dtype == torch.float32
    scale = want.abs().max().item()
    assert torch.allclose(got.double(), want, rtol=rel, atol=rel * scale), (got, want)


REWARDS = {"one": [1., 0., 0., 0.], "two": [0., 1., 1., 0.], "padded_anchor": [0., 0., 1., 0.]}


@pytest.mark.parametrize("route", ["factorised", "gram", "auto"])
@pytest.mark.parametrize("pattern", list(REWARDS))
@pytest.mark.parametrize("opts", [{}, {"length_normalize": False}, {"advantage_weighted": True},
                                  {"vocab": "group"}])
def test_matches_naive_pairwise_definition(route, pattern, opts):
    hidden, W, tokens, mask = make_group()
    r = torch.tensor(REWARDS[pattern])
    logits = hidden @ W.T / 0.7  # (G, T, V)
    want = naive_thr(hidden, tokens, mask, r, logits, **opts)
    got = token_hidden_reward(hidden, tokens, mask, r, logits=logits, route=route, **opts)
    close(got, want)
    assert (got[~mask] == 0).all()
    # The streamed path recomputes the same probabilities from W, chunk by chunk.
    got_w = token_hidden_reward(hidden, tokens, mask, r, lm_head_weight=W, temperature=0.7,
                                route=route, chunk_size=3, **opts)
    close(got_w, want)


def test_advantage_weighted_thr_uses_the_advantages_the_run_trains_with():
    """advantage_weighted weights response j by the run's own A_j (Pass@K, Dr. GRPO, ...), not
    by GRPO's std-normalised advantage recomputed from the rewards."""
    from thrlab.train.presets import from_preset
    from thrlab.core.loss import group_advantages, passk_advantages
    from thrlab.core.reweight import thr_token_advantages

    hidden, W, tokens, mask = make_group()
    r = torch.tensor([0., 1., 1., 0.])
    logits = hidden @ W.T
    for est, adv in (("passk", passk_advantages(r, G, 2)),
                     ("dr_grpo", group_advantages(r, G, std_norm=False))):
        want = naive_thr(hidden, tokens, mask, r, logits, advantage_weighted=True, adv=adv)
        close(token_hidden_reward(hidden, tokens, mask, r, logits=logits,
                                  advantage_weighted=True, adv=adv), want)
        cfg = from_preset("tiny", thr_mode="thr", thr_advantage_weighted=True, group_size=G,
                          adv_estimator="passk" if est == "passk" else "grpo", passk_k=2,
                          adv_std_norm=est != "dr_grpo")
        _, thr, _ = thr_token_advantages(cfg, hidden, tokens, mask, r, adv, W, group_size=G)
        close(thr, want)
    with pytest.raises(ValueError, match=r"adv must be \(G,\)"):
        token_hidden_reward(hidden, tokens, mask, r, logits=logits, advantage_weighted=True,
                            adv=torch.zeros(G, 1))


@pytest.mark.parametrize("route", ["factorised", "gram"])
def test_chunk_size_one_equals_one_chunk(route):
    hidden, W, tokens, mask = make_group(1)
    r = torch.tensor(REWARDS["two"])
    kw = dict(lm_head_weight=W, route=route, vocab="group")
    a = token_hidden_reward(hidden, tokens, mask, r, chunk_size=1, **kw)
    b = token_hidden_reward(hidden, tokens, mask, r, chunk_size=10_000, **kw)
    assert torch.allclose(a, b, rtol=1e-5, atol=1e-6 * b.abs().max().item())


@pytest.mark.parametrize("rewards", [[1., 1., 1., 1.], [0., 0., 0., 0.]])
def test_all_equal_rewards_give_zeros(rewards):
    hidden, W, tokens, mask = make_group()
    got = token_hidden_reward(hidden, tokens, mask, torch.tensor(rewards), lm_head_weight=W)
    assert got.shape == (G, T) and got.dtype == torch.float32 and (got == 0).all()


def test_bf16_inputs_accumulate_in_fp32():
    hidden, W, tokens, mask = make_group(2)
    r = torch.tensor(REWARDS["one"])
    hb, Wb = hidden.bfloat16(), W.bfloat16()
    got = token_hidden_reward(hb, tokens, mask, r, lm_head_weight=Wb)
    assert got.dtype == torch.float32
    # Same bf16 values, given as fp32: only accumulation order may differ.
    ref = token_hidden_reward(hb.float(), tokens, mask, r, lm_head_weight=Wb.float())
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    # And close to the unrounded inputs up to bf16's ~3 significant digits.
    full = token_hidden_reward(hidden, tokens, mask, r, lm_head_weight=W)
    assert torch.allclose(got, full, atol=3e-2 * full.abs().max().item())


def test_batch_helper_applies_per_group():
    hidden, W, tokens, mask = make_group()
    rs = [torch.tensor(REWARDS["one"]), torch.ones(G), torch.tensor(REWARDS["two"])]
    cat = lambda x: torch.cat([x] * 3)  # noqa: E731
    got = thr_for_batch(cat(hidden), cat(tokens), cat(mask), torch.cat(rs), G, lm_head_weight=W)
    for n, r in enumerate(rs):
        want = token_hidden_reward(hidden, tokens, mask, r, lm_head_weight=W)
        assert torch.equal(got[n * G:(n + 1) * G], want)
    logits = cat(hidden @ W.T)
    by_logits = thr_for_batch(cat(hidden), cat(tokens), cat(mask), torch.cat(rs), G, logits=logits)
    assert torch.allclose(by_logits, got, rtol=1e-5, atol=1e-6)


def test_auto_route_follows_estimated_flops():
    # Qwen2.5-0.5B shapes (V = 151936, H = 896), 512 tokens: few anchors favour gram, many do not.
    few = route_flops(512, 100, 151936, 896, streamed=False, chunk_size=1024)
    many = route_flops(4096, 2048, 151936, 896, streamed=False, chunk_size=1024)
    assert few["gram"] < few["factorised"] and many["factorised"] < many["gram"]


def test_errors_name_the_problem():
    hidden, W, tokens, mask = make_group()
    r = torch.tensor(REWARDS["one"])
    with pytest.raises(ValueError, match="exactly one of logits.*lm_head_weight.*both"):
        token_hidden_reward(hidden, tokens, mask, r, logits=hidden @ W.T, lm_head_weight=W)
    with pytest.raises(ValueError, match="exactly one of logits.*lm_head_weight.*neither"):
        token_hidden_reward(hidden, tokens, mask, r)
    with pytest.raises(ValueError, match="binary"):
        token_hidden_reward(hidden, tokens, mask, torch.tensor([0.5, 0., 1., 0.]), lm_head_weight=W)
    with pytest.raises(ValueError, match=r"lm_head_weight must be \(V, H\)"):
        token_hidden_reward(hidden, tokens, mask, r, lm_head_weight=W.T)
    with pytest.raises(ValueError, match="rewards must be"):
        token_hidden_reward(hidden, tokens, mask, torch.tensor([1., 0.]), lm_head_weight=W)
    adv = torch.zeros(G)
    for p in (-1.5, 1.01):
        with pytest.raises(ValueError, match=r"in \[-1, 1\]"):
            reweight_advantages(adv, torch.zeros(G, T), mask, tau=0.0, p=p)


def test_threshold_matches_loop():
    hidden, W, tokens, mask = make_group()
    r = torch.tensor(REWARDS["two"])
    thr = token_hidden_reward(hidden, tokens, mask, r, lm_head_weight=W)
    means = [sum(thr[i, k].item() for k in range(T) if mask[i, k]) / int(mask[i].sum())
             for i in range(G) if r[i] == 1]
    assert thr_threshold(thr, mask, r, beta=0.5) == pytest.approx(0.5 * max(0.0, min(means)))
    assert thr_threshold(-thr.abs(), mask, r) == 0.0  # clamped at 0
    assert thr_threshold(thr, mask, torch.ones(G)) == 0.0


def test_reweight_matches_loop_both_signs():
    torch.manual_seed(3)
    _, _, _, mask = make_group()
    adv, thr, tau = torch.randn(G), torch.randn(G, T), 0.4
    for p in (0.1, -0.1):
        got = reweight_advantages(adv, thr, mask, tau=tau, p=p)
        for j in range(G):
            for k in range(T):
                s = 1 + p if thr[j, k] > 0 else 1 - p
                want = adv[j] * s if mask[j, k] and abs(thr[j, k]) > tau else 0.0
                assert got[j, k].item() == pytest.approx(float(want))
    plain = reweight_advantages(adv, thr, mask, tau=tau, p=0.0, dominant_only=False)
    assert torch.equal(plain, adv[:, None] * mask)  # p = 0, no mask: exactly GRPO


def test_nthr_matches_loop():
    torch.manual_seed(4)
    _, _, _, mask = make_group()
    r = torch.tensor(REWARDS["one"])
    adv, thr, tau = torch.randn(G), torch.randn(G, T), 0.2
    eta = 2 * abs(0.5 - 0.25)
    got = nthr_advantages(adv, thr, mask, r, tau=tau)
    for j in range(G):
        for k in range(T):
            s = eta if r[j] == 0 and -thr[j, k] > tau else 1.0
            assert got[j, k].item() == pytest.approx(float(adv[j] * s * mask[j, k]))


def test_stats_are_floats_with_expected_values():
    thr = torch.tensor([[1., -2., 0.5], [0., 3., -0.1]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    adv = torch.tensor([1., -2.])
    adv_tok = reweight_advantages(adv, thr, mask, tau=0.5, p=0.1)
    s = thr_stats(thr, mask, 0.5, adv, adv_tok)
    assert all(isinstance(v, float) for v in s.values())
    assert s["thr/mean"] == pytest.approx(1.9 / 5) and s["thr/frac_pos"] == pytest.approx(0.4)
    assert s["thr/frac_neg"] == pytest.approx(0.4) and s["thr/frac_kept"] == pytest.approx(0.6)
    assert s["thr/adv_mass_before"] == pytest.approx(2 * 1 + 3 * 2)
    assert s["thr/adv_mass_after"] == pytest.approx(1.1 + 0.9 + 2 * 1.1)


# -- docs/method.md section 6: THR is exact to first order for a step on the unembedding -------------

@pytest.fixture(scope="module")
def tiny_group(tiny_model_dir):
    """Hidden states (held fixed) and lm_head weight of the real tiny model on one group."""
    from transformers import AutoModelForCausalLM

    from thrlab.train.model import completion_forward, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()
    prompts = tok(["Q:12*3=?A:", "Q:7*45=?A:", "Q:99*9=?A:", "Q:3*3=?A:"], padding=True,
                  return_tensors="pt")
    gen = torch.Generator().manual_seed(0)
    Tc = 6
    tokens = torch.randint(2, len(tok), (4, Tc), generator=gen)  # chars only, no specials
    mask = torch.ones(4, Tc, dtype=torch.bool)
    mask[1, 4:] = False  # padded completions
    mask[2, 2:] = False
    tokens[~mask] = tok.pad_token_id
    ids = torch.cat([prompts.input_ids, tokens], 1)
    attn = torch.cat([prompts.attention_mask, mask.long()], 1)
    with torch.no_grad():
        out = completion_forward(model, ids, attn, prompts.input_ids.shape[1], 1.0,
                                 need_hidden=True)
    W = model.get_output_embeddings().weight.detach().double().clone()  # tied: a free copy
    return out["hidden"].double(), W, tokens, mask, torch.tensor([1., 0., 1., 0.])


def _logp(h, W, tokens):
    return torch.log_softmax(h @ W.T, -1).gather(-1, tokens[..., None]).squeeze(-1)  # (G, T)


def _delta_c(h, W, tokens, mask, r, loss_fn, eta):
    """Change of C = sum_{i in P} mean_k log pi(y_ik) after one SGD step of size eta on W."""
    def C(W_):
        lp = _logp(h, W_, tokens) * mask
        return ((lp.sum(1) / mask.sum(1)) * r).sum()
    Wv = W.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_fn(_logp(h, Wv, tokens)), Wv)
    return (C(W - eta * grad) - C(W)).item()


def test_first_order_identity_on_tiny_model(tiny_group):
    h, W, tokens, mask, r = tiny_group
    thr = token_hidden_reward(h, tokens, mask, r, lm_head_weight=W).double()  # (G, T)
    A = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)  # (G,) GRPO advantages
    N = int(mask.sum())
    pred_unit = (A.abs()[:, None] * thr * mask).sum().item() / N  # d C / d eta at eta = 0
    loss = lambda lp: -(A[:, None] * lp * mask).sum() / N  # noqa: E731  token-mean GRPO loss
    errs = []
    for eta in (1e-2, 1e-3, 1e-4):
        dc = _delta_c(h, W, tokens, mask, r, loss, eta)
        errs.append(abs(dc - eta * pred_unit) / abs(eta * pred_unit))
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-3, errs  # error is O(eta)


def test_single_token_steps_on_tiny_model(tiny_group):
    h, W, tokens, mask, r = tiny_group
    thr = token_hidden_reward(h, tokens, mask, r, lm_head_weight=W).double()  # (G, T)
    A = (r - r.mean()) / (r.std(unbiased=False) + 1e-6)
    N, eta = int(mask.sum()), 1e-5
    masked = thr.masked_fill(~mask, float("nan"))
    picks = [divmod(int(i), thr.shape[1]) for i in (masked.nan_to_num(-1e9).argmax(),
                                                   masked.nan_to_num(1e9).argmin())]
    picks += [(0, 2), (3, 4)]  # plus a correct and an incorrect response's token
    assert thr[picks[0]] > 0 > thr[picks[1]]  # both signs exist
    for j, k in picks:
        loss = lambda lp: -A[j] * lp[j, k] / N  # noqa: E731  one token's loss term alone
        dc = _delta_c(h, W, tokens, mask, r, loss, eta)
        pred = eta / N * abs(A[j].item()) * thr[j, k].item()
        assert dc == pytest.approx(pred, rel=1e-3), (j, k, dc, pred)


def test_quantile_threshold_against_sorting():
    from thrlab.core.reweight import thr_quantile_threshold

    torch.manual_seed(3)
    thr = torch.randn(4, 6)
    mask = torch.rand(4, 6) > 0.3
    vals = sorted(abs(float(x)) for x, m in zip(thr.flatten(), mask.flatten()) if m)
    assert thr_quantile_threshold(thr, mask, 0.0) == pytest.approx(vals[0])
    assert thr_quantile_threshold(thr, mask, 1.0) == pytest.approx(vals[-1])
    tau = thr_quantile_threshold(thr, mask, 0.75)
    kept = sum(v > tau for v in vals)
    assert kept == pytest.approx(0.25 * len(vals), abs=1)
    with pytest.raises(ValueError, match="quantile"):
        thr_quantile_threshold(thr, mask, 1.5)


def test_docstring_example_runs():
    import doctest

    import thrlab.core.thr

    res = doctest.testmod(thrlab.core.thr)
    assert res.attempted >= 8 and res.failed == 0
    doc = token_hidden_reward.__doc__
    assert "hidden_states[-1][:, prompt_len - 1:-1]" in doc and "thr_for_batch" in doc


def test_shapes_and_values_are_checked_with_messages_that_name_them():
    from thrlab.core.guards import NonFiniteError

    hidden, W, tokens, mask = make_group()
    r = torch.tensor(REWARDS["two"])
    wide = torch.randn(G, T, H + 1)
    with pytest.raises(ValueError, match=rf"hidden \(G, T, H\) = \({G}, {T}, {H + 1}\) and "
                                         rf"lm_head_weight \(V, H\) = \({V}, {H}\) disagree on H"):
        token_hidden_reward(wide, tokens, mask, r, lm_head_weight=W)
    thr = token_hidden_reward(hidden, tokens, mask, r, lm_head_weight=W)
    for adv in (torch.zeros(G, 1), torch.zeros(G, T), torch.zeros(G + 1)):
        with pytest.raises(ValueError, match=rf"adv must be \(B,\) = \({G},\).*got "
                                             rf"{re.escape(str(tuple(adv.shape)))}"):
            reweight_advantages(adv, thr, mask)
        with pytest.raises(ValueError, match=rf"adv must be \(B,\) = \({G},\)"):
            nthr_advantages(adv, thr, mask, r)
    for x in (float("nan"), float("inf")):
        bad = hidden.clone()
        bad[2, 1, 0] = x
        with pytest.raises(ValueError, match="hidden holds NaN/inf at 1 real tokens "
                                             r"\(responses \[2\]\)") as err:
            token_hidden_reward(bad, tokens, mask, r, lm_head_weight=W)
        assert isinstance(err.value, NonFiniteError)  # so the trainer skips such a step
        logits = hidden @ W.T
        logits[0, 0, 3] = x
        with pytest.raises(ValueError, match="logits .* hold NaN/inf on real tokens"):
            token_hidden_reward(hidden, tokens, mask, r, logits=logits)
    padded = hidden.clone()
    padded[1, 4] = float("nan")  # padding (mask[1, 3:] is False) is never read
    assert torch.equal(token_hidden_reward(padded, tokens, mask, r, lm_head_weight=W), thr)


def test_random_mask_keeps_the_same_count_per_response_uniformly():
    from thrlab.core.reweight import random_mask_like

    gen = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1, 4:] = False
    kept = torch.zeros(3, 6, dtype=torch.bool)
    kept[0, :2] = True  # 2 of 6
    kept[1, 0] = True  # 1 of 4 real tokens
    kept[2, 5] = True
    kept[2, 1] = True
    hits = torch.zeros(3, 6)
    for _ in range(3000):
        r = random_mask_like(kept, mask, gen)
        assert r.sum(1).tolist() == [2, 1, 2] and not (r & ~mask).any()
        hits += r.float()
    freq = hits / 3000
    for b, k, n in ((0, 2, 6), (1, 1, 4), (2, 2, 6)):  # each real token kept with prob k / n
        assert torch.allclose(freq[b, :n], torch.full((n,), k / n), atol=0.04), freq[b]


def test_controls_keep_thrs_advantage_mass_without_its_choice():
    """random_mask: THR p = 0's count per response (so its mass), other tokens; mass_matched:
    every token, GRPO's weights scaled to the mass THR's mask keeps."""
    from thrlab.train.config import THRConfig
    from thrlab.core.loss import group_advantages
    from thrlab.core.reweight import thr_token_advantages

    hidden, W, tokens, mask = make_group()
    r = torch.tensor([0., 1., 1., 0.])
    adv = group_advantages(r, G)
    out = {m: thr_token_advantages(THRConfig(thr_mode=m, thr_tau_mode="quantile",
                                             thr_tau_quantile=0.6), hidden, tokens, mask, r, adv,
                                   W, group_size=G, generator=torch.Generator().manual_seed(1))
           for m in ("thr", "random_mask", "mass_matched")}
    thr_tok, thr, st = out["thr"]
    rnd_tok, _, st_rnd = out["random_mask"]
    mm_tok, _, st_mm = out["mass_matched"]
    assert ((thr_tok != 0).sum(1) == (rnd_tok != 0).sum(1)).all()  # same count per response
    assert not torch.equal(thr_tok != 0, rnd_tok != 0)  # but other tokens
    torch.testing.assert_close(rnd_tok.abs().sum(1), thr_tok.abs().sum(1))  # same mass each
    assert ((mm_tok != 0) == (mask & (adv[:, None] != 0))).all()  # every real token
    torch.testing.assert_close(mm_tok.abs().sum(), thr_tok.abs().sum())  # THR's mass in all
    ratio = mm_tok / (adv[:, None] * mask)
    assert torch.allclose(ratio[mm_tok != 0], ratio[mm_tok != 0][0])  # one scale for the batch
    for s in (st_rnd, st_mm):
        assert s["thr/adv_mass_after"] == pytest.approx(st["thr/adv_mass_after"], rel=1e-6)


def test_random_mask_draws_what_it_drew_before_the_token_choice_controls():
    """random_mask_like now ranks through count_mask_like: the same draws, the same tokens as
    its earlier inline ranking (the reference below), so earlier random-mask runs still hold."""
    from thrlab.core.reweight import random_mask_like

    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(8, 11, generator=gen) > 0.3
    kept = (torch.rand(8, 11, generator=gen) > 0.6) & mask
    got = random_mask_like(kept, mask, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    k = kept.sum(1, keepdim=True)
    score = torch.rand(mask.shape, generator=g).masked_fill(~mask, -1.0)
    want = (score.argsort(1, descending=True).argsort(1) < k) & mask
    assert torch.equal(got, want)


def test_token_signals_are_log_softmax_and_entropy_per_token():
    from thrlab.core.reweight import token_signals

    hidden, W, tokens, mask = make_group()
    streamed = token_signals(hidden, tokens, lm_head_weight=W, temperature=0.7)
    logits = (hidden @ W.T) / 0.7
    given = token_signals(hidden, tokens, logits=logits)
    for b in range(G):
        for t in range(T):
            lp = torch.log_softmax(logits[b, t].double(), -1)
            want_logp = float(lp[tokens[b, t]])
            want_ent = -sum(float(lp[v].exp() * lp[v]) for v in range(V))
            for got in (streamed, given):
                assert float(got["logp"][b, t]) == pytest.approx(want_logp, abs=1e-5)
                assert float(got["entropy"][b, t]) == pytest.approx(want_ent, abs=1e-5)


@pytest.mark.parametrize("mode, signal", [("lowprob_mask", "logp"), ("entropy_mask", "entropy")])
def test_token_choice_controls_keep_thrs_count_chosen_by_their_signal(mode, signal):
    """Per response: THR p = 0's count of tokens, the lowest-probability sampled tokens /
    highest-entropy positions (a naive sort per row), weights unchanged; the overlap stat is
    the share of THR's kept tokens they keep."""
    from thrlab.train.config import THRConfig
    from thrlab.core.loss import group_advantages
    from thrlab.core.reweight import thr_token_advantages, token_signals

    hidden, W, tokens, mask = make_group()
    r = torch.tensor([0., 1., 1., 0.])
    adv = group_advantages(r, G)
    cfg = dict(thr_tau_mode="quantile", thr_tau_quantile=0.6)
    thr_tok, _, _ = thr_token_advantages(THRConfig(thr_mode="thr", **cfg), hidden, tokens, mask,
                                         r, adv, W, group_size=G)
    tok, _, st = thr_token_advantages(THRConfig(thr_mode=mode, **cfg), hidden, tokens, mask, r,
                                      adv, W, group_size=G)
    sig = token_signals(hidden, tokens, lm_head_weight=W)[signal]
    kept_thr = thr_tok != 0
    for b in range(G):
        real = [t for t in range(T) if mask[b, t]]
        k = int(kept_thr[b].sum())
        order = sorted(real, key=lambda t: float(sig[b, t]), reverse=(signal == "entropy"))
        assert {t for t in range(T) if tok[b, t] != 0} == set(order[:k])
        assert all(float(tok[b, t]) == float(adv[b]) for t in order[:k])
    overlap = float(((tok != 0) & kept_thr).sum()) / float(kept_thr.sum())
    assert st["thr/control_overlap"] == pytest.approx(overlap)


def test_controls_are_p0_with_the_mask():
    from thrlab.train.presets import from_preset

    assert from_preset("tiny", "thr_random_mask").thr_mode == "random_mask"
    for m in ("thr_lowprob_mask", "thr_entropy_mask"):
        with pytest.raises(ValueError, match="control of THR's mask"):
            from_preset("tiny", m, thr_p=-0.1)
    with pytest.raises(ValueError, match="control of THR's mask"):
        from_preset("tiny", "grpo_mass_matched", thr_p=0.1)
