"""The real pretrained model (preset smollm2-135m, docs/real-model.md): SmolLM2-135M-Instruct read
from its registry package, converted once, its tokenizer and chat template, and one GRPO step
with THR whose THR is checked against the naive pairwise loop of test_thr.py on the model's own
hidden states and its real (full-vocabulary) unembedding.

Skipped, with the reason, where the package is not installed (`make smollm`; `make test` and CI
install it).
"""
import pytest
import torch

from thrlab.tasks.benchmarks import format_prompt
from thrlab.tasks.task import word_task
from thrlab.train.packaged import PACKAGED, missing

SMOL = PACKAGED["smollm2-135m-instruct"]


pytestmark = pytest.mark.skipif(missing(SMOL.name) is not None, reason=str(missing(SMOL.name)))


@pytest.fixture(scope="module")
def smol_dir():
    from thrlab.train.packaged import ensure_packaged_model

    return str(ensure_packaged_model(SMOL.name, progress=False))


@pytest.fixture(scope="module")
def smol_tok(smol_dir):
    from thrlab.train.model import load_tokenizer

    return load_tokenizer(smol_dir)


def test_conversion_keeps_the_gguf_models_logits(smol_dir):
    """The cached folder is the GGUF file's model: same config, identical logits."""
    from transformers import AutoModelForCausalLM

    from thrlab.train.packaged import gguf_path

    path = gguf_path(SMOL)
    ref = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                               dtype=torch.float32).eval()
    ours = AutoModelForCausalLM.from_pretrained(smol_dir, dtype=torch.float32).eval()
    assert ours.config.vocab_size == 49152 and ours.config.model_type == "llama"
    ids = torch.tensor([[1, 9690, 198, 19556, 282, 2442, 30, 2, 198]])
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, ours(ids).logits)


def test_tokenizer_and_chat_template_round_trip(smol_tok):
    tok = smol_tok
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>"
    assert tok.pad_token_id == tok.eos_token_id  # thrlab pads with eos; the mask handles it
    question = word_task("word_add1").heldout(1)[0].question
    text = format_prompt(question, "chat-gsm8k", tok)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert f"<|im_start|>user\n{question}<|im_end|>" in text
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text  # the template survives tokenization exactly
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids.count(im_start) == 3 and ids.count(im_end) == 2  # single special tokens
    answer = tok("2 + 5 = 7\n#### 7", add_special_tokens=False).input_ids
    assert tok.decode(answer + [tok.eos_token_id], skip_special_tokens=True) == "2 + 5 = 7\n#### 7"


def test_one_thr_step_matches_the_naive_reference_on_real_states(smol_dir, tmp_path):
    """Sample two prompts x 4 from the real model, grade them for real, then (so that both groups
    carry a signal whatever the model wrote) give them mixed rewards; the THR the update pass
    computes equals the pairwise loop on the model's own last-layer states and lm_head over all
    49,152 tokens, and the step moves the LoRA weights."""
    from test_thr import naive_thr

    from thrlab.train.experiment import build_trainer
    from thrlab.train.presets import from_preset

    cfg = from_preset("smollm2-135m", "thr_p0", prompts_per_step=2, group_size=4,
                      max_new_tokens=12, threads=2, thr_save_every=0)
    task = word_task("word_add1")
    trainer = build_trainer(cfg, smol_dir, tmp_path / "run", problems=task.heldout(2))
    batch, stats = trainer.rollout()
    assert stats["reward/parse_failures"] + sum(batch.rewards.tolist()) <= 8  # graded, counted
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    adv = trainer.response_advantages(batch.rewards)

    model, P = trainer.model, batch.prompt_len
    pos = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():  # the reference's inputs: the model's own forward, nothing of thrlab's
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    position_ids=pos, output_hidden_states=True)
    h = out.hidden_states[-1][:, P - 1:-1].double()  # (B, T, H) the states that predict tokens
    head = model.get_base_model().lm_head
    assert head.weight.shape == (49152, 576) and not hasattr(head, "lora_A")
    logits = h @ head.weight.double().T / cfg.temperature  # (B, T, V) the real unembedding
    torch.testing.assert_close(logits.float(), out.logits[:, P - 1:-1] / cfg.temperature,
                               rtol=1e-4, atol=1e-3)

    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    step = trainer.micro.run(lambda acc: trainer.update(batch, adv, acc), len(batch.tokens),
                             trainer.zero_grad)
    thr = torch.cat(trainer.old_policy.thr_parts).double()  # (B, T) as the update used it
    G = cfg.group_size
    for g in range(2):
        rows = slice(g * G, (g + 1) * G)
        want = naive_thr(h[rows], batch.tokens[rows], batch.mask[rows].bool(),
                         batch.rewards[rows], logits[rows])
        scale = want.abs().max().item()
        assert scale > 0
        assert (thr[rows] - want).abs().max().item() < 1e-4 * scale, g
    assert 0 < step["thr/frac_kept"] < 1 and step["train/opt_steps"] == 1
    assert torch.isfinite(torch.tensor(step["train/loss"]))
    moved = sum(float((p.detach() - before[n]).abs().sum())
                for n, p in model.named_parameters() if p.requires_grad)
    assert moved > 0


def test_the_memory_plan_reads_the_packaged_model_offline(smol_dir):
    """`thrlab plan --preset smollm2-135m` needs no hub: the architecture and the prompts are
    read from the converted folder and the word-problem task (65 tokens with the template)."""
    from thrlab.train.memory import architecture_of, prompt_assumption
    from thrlab.train.presets import preset_config

    arch = architecture_of(SMOL.name)
    assert (arch.hidden_size, arch.intermediate_size) == (576, 1536)
    train_tokens, eval_tokens, where = prompt_assumption(preset_config("smollm2-135m"))
    assert 40 < train_tokens == eval_tokens < 100 and "measured" in where
