"""Baselines (docs/method.md section 4) against naive references: brute-force Pass@K over all K-subsets,
covariances and selections by explicit loops and sorting, and two real steps of each on a tiny model."""
import itertools
import math
import statistics

import pytest
import torch

from thrlab.train.config import LossConfig
from thrlab.train.presets import METHODS, from_preset
from thrlab.core.loss import (clip_cov_tokens, group_advantages, passk_advantages,
                         passk_mixed_advantages, policy_loss, selection_count, token_covariance,
                         top_tokens)


def _brute_passk(group: list[int], k: int) -> list[float]:
    """The defining property: the group's reward is the max over a K-subset; a response's advantage
    is (mean reward of the subsets containing it - mean over all subsets) / std over all subsets."""
    n = len(group)
    subsets = list(itertools.combinations(range(n), k))
    vals = [max(group[i] for i in s) for s in subsets]
    mean, std = statistics.fmean(vals), statistics.pstdev(vals)
    if std == 0:
        return [0.0] * n
    return [(statistics.fmean([v for s, v in zip(subsets, vals) if i in s]) - mean) / std
            for i in range(n)]


@pytest.mark.parametrize("n", [2, 4, 5, 8])
def test_passk_advantage_matches_brute_force_over_all_subsets(n):
    for k in range(1, n + 1):
        for c in range(n + 1):
            group = [1] * c + [0] * (n - c)
            got = passk_advantages(torch.tensor(group, dtype=torch.float32), n, k).tolist()
            assert got == pytest.approx(_brute_passk(group, k), abs=1e-5), (n, k, c)


def test_passk_handles_several_groups_in_any_order():
    rewards = torch.tensor([0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 1, 1], dtype=torch.float32)
    got = passk_advantages(rewards, 4, 2).view(3, 4).tolist()
    for g, row in enumerate(rewards.view(3, 4).int().tolist()):
        assert got[g] == pytest.approx(_brute_passk(row, 2), abs=1e-5)
    assert got[2] == [0.0] * 4  # an all-correct group has a certain Pass@K: no signal


def test_passk_with_k_one_is_grpo():
    rewards = torch.tensor([0, 1, 1, 0, 0, 0, 0, 1], dtype=torch.float32)
    torch.testing.assert_close(passk_advantages(rewards, 4, 1),
                               group_advantages(rewards, 4, eps=0.0))


def test_passk_rejects_bad_inputs():
    with pytest.raises(ValueError, match="k <= group_size"):
        passk_advantages(torch.tensor([0.0, 1.0]), 2, 3)
    with pytest.raises(ValueError, match="binary"):
        passk_advantages(torch.tensor([0.0, 0.5]), 2, 1)
    with pytest.raises(ValueError, match="multiple of group_size"):
        passk_advantages(torch.tensor([0.0, 1.0, 1.0]), 2, 1)


def test_passk_mixed_is_the_chi_blend():
    rewards = torch.tensor([1, 0, 0, 0, 1, 1, 0, 1], dtype=torch.float32)
    got = passk_mixed_advantages(rewards, 4, 2, chi=0.2, eps=0.0).tolist()
    want = []
    for row in rewards.view(2, 4).int().tolist():
        mu, sd = statistics.fmean(row), statistics.pstdev(row)
        want += [0.2 * p + 0.8 * (r - mu) / sd for p, r in zip(_brute_passk(row, 2), row)]
    assert got == pytest.approx(want, abs=1e-5)


def test_selection_count_is_verls_rule():
    assert [selection_count(2e-4, n) for n in (0, 10, 5000, 10_000)] == [0, 1, 1, 2]
    assert selection_count(0.2, 11) == 2 and selection_count(1.0, 7) == 7


def _batch(seed=0, B=3, T=5):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    return torch.randn(B, T, generator=g), torch.randn(B, T, generator=g) - 2.0, mask


def test_token_covariance_matches_explicit_loops():
    adv, logp, mask = _batch()
    cells = [(b, t) for b in range(3) for t in range(5) if mask[b, t]]
    ma = sum(float(adv[c]) for c in cells) / len(cells)
    ml = sum(float(logp[c]) for c in cells) / len(cells)
    cov = token_covariance(adv, logp, mask)
    for b in range(3):
        for t in range(5):
            want = (float(adv[b, t]) - ma) * (float(logp[b, t]) - ml) if mask[b, t] else 0.0
            assert float(cov[b, t]) == pytest.approx(want, abs=1e-6)


def test_top_tokens_selects_by_sorting_valid_tokens_only():
    score, _, mask = _batch(1)
    score = score.masked_fill(~mask, 100.0)  # padding with huge scores must never be picked
    for frac in (0.01, 0.2, 0.5, 1.0):
        keep = top_tokens(score, mask, frac)
        cells = sorted(((float(score[b, t]), (b, t)) for b in range(3) for t in range(5)
                        if mask[b, t]), reverse=True)
        n = selection_count(frac, len(cells))
        assert {c for _, c in cells[:n]} == {tuple(x) for x in keep.nonzero().tolist()}


def test_clip_cov_picks_random_tokens_inside_the_window():
    cov = torch.linspace(-2, 8, 60).view(4, 15)
    mask = torch.ones(4, 15, dtype=torch.bool)
    mask[0, :5] = False
    window = [(b, t) for b in range(4) for t in range(15)
              if mask[b, t] and 1.0 < float(cov[b, t]) < 5.0]
    picks = []
    for seed in range(3):
        keep = clip_cov_tokens(cov, mask, 0.05, 1.0, 5.0, torch.Generator().manual_seed(seed))
        sel = {tuple(x) for x in keep.nonzero().tolist()}
        assert len(sel) == selection_count(0.05, int(mask.sum())) == 2 and sel <= set(window)
        picks.append(sel)
    again = clip_cov_tokens(cov, mask, 0.05, 1.0, 5.0, torch.Generator().manual_seed(0))
    assert {tuple(x) for x in again.nonzero().tolist()} == picks[0]  # seeded, reproducible
    assert len({frozenset(p) for p in picks}) > 1  # and random across seeds
    assert not clip_cov_tokens(cov, mask, 0.05, 100.0, 200.0).any()  # empty window: nothing


def _loss_inputs():
    adv, old, mask = _batch(2)
    logp = (old + 0.1 * torch.randn_like(old)).requires_grad_()
    return logp, old, adv, mask


def test_kl_cov_loss_per_token_matches_the_paper_form():
    logp, old, adv, mask = _loss_inputs()
    loss, st = policy_loss(logp, old, adv, mask, LossConfig(kl_coef=0.0, cov_mode="kl_cov",
                                                              cov_ratio=0.2, cov_kl_coef=0.5))
    sel = st["cov_selected"]
    assert int(sel.sum()) == selection_count(0.2, int(mask.sum()))
    assert torch.equal(sel, top_tokens(token_covariance(adv, logp, mask), mask, 0.2))
    for b in range(3):
        for t in range(5):
            rho = math.exp(float(logp[b, t].detach()) - float(old[b, t]))
            want = -rho * float(adv[b, t])  # unclipped, as in Cui et al.
            if sel[b, t]:
                want += 0.5 * abs(float(logp[b, t].detach()) - float(old[b, t]))
            assert float(loss[b, t]) == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_clip_cov_zeroes_value_and_gradient_of_selected_tokens():
    logp, old, adv, mask = _loss_inputs()
    adv = adv * 3.0  # widen covariances so the (1, 5) window is populated
    plain, _ = policy_loss(logp, old, adv, mask, LossConfig(kl_coef=0.0))
    loss, st = policy_loss(logp, old, adv, mask,
                           LossConfig(kl_coef=0.0, cov_mode="clip_cov", cov_ratio=0.2),
                           generator=torch.Generator().manual_seed(0))
    sel = st["cov_selected"]
    assert sel.any()
    (loss * mask).sum().backward()
    assert torch.all(logp.grad[sel] == 0) and torch.all(loss[sel] == 0)
    torch.testing.assert_close(loss[~sel], plain[~sel])


def _verl_style_clip_cov(logp, old, adv, mask, eps, frac, lb, ub, generator):
    """Clip-Cov as the authors' code (adapted in verl) writes it, token by token: candidates
    are valid tokens inside the window that the PPO clip did not clip; a random draw of them
    gets its clipped loss zeroed."""
    B, T = mask.shape
    n_valid = int(mask.sum())
    a_mean = sum(float(adv[b, t]) for b in range(B) for t in range(T) if mask[b, t]) / n_valid
    l_mean = sum(float(logp[b, t]) for b in range(B) for t in range(T) if mask[b, t]) / n_valid
    losses, cand = {}, []
    for b in range(B):
        for t in range(T):
            rho = math.exp(float(logp[b, t]) - float(old[b, t]))
            l1 = -float(adv[b, t]) * rho
            l2 = -float(adv[b, t]) * min(max(rho, 1 - eps), 1 + eps)
            losses[b, t] = max(l1, l2)
            cov = (float(adv[b, t]) - a_mean) * (float(logp[b, t]) - l_mean)
            if mask[b, t] and not l2 > l1 and lb < cov < ub:
                cand.append((b, t))
    n = min(max(1, int(frac * n_valid)), len(cand))
    pick = {cand[i] for i in torch.randperm(len(cand), generator=generator)[:n].tolist()}
    return pick, {k: (0.0 if k in pick else v) for k, v in losses.items()}


def test_clip_cov_never_spends_its_budget_on_tokens_the_clip_already_clipped():
    """Off-policy (ratios far from 1), many window tokens are clipped; none may be drawn."""
    torch.manual_seed(4)
    adv = torch.randn(6, 1).repeat(1, 8) * 3.0  # (B, T) token advantages, one per response
    old = torch.randn(6, 8) - 2.0
    logp = old + 0.5 * torch.randn(6, 8)  # several updates away from the old policy
    mask = torch.rand(6, 8) > 0.15
    loss, st = policy_loss(logp, old, adv, mask,
                           LossConfig(kl_coef=0.0, cov_mode="clip_cov", cov_ratio=0.3,
                                      cov_clip_lb=0.0, cov_clip_ub=50.0),
                           generator=torch.Generator().manual_seed(1))
    sel = {tuple(x) for x in st["cov_selected"].nonzero().tolist()}
    want_sel, want_loss = _verl_style_clip_cov(logp, old, adv, mask, 0.2, 0.3, 0.0, 50.0,
                                               torch.Generator().manual_seed(1))
    clipped = {tuple(x) for x in st["clipped"].nonzero().tolist()}
    assert clipped & {tuple(x) for x in mask.nonzero().tolist()}  # the case is exercised
    assert sel and not sel & clipped
    assert sel == want_sel
    for (b, t), v in want_loss.items():
        if mask[b, t]:
            assert float(loss[b, t]) == pytest.approx(v, rel=1e-5, abs=1e-6)


# -- two real steps of every baseline on the tiny model ------------------------------------------
@pytest.mark.parametrize("method", ["passk", "passk_mixed", "kl_cov", "clip_cov", "entropy_fork",
                                    "clip_higher", "dr_grpo"])
def test_each_baseline_trains_two_steps(tiny_model_dir, tmp_path, method):
    from tests.test_trainer import _split_params, _trainer

    # tiny batches hold ~100 tokens: scale the covariance fraction so a few tokens are selected
    over = dict(METHODS[method])
    if "cov" in method:  # the random model's log-probs barely vary: widen the Clip-Cov window too
        over.update(cov_ratio=0.05, cov_clip_lb=0.0)
    over["micro_batch_size"] = 8 if "cov" in method else 0
    if "cov" in method:  # KL-Cov acts from the second update of a batch on
        over["mini_batches"] = 2
    if "passk" in method:
        over["passk_k"] = 2  # K < G = 4: at K = G every K-subset is the whole group (no signal)
    tr = _trainer(tiny_model_dir, tmp_path, **over)
    lora0, frozen0 = _split_params(tr.model)
    rows = tr.train(progress=False)
    lora1, frozen1 = _split_params(tr.model)
    assert any(not torch.equal(lora0[n], lora1[n]) for n in lora0)
    assert all(torch.equal(frozen0[n], frozen1[n]) for n in frozen0)
    last = rows[-1]
    assert last["train/entropy"] > 0
    if method in ("kl_cov", "clip_cov"):
        assert 0 < last["train/cov_selected_frac"] <= 0.25
    else:
        assert last["train/cov_selected_frac"] == 0
    if method == "entropy_fork":
        assert 0.1 <= last["train/fork_selected_frac"] <= 0.2
    if method == "clip_higher":
        assert tr.cfg.clip_eps_high > tr.cfg.clip_eps_low


@pytest.mark.parametrize("over", [
    dict(entropy_top_frac=1.0),                       # forking on all tokens = no forking
    dict(adv_estimator="passk_mixed", passk_chi=0.0, passk_k=2),  # mixed, chi 0 = GRPO
    dict(cov_mode="clip_cov", cov_clip_lb=1e8, cov_clip_ub=1e9, mini_batches=2),  # empty window
])
def test_baselines_reduce_to_grpo_at_their_neutral_settings(tiny_model_dir, tmp_path, over):
    from tests.test_trainer import _split_params, _trainer

    torch.manual_seed(3)
    a = _trainer(tiny_model_dir, tmp_path / "a", kl_coef=0.0,
                 **{k: v for k, v in over.items() if k == "mini_batches"})
    a.train(progress=False)
    torch.manual_seed(3)
    b = _trainer(tiny_model_dir, tmp_path / "b", kl_coef=0.0, **over)
    b.train(progress=False)
    la, lb = _split_params(a.model)[0], _split_params(b.model)[0]
    assert all(torch.equal(la[n], lb[n]) for n in la)


def test_baseline_config_values_are_checked():
    with pytest.raises(ValueError, match="passk_k"):
        from_preset("tiny", "passk", passk_k=9)
    with pytest.raises(ValueError, match="whole group"):
        from_preset("tiny", "passk", passk_k=8)
    with pytest.raises(ValueError, match="fraction"):
        from_preset("tiny", cov_ratio=2.0)
    with pytest.raises(ValueError, match="entropy_top_frac"):
        from_preset("tiny", entropy_top_frac=20.0)
    with pytest.raises(ValueError, match="unknown method"):
        from_preset("tiny", "kl-cov")


# Fields that set how many optimizer steps a rollout batch gets, and how large they are.
SCHEDULE = ("epochs", "mini_batches", "micro_batch_size", "prompts_per_step", "group_size", "lr",
            "steps", "max_grad_norm", "dynamic_sampling")


@pytest.mark.parametrize("preset", ["tiny", "qwen2.5-math-1.5b"])
def test_recipes_never_change_the_optimizer_schedule(preset):
    """Methods of one comparison take the same optimizer steps per rollout batch at the same lr;
    a recipe that forced its own schedule (KL-Cov's mini_batches=4 did) confounds the comparison."""
    base = from_preset(preset, mini_batches=2)
    for name in METHODS:
        cfg = from_preset(preset, name, mini_batches=2)
        changed = [k for k in SCHEDULE if getattr(cfg, k) != getattr(base, k)]
        assert not changed, f"recipe {name!r} changes the schedule: {changed}"


def test_kl_cov_refuses_an_on_policy_schedule():
    with pytest.raises(ValueError, match="mini_batches >= 2"):
        from_preset("tiny", "kl_cov")
    assert from_preset("tiny", "kl_cov", mini_batches=2).mini_batches == 2
    assert from_preset("qwen2.5-math-1.5b", "kl_cov").mini_batches == 2  # the preset's own
