"""Completion masks and batched generation on the tiny model."""
import logging

import pytest
import torch

from thrlab.train.presets import from_preset
from thrlab.train.model import load_policy
from thrlab.train.rollout import Rollout, cat_rollouts, completion_mask, generate, stop_token_ids


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


def _argmax_loop(model, tok, prompt: str, max_new_tokens: int, eos: list[int]) -> list[int]:
    """Greedy decoding the naive way: the whole sequence through the model, argmax, repeat."""
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            if nxt in eos:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return out


PENALISED = dict(repetition_penalty=50.0, no_repeat_ngram_size=1, top_k=3)


@pytest.mark.parametrize("engine", ["auto", "generate"])
def test_checkpoint_generation_config_does_not_change_sampling(tiny_model_dir, engine, caplog):
    """A checkpoint asking for penalties (Qwen2.5/Llama-3 Instruct ship such configs) is still
    decoded with the plain policy the loss assumes: greedy = the argmax loop, on both engines."""
    model, tok = load_policy(from_preset("tiny"), str(tiny_model_dir), torch.device("cpu"))
    lm = model.get_base_model()
    for k, v in PENALISED.items():
        setattr(lm.generation_config, k, v)
    prompts = ["Q: 12*7+35=? A:", "Q: 1*2=? A:", "Q: 99*9+99=? A:"]
    with caplog.at_level(logging.WARNING, logger="thrlab.train.rollout"):
        r = generate(model, tok, prompts, n=1, do_sample=False, temperature=1.0, top_p=1.0,
                     max_new_tokens=6, engine=engine)
        generate(model, tok, prompts[:1], n=2, do_sample=True, temperature=1.0, top_p=1.0,
                 max_new_tokens=3, engine=engine)
    model.eval()
    for b, p in enumerate(prompts):
        want = _argmax_loop(model, tok, p, 6, [tok.eos_token_id])
        assert r.tokens[b][r.mask[b]].tolist() == want, f"prompt {b} decoded with penalties"
    warned = [m for m in caplog.messages if "repetition_penalty" in m]
    assert len(warned) == 1 and "no_repeat_ngram_size" in warned[0]  # once per model
    assert lm.generation_config.repetition_penalty == 50.0  # the checkpoint's config is restored


def test_stop_tokens_include_the_checkpoint_eos_list(tiny_model_dir):
    """Llama-3.x Instruct lists several EOS ids in generation_config; each one ends a row."""
    model, tok = load_policy(from_preset("tiny"), str(tiny_model_dir), torch.device("cpu"))
    lm = model.get_base_model()
    assert stop_token_ids(tok, lm) == [tok.eos_token_id]
    greedy = generate(model, tok, ["Q: 1*2=? A:"], n=1, do_sample=False, temperature=1.0,
                      top_p=1.0, max_new_tokens=6).tokens[0].tolist()
    # a token the greedy row produces ends it there (the first id that is new after position 0)
    k = next((i for i in range(1, len(greedy)) if greedy[i] not in greedy[:i]), 0)
    lm.generation_config.eos_token_id = [tok.eos_token_id, greedy[k]]
    assert stop_token_ids(tok, lm) == sorted({tok.eos_token_id, greedy[k]})
    for engine in ("auto", "generate"):
        r = generate(model, tok, ["Q: 1*2=? A:"], n=1, do_sample=False, temperature=1.0,
                     top_p=1.0, max_new_tokens=6, engine=engine)
        assert r.tokens[0][r.mask[0]].tolist() == greedy[:k + 1]
        assert not r.truncated[0]
