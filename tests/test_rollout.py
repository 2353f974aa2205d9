"""Completion masks and batched generation on the tiny model."""
import torch

from thrlab.config import from_preset
from thrlab.model import load_policy
from thrlab.rollout import Rollout, cat_rollouts, completion_mask, generate


def test_completion_mask_against_loop():
    eos = [1, 7]
    torch.manual_seed(0)
    tokens = torch.randint(0, 9, (50, 6))
    mask, trunc = completion_mask(tokens, eos)
    for b in range(50):
        stop = next((t for t in range(6) if tokens[b, t].item() in eos), None)
        want = [t <= stop if stop is not None else True for t in range(6)]
        assert mask[b].tolist() == want
        assert trunc[b].item() == (stop is None)


def test_generate_rows_are_prompt_major_and_masked(tiny_model_dir):
    model, tok = load_policy(from_preset("tiny"), str(tiny_model_dir), torch.device("cpu"))
    prompts = ["Q: 12*7+35=? A:", "Q: 1*2+3=? A:", "Q: 99*9+99=? A:"]
    r = generate(model, tok, prompts, n=4, do_sample=True, temperature=1.0, top_p=1.0,
                 max_new_tokens=5, batch_size=2)  # two generate() calls, re-padded together
    assert r.tokens.shape[0] == 12 and r.problem_index == [0] * 4 + [1] * 4 + [2] * 4
    assert (r.tokens[~r.mask] == tok.pad_token_id).all()
    assert torch.equal(r.attention_mask[:, r.prompt_len:].bool(), r.mask)
    for b in range(12):  # the prompt sits right-aligned before prompt_len
        p = prompts[r.problem_index[b]]
        ids = r.input_ids[b, :r.prompt_len][r.attention_mask[b, :r.prompt_len].bool()]
        assert tok.decode(ids) == p
        assert r.texts[b] == tok.decode(r.tokens[b][r.mask[b]], skip_special_tokens=True)
    greedy = generate(model, tok, prompts, n=2, do_sample=False, temperature=1.0, top_p=1.0,
                      max_new_tokens=5)
    assert torch.equal(greedy.tokens[0], greedy.tokens[1])  # greedy is deterministic


def test_select_and_cat_keep_rows_consistent():
    def ro(lp, t, v):
        return Rollout(torch.full((2, lp + t), v), torch.ones(2, lp + t, dtype=torch.long), lp,
                       torch.full((2, t), v), torch.ones(2, t, dtype=torch.bool),
                       torch.zeros(2, dtype=torch.bool), ["a", "b"], [0, 1],
                       torch.tensor([1.0, 0.0]))
    c = cat_rollouts([ro(3, 2, 5), ro(4, 3, 6)], pad_id=0)
    assert c.input_ids.shape == (4, 7) and c.prompt_len == 4
    assert c.attention_mask[:2, 0].tolist() == [0, 0] and c.mask[:2, 2].tolist() == [False] * 2
    assert c.select([1, 2]).texts == ["b", "a"]
