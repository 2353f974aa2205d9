"""A few real GRPO steps on a tiny 4-bit + LoRA model: what learning touched, and what it did not."""
import json

import pytest
import torch

from thrlab.train.presets import from_preset
from thrlab.train.model import load_policy
from thrlab.train.runs import STEP_PHASES, RunDir
from thrlab.tasks.arithmetic import arithmetic_problems
from thrlab.train.step import UpdateMetrics
from thrlab.train.trainer import GRPOTrainer


class ParityGrade:
    """Reward = the completion has an even number of characters: a verifiable signal a random
    model hits about half the time, so groups have mixed rewards from step one."""

    def __call__(self, texts, golds):
        from thrlab.tasks.rewards import GradeResult

        rewards = [float(len(t) % 2 == 0) for t in texts]
        return GradeResult(rewards=rewards, status=["correct" if r else "wrong" for r in rewards])


def _trainer(tiny_model_dir, tmp_path, **over):
    # lr 1e-2: large enough that two steps visibly move every LoRA matrix
    base = dict(steps=2, prompts_per_step=4, group_size=4, max_new_tokens=6, lr=1e-2,
                save_every=1)
    cfg = from_preset("tiny", **dict(base, **over))
    model, tok = load_policy(cfg, str(tiny_model_dir), torch.device("cpu"))
    return GRPOTrainer(cfg, model, tok, arithmetic_problems(64, "train", seed=0),
                       RunDir(tmp_path / "run"), ParityGrade())


def _split_params(model):
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    return lora, frozen


@pytest.mark.parametrize("over", [
    dict(),                                                       # on-policy, token-mean, KL on
    dict(epochs=2, mini_batches=2, micro_batch_size=4, objective="gspo_token",
         clip_eps_low=3e-4, clip_eps_high=4e-4, loss_agg="seq_mean_token_mean"),
    dict(dynamic_sampling=True, kl_coef=0.0, loss_agg="seq_mean_token_sum_norm"),
])
def test_grpo_steps_train_lora_only(tiny_model_dir, tmp_path, over):
    tr = _trainer(tiny_model_dir, tmp_path, **over)
    lora0, frozen0 = _split_params(tr.model)
    rows = tr.train(progress=False)
    lora1, frozen1 = _split_params(tr.model)
    assert [r["step"] for r in rows] == [1, 2]
    changed = [n for n in lora0 if not torch.equal(lora0[n], lora1[n])]
    assert any("lora_B" in n for n in changed) and len(changed) >= len(lora0) // 2
    assert all(torch.equal(frozen0[n], frozen1[n]) for n in frozen0)  # base weights untouched
    for key in ("train/reward_mean", "train/kl", "train/clip_frac", "train/entropy",
                "train/grad_norm", "train/frac_zero_std_groups", "time/generate", "time/update"):
        assert key in rows[-1] and rows[-1][key] == rows[-1][key]  # present and not NaN
    assert (tr.run / "checkpoint" / "COMPLETE").exists()


def test_zero_advantage_batch_does_not_move_weights(tiny_model_dir, tmp_path):
    """All-equal rewards: advantages are 0, and with kl at the reference the update is a no-op."""
    tr = _trainer(tiny_model_dir, tmp_path, steps=1)
    tr.grade_fn = lambda texts, golds: ParityGrade()(["xx"] * len(texts), golds)
    lora0, _ = _split_params(tr.model)
    row = tr.train(progress=False)[-1]
    lora1, _ = _split_params(tr.model)
    assert row["train/frac_zero_std_groups"] == 1.0
    assert all(torch.equal(lora0[n], lora1[n]) for n in lora0)


def test_resume_from_checkpoint_matches_uninterrupted(tiny_model_dir, tmp_path):
    torch.manual_seed(5)  # before loading: the LoRA A matrices are drawn at load time
    a = _trainer(tiny_model_dir, tmp_path / "a", steps=3, kl_coef=0.0)
    a.train(progress=False)
    torch.manual_seed(5)
    b = _trainer(tiny_model_dir, tmp_path / "b", steps=2, kl_coef=0.0)
    b.train(progress=False)  # "killed" after step 2's checkpoint
    c = _trainer(tiny_model_dir, tmp_path / "b", steps=3, kl_coef=0.0)
    c.train(progress=False)
    assert c.step == 3 and c.state.cursor == a.state.cursor
    la, lc = _split_params(a.model)[0], _split_params(c.model)[0]
    assert all(torch.equal(la[n], lc[n]) for n in la)
    ma = [json.dumps({k: v for k, v in r.items() if not k.startswith("time/")}, sort_keys=True)
          for r in a.run.metrics()]
    mc = [json.dumps({k: v for k, v in r.items() if not k.startswith("time/")}, sort_keys=True)
          for r in c.run.metrics()]
    assert ma == mc


def _lora_after(tiny_model_dir, tmp_path, **over):
    torch.manual_seed(11)
    tr = _trainer(tiny_model_dir, tmp_path, **over)
    rows = tr.train(progress=False)
    return _split_params(tr.model)[0], rows


@pytest.mark.parametrize("sched", [dict(), dict(epochs=2, mini_batches=2, micro_batch_size=4)])
def test_thr_with_p0_and_no_mask_is_exactly_grpo(tiny_model_dir, tmp_path, sched):
    """docs/method.md section 6: with p = 0 and no mask, THR-GRPO is exactly GRPO."""
    base, _ = _lora_after(tiny_model_dir, tmp_path / "a", **sched)
    thr0, rows = _lora_after(tiny_model_dir, tmp_path / "b", thr_mode="thr", thr_p=0.0,
                             thr_mask=False, **sched)
    assert all(torch.equal(base[n], thr0[n]) for n in base)
    assert rows[-1]["thr/adv_mass_after"] == pytest.approx(rows[-1]["thr/adv_mass_before"])
    assert "time/thr" in rows[-1] and "thr/frac_pos" in rows[-1]
    moved, rows = _lora_after(tiny_model_dir, tmp_path / "c", thr_mode="thr", thr_p=0.5, **sched)
    assert not all(torch.equal(base[n], moved[n]) for n in base)
    assert rows[-1]["thr/frac_kept"] <= 1.0


def test_thr_on_policy_uses_the_update_forward_only(tiny_model_dir, tmp_path):
    """On-policy THR gets its hidden states from the update pass: no old-policy forward runs."""
    _, rows = _lora_after(tiny_model_dir, tmp_path, thr_mode="nthr", kl_coef=0.0)
    _, q = _lora_after(tiny_model_dir, tmp_path / "q", thr_mode="thr", thr_p=0.1,
                       thr_tau_mode="quantile", thr_tau_quantile=0.5)
    assert 0.3 <= q[-1]["thr/frac_kept"] <= 0.7  # about half the tokens above the median
    assert all(r["time/old_logp"] == 0.0 for r in rows)
    assert all(r["time/thr"] > 0 for r in rows)
    # the logged phases are disjoint: THR inside the update pass is not counted in time/update
    assert all(sum(r[f"time/{p}"] for p in STEP_PHASES) <= r["time/step"] for r in rows)


@pytest.mark.parametrize("over", [dict(thr_mode="thr", thr_p=0.1, thr_save_every=1),
                                  dict(kl_coef=1e-2), dict(entropy_top_frac=0.2)])
def test_both_old_policy_views_train_the_same(tiny_model_dir, tmp_path, over):
    """On-policy without dropout the update pass is the old policy (old_policy.UpdatePass); a
    separate frozen pass (FrozenPass) must give the same update: same THR, same LoRA weights."""
    from thrlab.train.records import load_token_records
    from thrlab.train.old_policy import FrozenPass, UpdatePass

    out = {}
    for name in ("update", "frozen"):
        torch.manual_seed(3)
        tr = _trainer(tiny_model_dir, tmp_path / name, lr=1e-3, **over)
        assert isinstance(tr.old_policy, UpdatePass)
        if name == "frozen":
            tr.old_policy = FrozenPass(tr.model, tr.cfg, tr.micro, tr.token_advantages)
        rows = tr.train(progress=False)
        out[name] = (rows, _split_params(tr.model)[0], load_token_records(tmp_path / name / "run"))
    (ra, la, ta), (rb, lb, tb) = out["update"], out["frozen"]
    assert [r["train/reward_mean"] for r in ra] == [r["train/reward_mean"] for r in rb]
    for key in ("train/loss", "train/entropy", "train/kl", "thr/abs_mean", "thr/frac_kept"):
        if key in ra[-1]:
            assert rb[-1][key] == pytest.approx(ra[-1][key], rel=1e-4, abs=1e-7), key
    assert (rb[0]["time/old_logp"] > 0) and (ra[0]["time/old_logp"] == 0) == ("entropy_top_frac"
                                                                             not in over)
    for n in la:
        torch.testing.assert_close(lb[n], la[n], rtol=1e-4, atol=1e-6)
    assert len(ta) == len(tb)
    for a, b in zip(ta, tb):
        torch.testing.assert_close(torch.tensor(b["rows"][0]["thr"]),
                                   torch.tensor(a["rows"][0]["thr"]), rtol=1e-4, atol=1e-6)


def test_on_policy_thr_from_the_update_logits_equals_streamed_thr(tiny_model_dir, tmp_path):
    """On-policy, THR reads the update pass's own logits; the result equals THR that streams
    the probabilities from the unembedding (thr_token_advantages' other source)."""
    from thrlab.train.model import lm_parts
    from thrlab.core.reweight import thr_token_advantages

    tr = _trainer(tiny_model_dir, tmp_path, thr_mode="thr", thr_p=0.1, steps=1)
    seen, inner = [], tr.old_policy.token_advantages

    def spy(hidden, tokens, mask, rewards, adv, logits=None):
        assert logits is not None and logits.shape[:2] == tokens.shape  # handed over, (B, T, V)
        streamed = thr_token_advantages(tr.cfg, hidden, tokens, mask, rewards, adv,
                                        lm_parts(tr.model)[1].weight, group_size=tr.cfg.group_size,
                                        temperature=tr.cfg.temperature)
        out = inner(hidden, tokens, mask, rewards, adv, logits)
        seen.append((out[0], out[2], streamed))
        return out

    tr.old_policy.token_advantages = spy
    tr.train(progress=False)
    assert seen
    for adv_tok, thr, (adv_ref, thr_ref, _) in seen:
        assert thr.abs().max() > 0
        assert torch.allclose(thr, thr_ref, rtol=1e-4, atol=1e-6 * float(thr_ref.abs().max()))
        # the same dominant tokens (one may sit on tau within rounding)
        assert int(((adv_tok != 0) != (adv_ref != 0)).sum()) <= 1


def test_thr_needs_whole_groups_per_micro_batch():
    with pytest.raises(ValueError, match="whole groups"):
        from_preset("tiny", thr_mode="thr", micro_batch_size=4, group_size=8)


def test_thr_token_records_saved_and_bounded(tiny_model_dir, tmp_path):
    from thrlab.train.records import load_token_records

    tr = _trainer(tiny_model_dir, tmp_path, thr_mode="thr", thr_p=0.1, thr_save_every=1,
                  thr_save_rows=8, thr_save_tokens=3)
    tr.train(progress=False)
    recs = load_token_records(tr.run.path)
    assert [r["step"] for r in recs] == [1, 2]
    rows = recs[0]["rows"]
    assert len(rows) == 8 and {r["group"] for r in rows} == {0, 1}  # whole groups of 4
    for r in rows:
        assert len(r["thr"]) == len(r["entropy"]) == len(r["tokens"]) <= 3
        assert all(e >= 0 for e in r["entropy"]) and r["reward"] in (0.0, 1.0)


@pytest.mark.parametrize("dynamic", [False, True])
def test_thr_token_records_at_the_last_step_carry_each_rows_question(tiny_model_dir, tmp_path,
                                                                     dynamic):
    from thrlab.train.records import load_token_records

    over = dict(thr_mode="thr", thr_p=0.1, thr_save_every=5, thr_save_rows=8,
                dynamic_sampling=dynamic)
    tr = _trainer(tiny_model_dir, tmp_path, **over)  # 2 steps, fewer than thr_save_every
    tr.train(progress=False)
    (rec,) = load_token_records(tr.run.path)
    assert rec["step"] == 2
    questions = [r["question"] for r in rec["rows"]]
    assert all(len(set(questions[g:g + 4])) == 1 for g in range(0, len(questions), 4))
    if dynamic:  # kept groups of several sampling rounds: each group one training question
        assert set(questions) <= {p.question for p in tr.problems}
    else:  # step 2's prompts in the seeded order, G rows each (prompt-major)
        fresh = _trainer(tiny_model_dir, tmp_path / "fresh", **over)
        drawn = [p.question for _ in range(2) for p in fresh.next_prompts(4)]
        assert questions == [q for q in drawn[4:6] for _ in range(4)]
    never = _trainer(tiny_model_dir, tmp_path / "never", **dict(over, thr_save_every=0))
    never.train(progress=False)
    assert load_token_records(never.run.path) == []


def test_prompt_order_is_one_seeded_shuffle_per_pass_and_resumes_from_the_cursor():
    import random
    from types import SimpleNamespace

    problems, seed = list(range(7)), 3

    def naive(cursor):  # reshuffle from scratch for every prompt
        epoch, pos = divmod(cursor, len(problems))
        order = list(range(len(problems)))
        random.Random(seed * 100_003 + epoch).shuffle(order)
        return problems[order[pos]]

    t = SimpleNamespace(cfg=SimpleNamespace(seed=seed), problems=problems,
                        state=SimpleNamespace(cursor=0), _order=(-1, []))
    got = GRPOTrainer.next_prompts(t, 5) + GRPOTrainer.next_prompts(t, 12)  # crosses 2 passes
    assert got == [naive(c) for c in range(17)]
    assert sorted(got[:7]) == problems and got[:7] != got[7:14]  # each pass a new permutation
    resumed = SimpleNamespace(cfg=t.cfg, problems=problems, state=SimpleNamespace(cursor=9),
                              _order=(-1, []))
    assert GRPOTrainer.next_prompts(resumed, 8) == [naive(c) for c in range(9, 17)]


# -- the update runs exactly the algorithm its config names ---------------------------------------
def test_mini_batch_rows_partition_every_row():
    from thrlab.train.step import mini_batch_rows

    for B in range(1, 30):
        perm = torch.randperm(B)
        for n in range(1, 6):
            parts = mini_batch_rows(perm, n)
            assert torch.equal(torch.cat(parts), perm)  # every row once, in order: none dropped
            sizes = [len(p) for p in parts]
            assert len(parts) == min(n, B) and max(sizes) - min(sizes) <= 1


def test_update_never_drops_rows_dynamic_sampling_returned(tiny_model_dir, tmp_path):
    """Dynamic sampling can keep 3 of 4 groups (12 rows) for mini_batches=8: all 12 rows train."""
    from thrlab.train.rollout import generate
    from thrlab.tasks.benchmarks import format_prompt

    tr = _trainer(tiny_model_dir, tmp_path, mini_batches=8, kl_coef=0.0)
    probs = tr.next_prompts(3)
    r = generate(tr.model, tr.tok, [format_prompt(p.question, "plain") for p in probs], n=4,
                 do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=6)
    r.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0] * 3)
    st = tr.update(r, tr.response_advantages(r.rewards), UpdateMetrics())
    assert st["train/tokens"] == float(r.mask.sum())  # 12 // 8 = 1 row per step dropped 4 before
    assert st["train/opt_steps"] == 8


def test_dynamic_sampling_keeps_groups_with_a_nonzero_advantage(tiny_model_dir, tmp_path):
    """Pass@K: a group with fewer than K wrong answers has mixed rewards but zero advantages;
    dynamic sampling must drop it (filter on advantages, not rewards)."""
    G, K = 4, 2

    def grade(texts, golds):  # per group of G: 1 wrong (even gold) or 2 wrong (odd gold)
        from thrlab.tasks.rewards import GradeResult

        rew = []
        for g in range(0, len(golds), G):
            rew += [0.0, 1.0, 1.0, 1.0] if int(golds[g]) % 2 == 0 else [0.0, 0.0, 1.0, 1.0]
        return GradeResult(rewards=rew, status=["correct" if x else "wrong" for x in rew])

    tr = _trainer(tiny_model_dir, tmp_path, steps=1, adv_estimator="passk", passk_k=K,
                  dynamic_sampling=True, max_sampling_rounds=4, kl_coef=0.0)
    tr.grade_fn = grade
    seen = []
    inner = tr.update
    tr.update = lambda r, adv, acc: seen.append((r, adv)) or inner(r, adv, acc)
    row = tr.train(progress=False)[-1]
    r, adv = seen[0]
    assert len(r.tokens) == 4 * G or row["train/sampling_rounds"] == 4
    assert adv.view(-1, G).ne(0).any(-1).all()  # no zero-advantage group diluting the mean
    assert all(int(r.rewards[g:g + G].sum()) == 2 for g in range(0, len(r.tokens), G))
    assert row["train/frac_zero_adv_groups"] > 0  # the first round did contain such groups


def test_forking_tokens_do_not_depend_on_the_micro_batch(tiny_model_dir, tmp_path):
    """The top-entropy fraction is taken over the mini-batch (the unit of one optimizer step), so
    micro_batch_size, a memory knob, leaves the update unchanged (170% apart before)."""
    out = {}
    for mbs in (0, 4):
        torch.manual_seed(2)
        tr = _trainer(tiny_model_dir, tmp_path / str(mbs), steps=1, entropy_top_frac=0.2,
                      micro_batch_size=mbs, lr=1e-4)
        lora0 = _split_params(tr.model)[0]
        row = tr.train(progress=False)[-1]
        lora1 = _split_params(tr.model)[0]
        out[mbs] = (row, {n: lora1[n] - lora0[n] for n in lora0})
    (a, da), (b, db) = out[0], out[4]
    assert a["train/fork_selected_frac"] == b["train/fork_selected_frac"] > 0
    assert b["train/grad_norm"] == pytest.approx(a["train/grad_norm"], rel=1e-4)
    assert b["train/loss"] == pytest.approx(a["train/loss"], rel=1e-4, abs=1e-7)
    for n in da:
        torch.testing.assert_close(db[n], da[n], rtol=1e-3, atol=1e-6)  # lr 1e-4: 1% of a step


def test_lora_dropout_never_reaches_the_old_policy_or_thr(tiny_model_dir, tmp_path):
    """With lora_dropout > 0 the old-policy log-probs and THR's hidden states come from a pass
    without dropout (eval mode), not from the noisy update pass."""
    from thrlab.train.model import completion_forward, lm_parts
    from thrlab.train.old_policy import frozen_pass
    from thrlab.core.reweight import thr_token_advantages

    torch.manual_seed(0)
    tr = _trainer(tiny_model_dir, tmp_path, steps=1, lora_dropout=0.5, thr_mode="thr",
                  thr_p=0.1, kl_coef=0.0)
    _randomise_lora(tr.model)  # LoRA B = 0 at init would hide the dropout on the LoRA branch
    want, inner = [], tr.update

    def spy(r, adv, acc):
        tr.model.eval()
        with torch.no_grad():
            o = completion_forward(tr.model, r.input_ids, r.attention_mask, r.prompt_len,
                                   tr.cfg.temperature, need_hidden=True)
            want.append(thr_token_advantages(tr.cfg, o["hidden"], r.tokens, r.mask, r.rewards,
                                             adv, lm_parts(tr.model)[1].weight,
                                             group_size=tr.cfg.group_size,
                                             temperature=tr.cfg.temperature)[1])
            again = frozen_pass(tr.model, r, tr.cfg, tr.micro)
        assert torch.equal(again["logp"], o["logp"])  # deterministic: no dropout
        tr.model.train()
        return inner(r, adv, acc)

    tr.update = spy
    row = tr.train(progress=False)[-1]
    assert row["time/old_logp"] > 0
    got = torch.cat(tr.old_policy.thr_parts)
    assert got.abs().max() > 0
    torch.testing.assert_close(got, want[0], rtol=1e-4, atol=1e-6 * float(want[0].abs().max()))


def _randomise_lora(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


@pytest.mark.parametrize("mode, mini_batches", [  # THR's logits reused on-policy, else streamed
    ("lowprob_mask", 1), ("entropy_mask", 2), ("random_mask", 1)])
def test_mask_controls_train_and_report_their_overlap_with_thrs_mask(tiny_model_dir, tmp_path,
                                                                     mode, mini_batches):
    tr = _trainer(tiny_model_dir, tmp_path, steps=1, thr_mode=mode, mini_batches=mini_batches)
    lora0, _ = _split_params(tr.model)
    row = tr.train_step()
    lora1, _ = _split_params(tr.model)
    assert row["train/opt_steps"] == mini_batches and row["train/skipped"] == 0
    assert 0 <= row["thr/control_overlap"] <= 1
    assert any(not torch.equal(lora0[n], lora1[n]) for n in lora0)
