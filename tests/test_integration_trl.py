"""THR inside TRL's GRPOTrainer (thrlab.integrations.trl) against independent references.

- THR and reweighted advantages equal thrlab's own trainer's on the same fixed batch;
- thr_p = 0 without the mask gives plain TRL's loss and gradients, bit for bit;
- two gloo processes (one group straddling the ranks) log the one-process THR, row for row;
- the config mapping, the version pin, the group layout and the stats merge against brute force.
"""
import json
import math
import os
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")

from tests.fixtures import trl_data  # noqa: E402
from thrlab.train.config import THRConfig  # noqa: E402
from thrlab.train.presets import from_preset  # noqa: E402
from thrlab.integrations import groups  # noqa: E402
from thrlab.integrations.trl import (LOSS_TYPES, THRGRPOTrainer, check_trl_version,  # noqa: E402
                                     grpo_config)
from thrlab.train.model import load_policy  # noqa: E402
from thrlab.core.reweight import thr_stats  # noqa: E402
from tests.fixtures import limits

ROOT = Path(__file__).resolve().parents[1]
G, P = 4, 3  # 3 prompts x 4 completions: small enough for seconds, enough for mixed groups
# rollout_func (TRL's hook for custom generation, here: the fixed batch) is marked experimental
pytestmark = pytest.mark.filterwarnings("ignore:You are using 'rollout_func'")


@pytest.fixture
def one_thread():
    # 2 busy cores: OpenMP threads spinning against other processes make a tiny forward 50x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(method="thr_exploit", **over):
    return from_preset("tiny", method, **dict(dict(group_size=G, prompts_per_step=P,
                                                   max_new_tokens=8, steps=2, device="cpu"),
                                              **over))


def _policy(cfg, model_dir):
    torch.manual_seed(0)
    model, tok = load_policy(cfg, str(model_dir), torch.device("cpu"))
    with torch.no_grad():  # LoRA B starts at 0; make the adapter matter (KL != 0, A gets grads)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return model, tok


def _trl(cls, cfg, model, tok, tmp_path, **kw):
    args = grpo_config(cfg, str(tmp_path / "trl"), report_to="none", save_strategy="no")
    if cls is THRGRPOTrainer:
        kw["thr_config"] = cfg
    return cls(model=model, reward_funcs=trl_data.exact_reward, args=args,
               train_dataset=trl_data.dataset(12), processing_class=tok,
               rollout_func=trl_data.make_rollout_func(tok, G), **kw)


def _fixed_batch(tok):
    """The batch TRL should see, built here: (rows, prompt ids, completion ids, mask, rewards)."""
    ds = trl_data.dataset(12)
    rows = [ds[i] for i in range(P) for _ in range(G)]  # what RepeatSampler hands one process
    comps = [trl_data.completion(r["prompt"], j % G) for j, r in enumerate(rows)]
    c_ids = [tok(t, add_special_tokens=False).input_ids + ([tok.eos_token_id] if e else [])
             for t, e in comps]
    T = max(map(len, c_ids))
    tokens = torch.tensor([c + [tok.pad_token_id] * (T - len(c)) for c in c_ids])  # (B, T)
    mask = torch.tensor([[k < len(c) for k in range(T)] for c in c_ids])  # (B, T)
    prompt = torch.tensor([tok(r["prompt"], add_special_tokens=False).input_ids for r in rows])
    rewards = torch.tensor([float(int(t) == int(r["answer"])) for (t, _), r in zip(comps, rows)])
    return rows, prompt, tokens, mask, rewards


def _trl_advantages(rewards):
    """TRL 1.16's GRPO advantage, by hand: (r - mean) / (sample std + 1e-4) per group."""
    out = []
    for g in range(0, len(rewards), G):
        r = rewards[g:g + G].tolist()
        out += [(x - statistics.mean(r)) / (statistics.stdev(r) + 1e-4) for x in r]
    return torch.tensor(out)


def test_trl_version_range():
    assert check_trl_version("1.16.0") == "1.16.0" and check_trl_version("1.16.9")
    for bad in ("1.15.2", "1.17.0", "2.0.0"):
        with pytest.raises(ImportError, match=r"trl>=1.16,<1.17"):
            check_trl_version(bad)


def test_grpo_config_maps_every_result_changing_field(tmp_path):
    cfg = _cfg(prompts_per_step=4, mini_batches=2, micro_batch_size=2, epochs=2, lr=1e-4,
               clip_eps_high=0.28, kl_coef=0.0, loss_agg="seq_mean_token_sum_norm",
               adv_std_norm=False, temperature=0.7, top_p=0.9)
    a = grpo_config(cfg, str(tmp_path), world_size=1, report_to="none")
    # 16 rows / 2 mini-batches = 8 rows per optimizer step = 4 micro-batches of 2
    expect = dict(num_generations=4, generation_batch_size=16, per_device_train_batch_size=2,
                  gradient_accumulation_steps=4, steps_per_generation=8, num_iterations=2,
                  max_steps=2 * 2 * 2, temperature=0.7, top_p=0.9, top_k=0,
                  max_completion_length=8, epsilon=0.2, epsilon_high=0.28, beta=0.0,
                  loss_type="dr_grpo", scale_rewards="none", learning_rate=1e-4,
                  lr_scheduler_type="constant", mask_truncated_completions=False,
                  importance_sampling_level="token", disable_dropout=True, bf16=False)
    got = {k: getattr(a, k) for k in expect}
    got["lr_scheduler_type"] = str(getattr(a.lr_scheduler_type, "value", a.lr_scheduler_type))
    assert got == expect
    assert set(LOSS_TYPES) == {"token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"}
    with pytest.raises(ValueError, match="come from the thrlab Config"):
        grpo_config(cfg, str(tmp_path), world_size=1, beta=0.04)
    with pytest.raises(ValueError, match="dynamic_sampling"):
        grpo_config(_cfg(dynamic_sampling=True), str(tmp_path), world_size=1)
    with pytest.raises(ValueError, match="split into 5 ranks"):
        grpo_config(cfg, str(tmp_path), world_size=5)


@pytest.mark.parametrize("W,b,G_", [(2, 6, 4), (3, 4, 6), (4, 2, 4), (2, 8, 4), (4, 6, 8)])
def test_group_layout_against_brute_force(W, b, G_):
    owners = {}
    for rank in range(W):
        lay = groups.GroupLayout(rank, b, G_)
        rows = range(rank * b, (rank + 1) * b)
        assert lay.groups() == sorted({r // G_ for r in rows})
        assert lay.shared() == [g for g in lay.groups()
                                if not set(range(g * G_, (g + 1) * G_)) <= set(rows)]
        for g in lay.groups():
            owners.setdefault(g, set()).add(lay.owner(g))
            assert (lay.owner(g) == rank) == (g * G_ in rows)
    assert all(len(o) == 1 for o in owners.values())  # every group counted by one rank
    assert sorted(owners) == list(range(W * b // G_))


def test_merge_thr_stats_equals_one_process():
    torch.manual_seed(1)
    thr = torch.randn(12, 7)  # 3 groups of 4
    mask = torch.rand(12, 7) > 0.3
    adv = torch.randn(12)
    adv_tok = adv[:, None] * mask * torch.rand(12, 7)
    tau = torch.tensor([0.1, 0.5, 0.9]).repeat_interleave(4)[:, None]  # (B, 1) per group
    whole = thr_stats(thr, mask, tau, adv, adv_tok)
    parts = [(float(mask[s].sum()), float(len(range(*s.indices(12)))),
              thr_stats(thr[s], mask[s], tau[s], adv[s], adv_tok[s]))
             for s in (slice(0, 8), slice(8, 12))]  # rank 0 owns groups 0-1, rank 1 group 2
    merged = groups.merge_thr_stats(parts + [(0.0, 0.0, {})])  # a rank that owns no group
    assert merged.keys() == whole.keys()
    for k in whole:
        assert math.isclose(merged[k], whole[k], rel_tol=1e-6, abs_tol=1e-7), k


@pytest.mark.parametrize("over", [
    dict(thr_p=0.1),                                                # exploit, NTHR tau, mask
    dict(thr_p=-0.1, thr_tau_mode="quantile", thr_vocab="group"),   # explore, quantile tau
    dict(thr_mode="nthr", thr_advantage_weighted=True),             # NTHR, A_j-weighted THR
])
def test_thr_matches_thrlab_trainer(tiny_model_dir, tmp_path, one_thread, over):
    from thrlab.train.old_policy import frozen_pass
    from thrlab.train.rollout import Rollout
    from thrlab.train.runs import RunDir
    from thrlab.train.trainer import GRPOTrainer

    cfg = _cfg(**over)
    model, tok = _policy(cfg, tiny_model_dir)
    tr = _trl(THRGRPOTrainer, cfg, model, tok, tmp_path)
    rows, prompt, tokens, mask, rewards = _fixed_batch(tok)
    tr.model.train()
    out = tr._generate_and_score_completions(rows)
    assert torch.equal(out["prompt_ids"], prompt) and torch.equal(out["completion_ids"], tokens)
    assert torch.equal(out["completion_mask"].bool(), mask)
    assert 0 < rewards.mean() < 1  # mixed groups and one all-correct group (a % 7 == 0)

    # thrlab's own trainer on the same inputs: its old-policy pass and its token_advantages
    ids = torch.cat([prompt, tokens], 1)
    r = Rollout(ids, torch.cat([torch.ones_like(prompt), mask.long()], 1), prompt.shape[1],
                tokens, mask, torch.zeros(len(rows), dtype=torch.bool), [], list(range(len(rows))),
                rewards)
    ref = GRPOTrainer(cfg, model, tok, [], RunDir(tmp_path / "run"), grade_fn=None)
    hidden = frozen_pass(ref.model, r, cfg, ref.micro, need_hidden=True)["hidden"]
    adv_tok, stats, thr = ref.token_advantages(hidden, tokens, mask, rewards,
                                               _trl_advantages(rewards))

    torch.testing.assert_close(tr.thr_last, thr, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["advantages"], adv_tok, rtol=1e-5, atol=1e-6)
    plain = _trl_advantages(rewards)[:, None] * mask
    assert tr.thr_last.abs().sum() > 0 and not torch.allclose(out["advantages"], plain)
    logged = {k: v[-1] for k, v in tr._metrics["train"].items() if k.startswith("thr/")}
    assert logged.keys() == {k for k in stats if k.startswith("thr/")}
    for k, v in logged.items():
        assert math.isclose(v, stats[k], rel_tol=1e-5, abs_tol=1e-6), k


def test_thr_pass_reuses_trl_old_policy_pass(tiny_model_dir, tmp_path, one_thread):
    """THR adds one backbone pass only when TRL runs no old-policy pass of its own."""
    from trl import GRPOTrainer

    from thrlab.train.model import lm_parts

    thr = {}
    for mini_batches in (1, 2):  # 2 optimizer steps per generation: TRL scores the old policy
        cfg = _cfg(mini_batches=mini_batches)
        rows = {}
        for cls in (GRPOTrainer, THRGRPOTrainer):
            model, tok = _policy(cfg, tiny_model_dir)
            tr = _trl(cls, cfg, model, tok, tmp_path)
            seen = []  # rows of every backbone call (the fixed batch: no generation calls)
            lm_parts(model)[0].register_forward_hook(lambda m, i, o: seen.append(len(o[0])))
            tr.model.train()
            tr._generate_and_score_completions(_fixed_batch(tok)[0])
            rows[cls] = sum(seen)
        extra = rows[THRGRPOTrainer] - rows[GRPOTrainer]
        assert extra == (G * P if mini_batches == 1 else 0), (mini_batches, rows)
        thr[mini_batches] = tr.thr_last
    # the captured states are TRL's forward in chunks of 6 rows, ours in one chunk of 12
    torch.testing.assert_close(thr[1], thr[2], rtol=1e-4, atol=1e-3)


def test_loud_failures(tiny_model_dir, tmp_path, one_thread):
    cfg = _cfg()
    model, tok = _policy(cfg, tiny_model_dir)
    with pytest.raises(ValueError, match="thr_mode is 'off'"):
        _trl(THRGRPOTrainer, cfg.replace(thr_mode="off"), model, tok, tmp_path)
    args = grpo_config(cfg, str(tmp_path / "trl"), report_to="none")
    with pytest.raises(ValueError, match="temperature"):  # TRL would sample at 1.0, THR at 0.7
        THRGRPOTrainer(model=model, reward_funcs=trl_data.exact_reward, args=args,
                       train_dataset=trl_data.dataset(12), processing_class=tok,
                       thr_config=cfg.replace(temperature=0.7))
    # a THRConfig alone carries no group size or temperature: THR uses TRL's
    model, tok = _policy(cfg, tiny_model_dir)  # a fresh one: TRL added a "ref" adapter above
    alone = THRGRPOTrainer(model=model, reward_funcs=trl_data.exact_reward, args=args,
                           train_dataset=trl_data.dataset(12), processing_class=tok,
                           thr_config=THRConfig(thr_mode="thr", thr_p=0.1))
    assert alone.thr_config.thr_p == 0.1

    def half(completions, **_):
        return [0.5] * len(completions)

    model, tok = _policy(cfg, tiny_model_dir)
    tr = THRGRPOTrainer(model=model, reward_funcs=half, args=args, processing_class=tok,
                        train_dataset=trl_data.dataset(12), thr_config=cfg,
                        rollout_func=trl_data.make_rollout_func(tok, G))
    tr.model.train()
    with pytest.raises(ValueError, match="binary 0/1 rewards"):
        tr._generate_and_score_completions(_fixed_batch(tok)[0])


def test_p0_without_mask_is_plain_trl(tiny_model_dir, tmp_path, one_thread):
    from trl import GRPOTrainer

    cfg = _cfg("thr_p0", thr_mask=False)  # kl_coef 1e-4: the reference pass and KL term too
    losses, grads = [], []
    for cls in (GRPOTrainer, THRGRPOTrainer):
        # one model each: TRL adds a frozen "ref" copy of a passed-in adapter to the model
        model, tok = _policy(cfg, tiny_model_dir)
        tr = _trl(cls, cfg, model, tok, tmp_path)
        tr.model.train()
        tr.current_gradient_accumulation_steps = 1  # set by TRL's training loop
        out = tr._generate_and_score_completions(_fixed_batch(tok)[0])
        loss = tr.compute_loss(tr.model, out)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert out["advantages"].ndim == 2  # the THR path really handed TRL per-token advantages
    assert losses[0] != 0 and torch.equal(losses[0], losses[1])
    assert grads[0].keys() == grads[1].keys()
    assert all(torch.equal(grads[0][n], grads[1][n]) for n in grads[0])


def test_thrlab_loss_and_gradients_equal_trls(tiny_model_dir, tmp_path, one_thread):
    """thrlab's own loss (completion_forward + policy_loss + aggregate, the k3 KL to the
    adapters-disabled reference) and TRL 1.16's GRPO loss on one batch with the same advantages
    and adapters: the two algorithms coincide (loss to 1e-5, LoRA gradients to 1e-4 of the
    largest)."""
    from trl import GRPOTrainer

    from thrlab.core.loss import aggregate, policy_loss
    from thrlab.train.model import completion_forward, reference_policy

    # a KL term large enough to matter; 16-bit base weights, since TRL 1.16 casts the adapters
    # of a quantized model to bf16 (grpo_trainer.py, after QLoRA) where thrlab keeps fp32 on CPU
    cfg = _cfg("grpo", kl_coef=0.05, load_in_4bit=False)
    losses, grads = {}, {}
    for name in ("thrlab", "trl"):
        model, tok = _policy(cfg, tiny_model_dir)  # the same seeded adapters in both
        tr = _trl(GRPOTrainer, cfg, model, tok, tmp_path / name)
        tr.model.train()
        tr.current_gradient_accumulation_steps = 1  # set by TRL's training loop
        out = tr._generate_and_score_completions(_fixed_batch(tok)[0])
        ids = torch.cat([out["prompt_ids"], out["completion_ids"]], 1)
        att = torch.cat([out["prompt_mask"], out["completion_mask"]], 1)
        mask, Lp = out["completion_mask"].bool(), out["prompt_ids"].shape[1]
        # one reference for both: the adapters disabled (TRL's own would be a frozen copy of
        # the adapter it was handed, not the base model)
        with torch.no_grad(), reference_policy(model):
            ref = completion_forward(model, ids, att, Lp, cfg.temperature)["logp"]
        if name == "trl":
            loss = tr.compute_loss(tr.model, dict(out, ref_per_token_logps=ref))
        else:
            o = completion_forward(model, ids, att, Lp, cfg.temperature)
            lt, _ = policy_loss(o["logp"], o["logp"].detach(), out["advantages"][:, None] * mask,
                                mask, cfg, ref_logp=ref)
            loss = aggregate(lt, mask, cfg.loss_agg, n_tokens=float(mask.sum()),
                             n_seqs=float(len(mask)), max_len=cfg.max_new_tokens)
        loss.backward()
        losses[name] = float(loss.detach())
        grads[name] = {n: p.grad for n, p in model.named_parameters()
                       if p.requires_grad and "ref" not in n}
    assert losses["trl"] != 0
    assert losses["thrlab"] == pytest.approx(losses["trl"], rel=1e-5)
    assert grads["thrlab"].keys() == grads["trl"].keys()
    top = max(float(g.abs().max()) for g in grads["trl"].values())
    assert top > 0
    for n, g in grads["trl"].items():
        assert float((grads["thrlab"][n] - g).abs().max()) <= 1e-4 * top, n


def test_trl_sampling_steps_train_lora_only(tiny_model_dir, tmp_path, one_thread):
    """Two steps with TRL's own sampling (no rollout_func) through the example's entry point."""
    sys.path.insert(0, str(ROOT / "examples"))
    import trl_thr_grpo

    def even_length(completions, **_):  # a random model hits it half the time: mixed groups
        return [float(len(c) % 2 == 0) for c in completions]

    cfg = _cfg(model=str(tiny_model_dir), lr=1e-2, sft_control=False)
    model, tok = _policy(cfg, tiny_model_dir)
    lora0 = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    base0 = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    tr = THRGRPOTrainer(model=model, reward_funcs=even_length, args=grpo_config(
        cfg, str(tmp_path / "trl"), report_to="none", save_strategy="no", logging_steps=1,
        dataloader_pin_memory=False),
        train_dataset=trl_thr_grpo.dataset(cfg, tok), processing_class=tok, thr_config=cfg)
    tr.train()
    steps = [h for h in tr.state.log_history if "thr/frac_kept" in h]
    assert len(steps) == 2 and all(math.isfinite(h["thr/abs_mean"]) for h in steps)
    assert any(h["thr/abs_mean"] > 0 for h in steps) and all(h["time/thr"] > 0 for h in steps)
    lora1 = dict(model.named_parameters())
    assert sum(not torch.equal(lora0[n], lora1[n]) for n in lora0) >= len(lora0) // 2
    assert all(torch.equal(base0[n], lora1[n]) for n in base0)  # 4-bit base untouched

    # the example script end to end (exact-answer reward: a random model scores 0, THR is 0)
    res = trl_thr_grpo.main(["--preset", "tiny", "--method", "thr_explore", "--output-dir",
                             str(tmp_path / "ex"), "--set", f"model={tiny_model_dir}",
                             "--set", "steps=1", "--set", f"group_size={G}", "--set",
                             f"prompts_per_step={P}", "--set", "device=cpu"])
    assert (tmp_path / "ex" / "adapter" / "adapter_model.safetensors").exists()
    assert any("thr/tau" in h for h in res["log_history"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_log_one_process_thr(tiny_model_dir, tmp_path):
    """accelerate launch, 2 gloo processes x 6 rows (group 1 straddles) vs 1 process x 12 rows."""
    script = str(ROOT / "tests" / "fixtures" / "trl_dp_run.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", TRL_EXPERIMENTAL_SILENCE="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    # --multi_gpu picks torchrun-style workers; use_cpu=True in the script makes them gloo
    # MULTI_CPU (accelerate 1.15 sends `--cpu` with several processes to mpirun instead)
    cmds = {"one": [sys.executable, script, str(tiny_model_dir), str(tmp_path / "one")],
            "two": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                    "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                    "--main_process_port", str(_free_port()), script, str(tiny_model_dir),
                    str(tmp_path / "two")]}
    procs = {k: subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True) for k, c in cmds.items()}
    for k, p in procs.items():
        log = limits.communicate(p)[0]
        assert p.returncode == 0, f"{k} failed:\n{log[-4000:]}"
    hist = {k: [h for h in json.loads((tmp_path / k / "log_history.json").read_text())
                if "thr/mean" in h] for k in cmds}
    assert len(hist["one"]) == len(hist["two"]) == 2
    one = json.loads((tmp_path / "one" / "thr_rank0.json").read_text())
    two = [json.loads((tmp_path / "two" / f"thr_rank{r}.json").read_text()) for r in (0, 1)]
    for step, (h1, h2) in enumerate(zip(hist["one"], hist["two"])):
        assert h1["thr/abs_mean"] > 0 and h1["frac_reward_zero_std"] < 1  # THR had work to do
        # Step 1: same weights, so the same THR up to float summation order. Step 2 follows one
        # DDP update, whose allreduce rounding Adam amplifies (lr * sign(g) where g ~ 0): THR
        # agrees to ~1e-3, and a token at the |THR| = tau boundary may flip, moving a fraction
        # by 1/N and the kept advantage mass by one token's |A'| <= 1.5 * 1.1 (G = 4, p = 0.1).
        rtol = 1e-5 if step == 0 else 1e-2
        one_token = {"thr/adv_mass_after": 1.7}
        one_token.update({k: 1.01 / round(h1["completions/mean_length"] * G * P)
                          for k in h1 if k.startswith("thr/frac")})
        for k in (k for k in h1 if k.startswith("thr/")):
            tol = dict(rel_tol=rtol, abs_tol=1e-6) if step == 0 or k not in one_token else \
                dict(rel_tol=0, abs_tol=one_token[k])
            assert math.isclose(h1[k], h2[k], **tol), (step, k, h1[k], h2[k])
        rows1, rows2 = one[step], two[0][step] + two[1][step]  # rank 0's 6 rows, then rank 1's
        T = max(len(x) for x in rows1 + rows2)
        a = torch.tensor([x + [0.0] * (T - len(x)) for x in rows1])  # (12, T)
        b = torch.tensor([x + [0.0] * (T - len(x)) for x in rows2])
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(a.abs().max()))
