"""thrlab.paper.predictor against independent references: a materialised unembedding step, finite
differences of THR's first-order identity, a hand-written SGD step through the plain HF forward,
naive rank statistics, and the LLD loop replaying run_experiment's GRPO phase exactly."""
import itertools
import json

import numpy as np
import pytest
import torch

from thrlab.paper import predictor
from thrlab.train import probes
from thrlab.train.presets import from_preset
from thrlab.core.loss import group_advantages
from thrlab.core.thr import thr_for_batch
from tests.fixtures import limits


def _batch(G=4, P=2, T=5, H=8, V=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(P * G, T, H, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, V, (P * G, T), generator=g)
    mask = torch.ones(P * G, T, dtype=torch.bool)
    mask[1, 3:] = False
    mask[6, 1:] = False
    rewards = torch.tensor([1, 0, 0, 1, 0, 1, 1, 1.0])[:P * G]  # group 0 mixed, group 1 mixed
    W = torch.randn(V, H, generator=g, dtype=torch.float64) / 3
    return hidden, tokens, mask, rewards, W


def _c_naive(hidden, tokens, mask, rewards, W, temperature, rows):
    """sum over correct rows of the mean log-softmax of the sampled tokens (loops)."""
    total = 0.0
    for i in rows:
        if rewards[i] != 1:
            continue
        lp = [torch.log_softmax(hidden[i, k] @ W.T / temperature, -1)[tokens[i, k]]
              for k in range(hidden.shape[1]) if mask[i, k]]
        total += float(sum(lp)) / len(lp)
    return total


def test_correct_loglik_against_loop():
    hidden, tokens, mask, rewards, W = _batch()
    logp = torch.log_softmax(hidden @ W.T, -1).gather(-1, tokens[..., None])[..., 0]
    got = predictor.correct_loglik(logp, mask, rewards, 4)
    want = [_c_naive(hidden, tokens, mask, rewards, W, 1.0, range(s, s + 4)) for s in (0, 4)]
    assert got.tolist() == pytest.approx(want)


def test_unembedding_effects_equal_a_materialised_sgd_step():
    hidden, tokens, mask, rewards, W = _batch()
    adv = group_advantages(rewards, 4)
    kappa, eta = 0.7, 0.05  # a large step: exact, not first-order
    got = predictor.unembedding_effects(hidden, tokens, mask, rewards, adv, W, eta=eta,
                                        temperature=kappa, group_size=4)
    for j in range(8):
        group = range(j // 4 * 4, j // 4 * 4 + 4)
        Wv = W.clone().requires_grad_(True)
        lp = torch.log_softmax(hidden[j] @ Wv.T / kappa, -1).gather(1, tokens[j][:, None])[:, 0]
        (-adv[j] * (lp * mask[j]).sum()).backward()
        W1 = (W - eta * Wv.grad).detach()
        want = (_c_naive(hidden, tokens, mask, rewards, W1, kappa, group)
                - _c_naive(hidden, tokens, mask, rewards, W, kappa, group)) / eta
        assert float(got[j]) == pytest.approx(want, rel=1e-5, abs=1e-6), j


def test_thr_prediction_is_the_first_order_limit():
    """docs/method.md section 6 by finite differences: dC/eta -> (1/kappa^2)|A| sum THR (kappa the temperature) as eta -> 0."""
    hidden, tokens, mask, rewards, W = _batch(seed=1)
    adv = group_advantages(rewards, 4)
    kappa = 0.7
    thr = thr_for_batch(hidden, tokens, mask, rewards, 4, lm_head_weight=W, temperature=kappa)
    pred = predictor.predicted_effects(thr.double(), mask, adv.double(), kappa)
    errs = []
    for eta in (1e-2, 1e-3, 1e-4):
        exact = predictor.unembedding_effects(hidden, tokens, mask, rewards, adv, W, eta=eta,
                                              temperature=kappa, group_size=4).double()
        errs.append(float((exact - pred).abs().max() / pred.abs().max()))
    assert errs[-1] < 1e-3 and errs[0] > errs[1] > errs[2]  # error shrinks with the step


def _naive_rank(x):
    """Average ranks (1-based) by loops."""
    return [sum(1 for y in x if y < v) + (sum(1 for y in x if y == v) + 1) / 2 for v in x]


def test_spearman_against_naive_ranks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 5, 12).astype(float)  # ties
        y = x + rng.normal(size=12)
        rx, ry = _naive_rank(list(x)), _naive_rank(list(y))
        assert predictor.spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert predictor.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(predictor.spearman([1, 1, 1], [1, 2, 3]))


def test_bottom_k_overlap_against_sets():
    rng = np.random.default_rng(1)
    for _ in range(30):
        n, k = 9, int(rng.integers(1, 9))
        p, m = rng.normal(size=n), rng.normal(size=n)
        low_p = set(sorted(range(n), key=lambda i: p[i])[:k])
        low_m = set(sorted(range(n), key=lambda i: m[i])[:k])
        assert predictor.bottom_k_overlap(p, m, k) == len(low_p & low_m) / k
    # random rankings overlap by k/n on average (all permutations of a small case)
    n, k = 5, 2
    perms = list(itertools.permutations(range(n)))
    mean = np.mean([predictor.bottom_k_overlap(range(n), q, k) for q in perms])
    assert mean == pytest.approx(k / n)


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    from thrlab.train.model import load_policy
    from thrlab.train.rollout import generate
    from thrlab.tasks.benchmarks import format_prompt

    torch.manual_seed(0)
    cfg = from_preset("tiny", group_size=4)
    model, tok = load_policy(cfg, str(tiny_model_dir), torch.device("cpu"))
    for n, p in model.named_parameters():  # a non-zero LoRA B, as after some training
        if "lora_B" in n:
            p.data.normal_(0, 0.02)
    r = generate(model, tok, [format_prompt(q, "plain") for q in ("12*3=?", "7*8=?")], n=4,
                 do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=4)
    r.rewards = torch.tensor([1, 0, 0, 1, 0, 1, 1, 1.0])  # random model: rewards assigned
    model.train()
    return model, tok, r


def test_lora_step_effects_match_a_hand_step_and_restore_the_model(policy):
    model, tok, r = policy
    adv = group_advantages(r.rewards, 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    eta = 1e-3
    got = predictor.lora_step_effects(model, r, adv, eta=eta, temperature=1.0, group_size=4)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), f"{n} not restored"

    def c_of(rows):  # correct responses' mean log-lik. through the plain HF forward
        out = 0.0
        for i in rows:
            ids, att = r.input_ids[i:i + 1], r.attention_mask[i:i + 1]
            pos = (att.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[0]
            lp = torch.log_softmax(logits[r.prompt_len - 1:-1].float(), -1)
            lp = lp.gather(1, r.tokens[i][:, None])[:, 0][r.mask[i]]
            out += float(lp.mean())
        return out

    j = 1  # a wrong response of group 0, whose correct responses are rows 0 and 3
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        c0 = c_of([0, 3])
    opt = torch.optim.SGD(params, lr=eta)
    ids, att = r.input_ids[j:j + 1], r.attention_mask[j:j + 1]
    pos = (att.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=att, position_ids=pos).logits[0]
    lp = torch.log_softmax(logits[r.prompt_len - 1:-1].float(), -1)
    lp = lp.gather(1, r.tokens[j][:, None])[:, 0]
    opt.zero_grad()
    (-adv[j] * (lp * r.mask[j]).sum()).backward()
    opt.step()
    with torch.no_grad():
        want = (c_of([0, 3]) - c0) / eta
        for n, p in model.named_parameters():
            p.copy_(before[n])
    assert float(got[j]) == pytest.approx(want, rel=2e-2, abs=1e-3)
    assert (got.view(2, 4)[:, :] != 0).any()


def test_probe_set_keeps_one_correct_response_per_problem(policy, monkeypatch):
    model, tok, _ = policy
    from thrlab.tasks.benchmarks import Problem

    cfg = from_preset("tiny", group_size=4, max_new_tokens=3)
    problems = [Problem("p0", "1*1=?", "1", "test"), Problem("p1", "2*2=?", "4", "test")]

    def grade(texts, golds):  # a stand-in grader: every second sample of the first problem
        class R:
            rewards = [1.0 if i in (1, 3) else 0.0 for i in range(len(texts))]
        return R()

    probe = probes.probe_set(model, tok, cfg, problems, grade)
    assert len(probe.tokens) == 1 and probe.problem_index == [0]
    assert probes.probe_loglik(model, probe, 1.0) < 0


# The shipped cold start (cached in $THRLAB_CACHE, shared with the notebook tests): the probe
# needs a policy that answers some problems; 3 steps of 2 x 4 keep the run in seconds.
SMOKE = dict(steps=3, prompts_per_step=2, group_size=4, eval_limit=8, eval_samples=2,
             save_every=3, sft_control=False, threads=1)


def test_the_likelihood_probe_leaves_the_run_unchanged_and_survives_a_resume(tmp_path):
    """probe_every logs probe/loglik without touching the run's random state: the metrics equal a
    run without the probe; a resumed run probes the same responses from the same start."""
    from thrlab.train.experiment import run_experiment
    from thrlab.train.runs import RunDir

    cfg = from_preset("tiny", "thr_explore", **SMOKE)
    run_experiment(cfg, tmp_path / "plain", progress=False)
    probed = cfg.replace(probe_every=1, probe_prompts=16)
    run_experiment(probed, tmp_path / "probe", progress=False)
    ref, got = RunDir(tmp_path / "plain").metrics(), RunDir(tmp_path / "probe").metrics()
    drop = ("time/", "probe/")
    assert [{k: v for k, v in r.items() if not k.startswith(drop)} for r in got] == \
        [{k: v for k, v in r.items() if not k.startswith(drop)} for r in ref]
    assert [r["step"] for r in got if "probe/loglik" in r] == [1, 2, 3]
    kl = [r["probe/kl_start"] for r in got]  # KL from the start policy, logged with the probe
    assert min(kl) >= 0 and kl[-1] > 0
    probe = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert probe["size"] >= 1 and probe["start"] < 0
    # killed by SIGKILL in step 3 (after step 2's checkpoint), then resumed by the same command
    import os
    import sys

    conf = tmp_path / "probed.json"
    conf.write_text(probed.replace(save_every=2).to_json())
    env = dict(os.environ, THRLAB_FAILPOINT="update@3")
    cmd = [sys.executable, "-m", "thrlab", "train", "--config", str(conf), "--run-dir",
           str(tmp_path / "killed"), "--quiet"]
    assert limits.run(cmd, env=env, capture_output=True).returncode == -9
    env.pop("THRLAB_FAILPOINT")
    assert limits.run(cmd, env=env, capture_output=True).returncode == 0
    assert json.loads((tmp_path / "killed" / "probe.json").read_text()) == probe
    # every metric of the resumed run as without the kill: the probes, and the distance from
    # the start adapter, which the checkpoint keeps
    assert [{k: v for k, v in r.items() if not k.startswith("time/")}
            for r in RunDir(tmp_path / "killed").metrics()] == \
        [{k: v for k, v in r.items() if not k.startswith("time/")} for r in got]
