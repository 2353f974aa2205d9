"""Fault injection: SIGKILL at every failpoint then resume, NaN/inf steps, out-of-memory, empty and
truncated completions. Each test injects the fault into a real run and checks what survives."""
import json
import os
import sys

import pytest
import torch

from thrlab.train.faults import FAILPOINTS
from thrlab.train.runs import RunDir
from tests.fixtures import limits

# -- kill and resume -----------------------------------------------------------------------------
# A real CLI run (cold start, eval, GRPO, eval), shrunk to seconds; save_every=1 so every step
# writes a checkpoint that a kill can interrupt.
KILL_RUN = dict(sft_steps=30, sft_batch=32, steps=4, prompts_per_step=4, group_size=4,
                eval_limit=16, eval_samples=4, save_every=1, sft_control="false", lr=1e-2)
# Each entry kills one process; the next process resumes from what the kill left behind.
KILL_CHAIN = ["checkpoint@1",  # inside the first checkpoint write: no checkpoint yet, restart
              "generate@2",    # second rollout, before grading
              "update@2",      # after a backward, before the optimizer step
              "metrics@1",     # halfway through a metrics line (a torn line is left)
              "swap@2",        # between the renames of a checkpoint swap
              "adapter@1"]     # inside the final adapter save


def _train(root, failpoint=None):
    env = dict(os.environ)
    env.pop("THRLAB_FAILPOINT", None)
    if failpoint:
        env["THRLAB_FAILPOINT"] = failpoint
    args = [f"--set={k}={v}" for k, v in KILL_RUN.items()]
    return limits.run([sys.executable, "-m", "thrlab", "train", "--quiet", "--runs-root",
                       str(root), *args], capture_output=True, text=True, env=env)


def _only_run(root):
    (run,) = [p for p in root.iterdir() if p.is_dir()]
    return RunDir(run)


def _untimed(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


def test_kill_anywhere_then_resume_equals_uninterrupted(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("THRLAB_CACHE", str(tmp_path / "cache"))
    assert {fp.split("@")[0] for fp in KILL_CHAIN} == set(FAILPOINTS)  # every failpoint is hit
    ref = _train(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    for fp in KILL_CHAIN:
        out = _train(tmp_path / "killed", fp)
        assert out.returncode == -9, f"{fp}: expected SIGKILL, got {out.returncode}\n{out.stderr[-1500:]}"
        run = _only_run(tmp_path / "killed")
        assert not run.complete and not (run / "summary.json").exists(), fp
        for rows in (run.metrics(),):  # a torn line is never parsed as a row
            assert all("step" in r for r in rows)
    out = _train(tmp_path / "killed")
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = _only_run(tmp_path / "ref"), _only_run(tmp_path / "killed")
    assert a.path.name == b.path.name  # same config, same run id
    assert _untimed(b.metrics()) == _untimed(a.metrics())
    assert [r["step"] for r in b.metrics()] == [1, 2, 3, 4]
    for f in ("eval_before.json", "eval_after.json"):
        ea, eb = (json.loads((r / f).read_text()) for r in (a, b))
        ea.pop("wall_s"), eb.pop("wall_s")
        assert ea == eb, f
    wa = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not any(p.name.endswith((".tmp", ".old")) for p in b.path.iterdir())


class _Payload:
    """Pickles as a call to exec: what a malicious state.pt would carry."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def test_a_checkpoint_state_carrying_code_is_refused_without_running_it(tiny_model_dir, tmp_path):
    from thrlab.train.checkpoint import load_checkpoint
    from thrlab.core.errors import RunFolderError
    from tests.test_trainer import _trainer

    tr = _trainer(tiny_model_dir, tmp_path, steps=1)
    tr.train(progress=False)
    state = tr.run / "checkpoint" / "state.pt"
    assert torch.load(state, weights_only=True)["optimizer"]["state"]  # thrlab's own: plain data
    marker = tmp_path / "payload_ran"
    torch.save({"optimizer": _Payload(f"open({str(marker)!r}, 'w').close()")}, state)
    with pytest.raises(RunFolderError, match="state.pt is not a thrlab checkpoint state.*nothing "
                                             "in it was run"):
        load_checkpoint(_trainer(tiny_model_dir, tmp_path, steps=2), tr.run / "checkpoint")
    assert not marker.exists()


def test_failpoint_counts_hits_and_ignores_other_names(monkeypatch):
    from thrlab.train import faults

    monkeypatch.setenv("THRLAB_FAILPOINT", "update@3")
    monkeypatch.setattr(faults, "_hits", {})
    killed = []
    monkeypatch.setattr(faults.os, "kill", lambda pid, sig: killed.append(sig))
    for _ in range(2):
        faults.failpoint("update")
        faults.failpoint("generate")
    assert killed == []
    faults.failpoint("update")
    assert len(killed) == 1


# -- numerical faults ----------------------------------------------------------------------------
def _snapshot(tr):
    lora = {n: p.detach().clone() for n, p in tr.model.named_parameters() if p.requires_grad}
    opt = {i: {k: v.clone() for k, v in s.items()} for i, s in enumerate(tr.opt.state.values())}
    return lora, opt


def _same(a, b):
    return (all(torch.equal(a[0][n], b[0][n]) for n in a[0])
            and a[1].keys() == b[1].keys()
            and all(torch.equal(a[1][i][k], b[1][i][k]) for i in a[1] for k in a[1][i]))


def _poison_lm_head(tr, when):
    """Make the unembedding's output NaN whenever when() says so (an overflow in the logits)."""
    from thrlab.train.model import lm_parts

    return lm_parts(tr.model)[1].register_forward_hook(
        lambda mod, inp, out: out * float("nan") if when() else None)


@pytest.mark.parametrize("where", ["update", "generation"])
def test_nonfinite_step_is_skipped_counted_and_leaves_state_untouched(tiny_model_dir, tmp_path,
                                                                      where):
    from tests.test_trainer import _trainer

    tr = _trainer(tiny_model_dir, tmp_path, steps=3)
    tr.train_step()
    before = _snapshot(tr)
    grad_wanted = where == "update"
    hook = _poison_lm_head(tr, lambda: torch.is_grad_enabled() == grad_wanted)
    row = tr.train_step()
    hook.remove()
    assert row["train/nonfinite_skipped"] == 1 and row["train/skipped"] == 1
    assert _same(before, _snapshot(tr))  # adapter and optimizer state as before the bad step
    assert tr.state.nonfinite_steps == 1
    row = tr.train_step()  # training goes on
    assert row["train/nonfinite_skipped"] == 0 and not _same(before, _snapshot(tr))
    assert all(torch.isfinite(p).all() for p in tr.params)


def test_too_many_nonfinite_steps_stop_the_run_with_checkpoint_intact(tiny_model_dir, tmp_path):
    from thrlab.train.checkpoint import load_checkpoint
    from tests.test_trainer import _trainer

    tr = _trainer(tiny_model_dir, tmp_path, steps=4, max_nonfinite_steps=1)
    _poison_lm_head(tr, lambda: tr.step >= 1 and torch.is_grad_enabled())
    with pytest.raises(FloatingPointError, match="max_nonfinite_steps=1"):
        tr.train(progress=False)
    rows = tr.run.metrics()
    assert [r["train/nonfinite_skipped"] for r in rows] == [0, 1]  # the third step raised
    fresh = _trainer(tiny_model_dir, tmp_path, steps=4)
    assert load_checkpoint(fresh, tr.run / "checkpoint") and fresh.step == 2
    assert all(torch.isfinite(t).all() for t in fresh.params)


def test_oom_in_update_halves_micro_batch_and_matches_a_smaller_micro_batch(tiny_model_dir,
                                                                           tmp_path):
    from thrlab.train.model import lm_parts
    from tests.test_trainer import _split_params, _trainer

    def oom_over_4(mod, inp, out):  # on the embedding: its input is the micro-batch's rows
        if torch.is_grad_enabled() and inp[0].shape[0] > 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    torch.manual_seed(1)
    a = _trainer(tiny_model_dir, tmp_path / "a", micro_batch_size=0)
    lm_parts(a.model)[0].get_input_embeddings().register_forward_hook(oom_over_4)
    rows = a.train(progress=False)
    assert [r["train/micro_batch_size"] for r in rows] == [4, 4]  # 16 -> 8 -> 4
    torch.manual_seed(1)
    b = _trainer(tiny_model_dir, tmp_path / "b", micro_batch_size=4)
    b.train(progress=False)
    la, lb = _split_params(a.model)[0], _split_params(b.model)[0]
    assert all(torch.equal(la[n], lb[n]) for n in la)

    c = _trainer(tiny_model_dir, tmp_path / "c", oom_halve_micro_batch=False)
    lm_parts(c.model)[0].get_input_embeddings().register_forward_hook(oom_over_4)
    with pytest.raises(RuntimeError, match="out of memory during update.*micro_batch_size"):
        c.train_step()
    # KL-Cov / Clip-Cov select per micro-batch: halving would change the algorithm mid-run
    d = _trainer(tiny_model_dir, tmp_path / "d", cov_mode="clip_cov", mini_batches=2)
    lm_parts(d.model)[0].get_input_embeddings().register_forward_hook(oom_over_4)
    with pytest.raises(RuntimeError, match="selects its tokens per micro-batch"):
        d.train_step()


def test_oom_in_generation_names_the_knobs(tiny_model_dir, tmp_path):
    from thrlab.train.model import lm_parts
    from tests.test_trainer import _trainer

    def oom(mod, inp, out):
        if not torch.is_grad_enabled():
            raise torch.OutOfMemoryError("CUDA out of memory.")

    tr = _trainer(tiny_model_dir, tmp_path)
    lm_parts(tr.model)[1].register_forward_hook(oom)
    with pytest.raises(RuntimeError, match="during generation.*max_new_tokens.*group_size"):
        tr.train_step()


# -- degenerate completions ----------------------------------------------------------------------
def test_completions_at_the_length_limit_train_finitely(tiny_model_dir, tmp_path):
    from tests.test_trainer import _trainer

    tr = _trainer(tiny_model_dir, tmp_path, max_new_tokens=1, thr_mode="thr", thr_p=0.1)
    rows = tr.train(progress=False)
    assert rows[0]["train/truncated_frac"] > 0.9
    assert all(r["train/nonfinite_skipped"] == 0 for r in rows)
    assert all(torch.isfinite(p).all() for p in tr.params)


def test_empty_completion_rows_contribute_nothing_and_stay_finite():
    from thrlab.train.config import LossConfig
    from thrlab.core.loss import aggregate, group_advantages, policy_loss
    from thrlab.core.thr import thr_for_batch

    g = torch.Generator().manual_seed(0)
    B, T, H, V = 4, 5, 8, 11
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1] = False  # a zero-length completion (correct) ...
    mask[2] = False  # ... and a zero-length wrong one
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    adv = group_advantages(rewards, B)
    logp = torch.randn(B, T, generator=g).requires_grad_()
    loss_tok, _ = policy_loss(logp, logp.detach(), adv[:, None].expand(B, T), mask,
                              LossConfig(kl_coef=0.0))
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        loss = aggregate(loss_tok, mask, mode, n_tokens=float(mask.sum()), n_seqs=B, max_len=T)
        (grad,) = torch.autograd.grad(loss, logp, retain_graph=True)
        assert torch.isfinite(loss) and torch.all(grad[1:3] == 0)
    thr = thr_for_batch(torch.randn(B, T, H, generator=g), torch.randint(V, (B, T), generator=g),
                        mask, rewards, B, logits=torch.randn(B, T, V, generator=g))
    assert torch.isfinite(thr).all() and torch.all(thr[1:3] == 0)


# -- verifier faults reach the metrics and training goes on -------------------------------------
def test_verifier_timeouts_and_errors_are_counted_per_step_and_training_continues(
        tiny_model_dir, tmp_path):
    from thrlab.tasks.rewards import GradeResult
    from tests.test_trainer import ParityGrade, _trainer

    def flaky(texts, golds):  # the pool's statuses for a verifier that hangs / raises on some items
        ok = ParityGrade()(texts, golds).status
        return GradeResult.from_status(["timeout" if i % 5 == 0 else "error" if i % 7 == 0 else s
                                        for i, s in enumerate(ok)])

    tr = _trainer(tiny_model_dir, tmp_path)
    tr.grade_fn = flaky
    rows = tr.train(progress=False)
    n = 4 * 4
    assert [r["reward/timeouts"] for r in rows] == [len(range(0, n, 5))] * 2
    n_err = sum(i % 7 == 0 and i % 5 != 0 for i in range(n))
    assert [r["reward/errors"] for r in rows] == [n_err] * 2
    assert all(r["train/skipped"] == 0 for r in rows)
