"""The model cards (thrlab.train.model_cards) against the presets and transformers' own classes: every
paper preset's model has one, its config builds the architecture it describes (module shapes
read off a meta-device model at full depth), and its tokenizer facts fit its template."""
import pytest
import torch

from thrlab.train import memory
from thrlab.train.model_cards import CARDS, card_of
from thrlab.train.presets import PRESETS
from thrlab.plan.rehearsal import PAPER_PRESETS


def _meta_model(card, layers=None):
    from transformers import AutoConfig, AutoModelForCausalLM

    d = card.config_dict(layers)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config), config


def test_every_paper_preset_has_a_card():
    assert len(PAPER_PRESETS) >= 4
    assert {PRESETS[p]["model"] for p in PAPER_PRESETS} <= set(CARDS)
    with pytest.raises(KeyError, match="no model card"):
        card_of("Qwen/Qwen9")


@pytest.mark.parametrize("hub_id", sorted(CARDS))
def test_card_builds_the_architecture_it_describes(hub_id):
    card = CARDS[hub_id]
    model, config = _meta_model(card)
    arch = memory.Architecture.of(config)
    assert arch == memory.Architecture.of(card.config_dict())
    layer = model.model.layers[0]
    mods = {**dict(layer.self_attn.named_children()), **dict(layer.mlp.named_children())}
    for name, (i, o) in arch.linear_shapes().items():  # the plan's shapes are the real ones
        assert tuple(mods[name].weight.shape) == (o, i), name
    assert len(model.model.layers) == card.num_hidden_layers
    assert model.lm_head.weight.shape == (card.vocab_size, card.hidden_size)
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    assert tied == card.tie_word_embeddings
    # the parameter count the published model sizes name (1.5B, 7B, 0.5B, 3B), to 10%
    n = sum(p.numel() for p in model.parameters())
    size = {"Qwen/Qwen2.5-Math-1.5B": 1.54e9, "Qwen/Qwen2.5-Math-7B": 7.6e9,
            "Qwen/Qwen2.5-0.5B-Instruct": 0.49e9, "meta-llama/Llama-3.2-3B-Instruct": 3.2e9}
    assert abs(n / size[hub_id] - 1) < 0.1, n


@pytest.mark.parametrize("hub_id", sorted(CARDS))
def test_tokenizer_facts_fit_the_vocabulary_and_template(hub_id):
    card = CARDS[hub_id]
    tc = card.tokenizer
    assert len(tc) <= card.vocab_size  # the embedding may be padded past the tokenizer
    assert all(tc.regular_tokens <= i < len(tc) for i in tc.specials.values())
    assert set(tc.generation_eos_ids) <= set(tc.specials.values())
    assert tc.eos_token in tc.specials and (tc.pad_token is None or tc.pad_token in tc.specials)
    presets = [p for p in PAPER_PRESETS if PRESETS[p]["model"] == hub_id]
    for p in presets:
        template = PRESETS[p].get("template")
        if template == "qwen25-math-cot":  # the template writes these tokens itself
            assert {"<|im_start|>", "<|im_end|>"} <= set(tc.specials)
        if template == "chat":
            assert tc.chat_format in ("chatml", "llama3")
