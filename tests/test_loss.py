"""GRPO objective pieces against naive per-element references written here."""
import math

import pytest
import torch

from thrlab.core.loss import (aggregate, clipped_surrogate, group_advantages, gspo_token_ratio, k3_kl,
                              policy_loss)
from thrlab.core.variants import FAMILIES, THR_MODES
from thrlab.train.config import SECTIONS, Config, LossConfig, THRConfig, field_docs


def naive_advantages(rewards, G, eps=1e-6, std_norm=True):
    out = []
    for g in range(0, len(rewards), G):
        grp = rewards[g:g + G]
        mean = sum(grp) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in grp) / G)  # population std
        out += [(r - mean) / (std + eps) if std_norm else r - mean for r in grp]
    return out


def test_group_advantages_match_loop_and_closed_form():
    torch.manual_seed(0)
    r = (torch.rand(40) > 0.6).float()
    got = group_advantages(r, 8)
    want = naive_advantages(r.tolist(), 8)
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    # Binary rewards: A+ = sqrt((1-q)/q), A- = -sqrt(q/(1-q)) (docs/method.md section 1).
    r = torch.tensor([1., 1., 0., 0., 0., 0., 0., 0.])
    q = 0.25
    a = group_advantages(r, 8, eps=0.0)
    assert a[0].item() == pytest.approx(math.sqrt((1 - q) / q))
    assert a[-1].item() == pytest.approx(-math.sqrt(q / (1 - q)))


def test_all_equal_groups_give_zeros_not_nan():
    r = torch.tensor([1., 1., 1., 1., 0., 0., 0., 0., 1., 0., 1., 0.])
    a = group_advantages(r, 4)
    assert torch.isfinite(a).all()
    assert (a[:8] == 0).all() and (a[8:] != 0).all()


def test_dr_grpo_advantages_are_centred_only():
    r = torch.tensor([1., 0., 0., 0.])
    assert torch.allclose(group_advantages(r, 4, std_norm=False),
                          torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_group_advantages_rejects_bad_shape():
    with pytest.raises(ValueError, match="multiple of group_size"):
        group_advantages(torch.zeros(7), 4)


@pytest.mark.parametrize("ratio,adv,want_loss,want_clip", [
    (1.5, 1.0, -1.2, True),     # positive advantage, ratio above 1+eps: clipped at 1.2
    (0.5, 1.0, -0.5, False),    # positive advantage, ratio below: unclipped (pessimistic)
    (0.5, -1.0, 0.8, True),     # negative advantage, ratio below 1-eps: clipped at 0.8
    (1.5, -1.0, 1.5, False),    # negative advantage, ratio above: unclipped
    (1.1, 2.0, -2.2, False),    # inside the trust region
])
def test_clipped_surrogate_hand_cases(ratio, adv, want_loss, want_clip):
    loss, clipped = clipped_surrogate(torch.tensor([[ratio]]), torch.tensor([[adv]]), 0.2, 0.2)
    assert loss.item() == pytest.approx(want_loss)
    assert clipped.item() is want_clip


def test_clip_higher_is_asymmetric():
    loss, _ = clipped_surrogate(torch.tensor([[1.25]]), torch.tensor([[1.0]]), 0.2, 0.28)
    assert loss.item() == pytest.approx(-1.25)  # inside (0.8, 1.28): not clipped


def test_k3_kl_hand_case_and_nonnegative():
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    d = -0.5
    assert k3_kl(logp, ref).item() == pytest.approx(math.exp(d) - d - 1)
    x = torch.randn(100)
    assert (k3_kl(x, torch.randn(100)) >= 0).all()
    assert k3_kl(x, x).abs().max() == 0


def test_gspo_token_ratio_value_and_gradient():
    torch.manual_seed(1)
    logp = torch.randn(2, 5, requires_grad=True)
    old = torch.randn(2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    s = gspo_token_ratio(logp, old, mask)
    for b in range(2):  # value: the length-normalised sequence ratio on every token
        n = int(mask[b].sum())
        seq = math.exp(sum((logp[b, t] - old[b, t]).item() for t in range(n)) / n)
        assert torch.allclose(s[b], torch.full((5,), seq), rtol=1e-5)
    # gradient of s_{i,t} wrt logp_{i,t} is s_i (own token only), not s_i/|y_i| per token
    s[0, 1].backward()
    g = logp.grad
    assert g[0, 1].item() == pytest.approx(s[0, 1].item(), rel=1e-5)
    assert g[0, 0].item() == 0 and g[1].abs().sum() == 0


def test_aggregation_modes_against_loops():
    torch.manual_seed(2)
    lt = torch.randn(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    vals = [[lt[b, t].item() for t in range(4) if mask[b, t]] for b in range(3)]
    tok_mean = sum(sum(v) for v in vals) / sum(len(v) for v in vals)
    seq_mean = sum(sum(v) / len(v) for v in vals) / 3
    dr = sum(sum(v) for v in vals) / (3 * 4)
    kw = dict(n_tokens=7.0, n_seqs=3.0, max_len=4)
    assert aggregate(lt, mask, "token_mean", **kw).item() == pytest.approx(tok_mean, rel=1e-5)
    assert aggregate(lt, mask, "seq_mean_token_mean", **kw).item() == pytest.approx(seq_mean, rel=1e-5)
    assert aggregate(lt, mask, "seq_mean_token_sum_norm", **kw).item() == pytest.approx(dr, rel=1e-5)
    # micro-batch shares sum to the mini-batch loss (gradient accumulation is exact)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        whole = aggregate(lt, mask, mode, **kw)
        parts = aggregate(lt[:2], mask[:2], mode, **kw) + aggregate(lt[2:], mask[2:], mode, **kw)
        assert parts.item() == pytest.approx(whole.item(), rel=1e-5)
    with pytest.raises(ValueError, match="unknown loss_agg"):
        aggregate(lt, mask, "mean", **kw)


def test_policy_loss_on_policy_gradient_is_reinforce():
    """At ratio 1 the GRPO gradient is -A * d logp per token (no clipping, no KL)."""
    torch.manual_seed(3)
    logp = torch.randn(2, 3, requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, 1.0], [-0.5, -0.5, -0.5]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    loss_tok, st = policy_loss(logp, logp.detach(), adv, mask, LossConfig(kl_coef=0.0))
    loss_tok.sum().backward()
    assert torch.allclose(logp.grad, -adv)
    assert not st["clipped"].any()
    with pytest.raises(ValueError, match="ref_logp"):
        policy_loss(logp, logp.detach(), adv, mask, LossConfig(kl_coef=0.1))


def test_gspo_token_recipes_are_the_gspo_objective():
    """GSPO's J = mean over responses of each response's token mean of min(s A, clip(s) A), with
    the GSPO paper's clip and no KL; the paper's GSPO-token + THR result takes p < 0."""
    from thrlab.train.presets import from_preset

    gspo = from_preset("tiny", "gspo_token")
    assert (gspo.loss_agg, gspo.clip_eps_low, gspo.clip_eps_high, gspo.kl_coef) == \
        ("seq_mean_token_mean", 3e-4, 4e-4, 0.0)
    assert from_preset("tiny", "gspo_token_thr").thr_p < 0
    assert from_preset("tiny", "gspo_token_thr_exploit").thr_p > 0
    torch.manual_seed(5)
    old = torch.randn(3, 6)
    logp = (old + 1e-3 * torch.randn(3, 6)).requires_grad_()  # inside and outside the clip
    adv = torch.randn(3, 6)  # per-token advantages (THR makes them vary within a response)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4, [1] * 4 + [0] * 2], dtype=torch.bool)
    loss_tok, _ = policy_loss(logp, old, adv, mask, gspo)
    got = aggregate(loss_tok, mask, gspo.loss_agg, n_tokens=float(mask.sum()), n_seqs=3.0,
                    max_len=6)
    want = 0.0
    for b in range(3):
        n = int(mask[b].sum())
        s = math.exp(sum(float(logp[b, t] - old[b, t]) for t in range(n)) / n)
        clip_s = min(max(s, 1 - 3e-4), 1 + 4e-4)
        want += sum(-min(s * float(adv[b, t]), clip_s * float(adv[b, t])) for t in range(n)) / n
    assert float(got) == pytest.approx(want / 3, rel=1e-5)


def test_every_variant_name_is_written_once_and_read_everywhere():
    """thrlab.core.variants is the one list of names: each resolves to a callable of thrlab.core,
    the config accepts exactly those names (checked at construction without torch), --help lists
    them, and an unknown name is refused with the choices."""
    docs = field_docs()
    for family in FAMILIES:
        cls = LossConfig if family.field in LossConfig.names() else THRConfig
        with pytest.raises(ValueError) as err:
            cls(**{family.field: "?"})
        assert set(eval(str(err.value).split("choose one of ")[1])) == set(family.names())
        assert docs[family.field].endswith(" | ".join(family.names()))
        for name, (impl, what) in family.variants.items():
            assert what
            if impl:  # "" only for thr_mode=off, which computes no THR
                assert callable(family.function(name))
        with pytest.raises(ValueError, match="choose"):
            family.function("?")
    assert [n for n, (impl, _) in THR_MODES.variants.items() if not impl] == ["off"]
    # a control of THR's mask (described "control: ...") is refused away from p = 0
    with pytest.raises(ValueError, match="control of THR's mask"):
        Config(thr_mode="random_mask", thr_p=0.1)
    # every Config field belongs to exactly one section
    names = [n for sec in SECTIONS for n in sec.names()]
    assert len(names) == len(set(names))
