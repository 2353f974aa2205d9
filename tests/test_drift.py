"""thrlab.train.drift: the mechanism metrics against naive recomputation (norms of differences of saved
adapters, the KL by a loop over prefixes and vocabulary), and the control they exist for: a loss
scale, which AdamW divides out, is recognised as plain GRPO, while a smaller lr is not."""
import math

import pytest
import torch

from thrlab.train.checkpoint import adapter_state
from thrlab.train.drift import kl_from_start
from thrlab.train import rollout

from test_trainer import _trainer


def _norm(a: dict, b: dict) -> float:
    return math.sqrt(sum(float(((a[n].double() - b[n].double()) ** 2).sum()) for n in a))


def test_update_norm_and_distance_are_norms_of_saved_adapter_differences(tiny_model_dir,
                                                                          tmp_path):
    # max_grad_norm small enough that clipping acts; one optimizer step per GRPO step
    tr = _trainer(tiny_model_dir, tmp_path, max_grad_norm=0.05)
    start = adapter_state(tr.model)
    rows, states = [], []
    for _ in range(2):
        rows.append(tr.train_step())
        states.append(adapter_state(tr.model))
    assert [r["train/opt_steps"] for r in rows] == [1, 1]
    assert rows[0]["train/update_norm"] == pytest.approx(_norm(states[0], start), rel=1e-5)
    assert rows[1]["train/update_norm"] == pytest.approx(_norm(states[1], states[0]), rel=1e-5)
    assert rows[1]["train/distance"] == pytest.approx(_norm(states[1], start), rel=1e-5)
    assert rows[1]["train/distance"] <= rows[0]["train/update_norm"] + rows[1]["train/update_norm"]
    for r in rows:  # clipped to max_grad_norm (1e-6 is clip_grad_norm_'s own epsilon)
        assert r["train/grad_norm"] > 0.05
        assert r["train/grad_norm_clipped"] == pytest.approx(0.05, rel=1e-4)


def test_a_loss_scale_is_plain_grpo_to_adamw_and_a_smaller_lr_is_not(tiny_model_dir, tmp_path):
    """grpo_mass_matched multiplies GRPO's loss by one scalar per batch (THR's advantage mass
    over GRPO's): its gradient has another scale, but AdamW's step does not. The distance
    metrics say so; a GRPO run at a quarter of the lr takes a quarter of the first step."""
    runs = {}
    for name, over in {"grpo": {}, "mass_matched": dict(thr_mode="mass_matched"),
                       "lr/4": dict(lr=2.5e-3)}.items():
        torch.manual_seed(0)  # the same LoRA initialisation and samples for each
        tr = _trainer(tiny_model_dir, tmp_path / name, steps=3, **over)
        runs[name] = [tr.train_step() for _ in range(3)]
    grpo, scaled, slow = (runs[k] for k in ("grpo", "mass_matched", "lr/4"))
    ratio = scaled[0]["train/grad_norm"] / grpo[0]["train/grad_norm"]
    print(f"first step: gradient norm x{ratio:.2f} of GRPO's; update norm GRPO "
          f"{grpo[0]['train/update_norm']:.4f}, mass-matched {scaled[0]['train/update_norm']:.4f}, "
          f"lr/4 {slow[0]['train/update_norm']:.4f}; distance after 3 steps "
          f"{grpo[-1]['train/distance']:.3f} / {scaled[-1]['train/distance']:.3f} / "
          f"{slow[-1]['train/distance']:.3f}")
    assert abs(math.log(ratio)) > math.log(1.1)  # another gradient scale
    # the first AdamW step is lr * g / (|g| + eps): the same for any scale of g, up to eps's
    # share in the smallest gradient entries (1e-4 to 1e-3 relative, seen)
    assert scaled[0]["train/update_norm"] == pytest.approx(grpo[0]["train/update_norm"], rel=1e-2)
    assert slow[0]["train/update_norm"] == pytest.approx(grpo[0]["train/update_norm"] / 4,
                                                         rel=1e-3)
    assert scaled[-1]["train/distance"] == pytest.approx(grpo[-1]["train/distance"], rel=0.1)
    assert slow[-1]["train/distance"] < 0.5 * grpo[-1]["train/distance"]


def _naive_kl(model, ids, att, prompt_len, mask, temperature):
    """Per response: (1/|y|) sum_t sum_v pi(v) log(pi(v) / pi_0(v)), each next-token distribution
    from its own forward pass over the unpadded prefix, the vocabulary summed in a loop."""
    out = []
    for b in range(len(ids)):
        row = ids[b][att[b].bool()]  # no padding: positions start at 0
        pad = int((att[b][:prompt_len] == 0).sum())
        total, n = 0.0, 0
        for t in range(ids.shape[1] - prompt_len):
            if not mask[b, t]:
                continue
            prefix = row[:prompt_len - pad + t][None]
            with torch.no_grad():
                p = torch.softmax(model(input_ids=prefix).logits[0, -1].double() / temperature, -1)
                with model.disable_adapter():
                    q = torch.softmax(model(input_ids=prefix).logits[0, -1].double() / temperature,
                                      -1)
            total += sum(float(p[v] * (torch.log(p[v]) - torch.log(q[v]))) for v in range(len(p))
                         if p[v] > 0)
            n += 1
        out.append(total / max(n, 1))
    return sum(out) / len(out)


def test_kl_from_start_is_the_naive_kl_and_zero_at_the_start(tiny_model_dir, tmp_path):
    tr = _trainer(tiny_model_dir, tmp_path)
    model, tok = tr.model, tr.tok
    model.eval()
    prompts = ["Q: 12*7+35=? A:", "Q: 1*2=? A:"]  # unequal: left padding
    torch.manual_seed(0)
    r = rollout.generate(model, tok, prompts, n=2, do_sample=True, temperature=0.7, top_p=1.0,
                         max_new_tokens=5)
    assert kl_from_start(model, r, 0.7) == 0.0  # fresh LoRA adds exactly 0
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move the adapters away from the start
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    got = kl_from_start(model, r, 0.7)
    want = _naive_kl(model, r.input_ids, r.attention_mask, r.prompt_len, r.mask, 0.7)
    assert got > 1e-3 and got == pytest.approx(want, rel=1e-4)


def test_matched_lr_inverts_a_measured_ladder():
    from thrlab.core.stats import matched_lr

    lrs = [5e-4 / d for d in (8, 4, 2, 1)]
    dist = [2.0 * lr ** 0.5 for lr in lrs]  # any growing curve; exact at the measured points
    assert matched_lr(lrs, dist, dist[1]) == pytest.approx(lrs[1])
    target = 2.0 * 1.5e-4 ** 0.5
    got = matched_lr(lrs, dist, target)
    assert lrs[1] < got < lrs[2]  # between its neighbours, log-linear between them
    w = (target - dist[1]) / (dist[2] - dist[1])
    assert math.log(got) == pytest.approx(math.log(lrs[1]) + w * math.log(lrs[2] / lrs[1]))
    with pytest.raises(ValueError, match="outside the measured range"):
        matched_lr(lrs, dist, 10.0)
    with pytest.raises(ValueError, match="do not grow"):
        matched_lr(lrs, [1.0, 0.5, 2.0, 3.0], 1.5)
