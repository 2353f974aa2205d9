"""The memory plan (thrlab.train.memory) term by term against the real objects it predicts: bitsandbytes'
NF4 storage, a real KV cache, peft's adapters, a loaded 4-bit model; and, slow, the whole plan
against the tracked tensor bytes of a rehearsal (thrlab.plan.rehearsal) at reduced width."""
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch

from thrlab.train import memory
from thrlab.train import model as thrmodel
from thrlab.core import thr
from thrlab.train.model_cards import CARDS
from thrlab.train.presets import from_preset
from thrlab.plan.rehearsal import build_model, live_tensor_bytes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMALL = dataclasses.replace(CARDS["Qwen/Qwen2.5-0.5B-Instruct"], vocab_size=512, hidden_size=128,
                            intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("small")
    build_model(SMALL, folder, SMALL.num_hidden_layers, dtype=torch.float32)
    return folder


def test_constants_match_the_code_they_describe():
    assert memory._LOGIT_ELEMENTS == thrmodel._LOGIT_ELEMENTS
    default = inspect.signature(thr.token_hidden_reward).parameters["chunk_size"].default
    assert memory._THR_CHUNK == default


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_bytes_equal_bitsandbytes_storage(double_quant):
    import bitsandbytes as bnb

    w = torch.randn(256, 1024)
    p = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4",
                          compress_statistics=double_quant)._quantize("cpu")
    qs = p.quant_state
    held = p.numel() * p.element_size() + qs.absmax.numel() * qs.absmax.element_size()
    if double_quant:
        held += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
    assert held == pytest.approx(memory.nf4_bytes(w.numel(), double_quant), rel=1e-6)


def test_weights_and_lora_terms_equal_a_loaded_4bit_model(small_model):
    cfg = from_preset("tiny", model=str(small_model), device="cpu", compute_dtype="float32",
                      lora_r=8, lora_alpha=16)
    model = thrmodel.add_lora(thrmodel.load_base(cfg, str(small_model), torch.device("cpu")), cfg)
    arch = memory.Architecture.of(model.config)
    p = memory.plan(cfg, arch, prompt_tokens=8, device="cpu")
    lora = sum(x.numel() * x.element_size() for n, x in model.named_parameters() if "lora_" in n)
    assert p["evaluate"]["lora"] == lora  # fp32 adapters on every linear layer
    rotary = sum(b.numel() * b.element_size() for b in model.buffers())  # RoPE's inv_freq
    # every tensor the model holds: NF4 weights, scales and codes, the embedding, norms, biases
    held = live_tensor_bytes(model) - lora - rotary
    assert held == pytest.approx(p["evaluate"]["weights"], abs=64)  # to a few fp32 scalars


def test_kv_cache_term_equals_a_real_cache(small_model):
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(small_model, dtype=torch.float32)
    cfg = from_preset("tiny", compute_dtype="float32", prompts_per_step=3, group_size=2,
                      max_new_tokens=5)
    ids = torch.randint(0, 500, (6, 7 + 5))  # P x G rows of prompt + new tokens
    with torch.no_grad():
        cache = lm(input_ids=ids, use_cache=True).cache
    held = sum(t.numel() * t.element_size() for layer in cache.layers
               for t in (layer.keys, layer.values))
    p = memory.plan(cfg, memory.Architecture.of(lm.config), prompt_tokens=7, device="cpu")
    assert p["generate"]["kv_cache"] == held


def test_over_names_the_knob_and_check_is_silent_off_cuda(small_model):
    cfg = from_preset("qwen2.5-math-7b", eval_batch_size=64)  # the plan fits 11 on 80 GB
    arch = memory.Architecture.of(CARDS["Qwen/Qwen2.5-Math-7B"].config_dict())
    p = memory.plan(cfg, arch, prompt_tokens=1000)
    warnings = memory.over(p, 80e9)
    assert any(w.startswith("evaluate needs") and "eval_batch_size" in w for w in warnings)
    assert all(memory.total(p)[w.split()[0]] > 80e9 for w in warnings)
    smaller = memory.plan(cfg.replace(eval_batch_size=4), arch, prompt_tokens=1000)
    assert memory.total(smaller)["evaluate"] < memory.total(p)["evaluate"] / 4
    assert "evaluate" in memory.format_plan(p, 80e9)
    logged = []
    assert memory.check(cfg, torch.nn.Linear(2, 2), None, [], log=logged.append) == {}
    assert logged == []


@pytest.mark.parametrize("preset", ["qwen2.5-math-1.5b", "llama-3.2-3b-instruct"])
def test_eval_batch_size_is_the_most_prompts_the_plan_fits(preset):
    """eval_batch_size=0 (the paper presets): the prompts per call whose growth of the
    evaluation's plan fits 80% of the free memory, and one more would not; at least 1."""
    cfg = from_preset(preset)
    arch = memory.Architecture.of(CARDS[cfg.model].config_dict())

    def grown(b):
        e = memory.plan(cfg.replace(eval_batch_size=b), arch, prompt_tokens=900)["evaluate"]
        return sum(v for k, v in e.items() if k not in ("weights", "lora"))

    for free in (20e9, 75e9, 130e9):
        b = memory.eval_batch_size(cfg, arch, 900, free)
        assert grown(b) <= memory.EVAL_MEMORY_FRAC * free < grown(b + 1)
    assert memory.eval_batch_size(cfg, arch, 900, 1e6) == 1  # nothing fits: one at a time


def test_evaluation_takes_its_batch_from_the_plan_on_zero(tiny_model_dir):
    from thrlab.tasks.arithmetic import arithmetic_problems
    from thrlab.train import evaluate

    cfg = from_preset("tiny", eval_batch_size=0)
    model, tok = thrmodel.load_policy(cfg, str(tiny_model_dir), torch.device("cpu"))
    problems = arithmetic_problems(8, "heldout", 0)
    free = thrmodel.available_memory()
    want = memory.eval_batch_size(cfg, memory.Architecture.of(model.config),
                                  memory.prompt_tokens(problems, tok, cfg.template), free, "cpu")
    assert abs(evaluate.batch_size(cfg, model, tok, problems) - want) <= want // 100 + 1
    assert evaluate.batch_size(cfg.replace(eval_batch_size=3), model, tok, problems) == 3


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "math_train.jsonl").exists(),
                    reason="needs ../shared/data (MATH rows) of a development checkout")
def test_rehearsal_at_reduced_width_completes_within_the_plan(tmp_path):
    from thrlab.plan.rehearsal import rehearse

    narrow = dataclasses.replace(CARDS["Qwen/Qwen2.5-0.5B-Instruct"], hidden_size=128,
                                 intermediate_size=256, num_attention_heads=2,
                                 num_key_value_heads=1)  # the real vocabulary and tokenizer
    r = rehearse("qwen2.5-0.5b-instruct", layers=1, prompts=1, new_tokens=12,
                 eval_problems=1, eval_samples=2, threads=1, data_dir=str(DATA), card=narrow,
                 root=tmp_path)
    assert r["completed"] and r["vocab_size"] == 151936
    assert r["train"]["train/reward_mean"] == 0.5  # the planted answers graded by math-verify
    for phase, m in r["phases"].items():
        assert m["s"] >= 0
        if m["plan_gb"] is not None:  # the plan within 35% of the measured peak
            assert m["plan_gb"] == pytest.approx(m["tracked_gb"], rel=0.35), phase


def test_the_tiny_architecture_comes_from_its_config_without_a_cold_start(tiny_model_dir,
                                                                          tmp_path, monkeypatch):
    """`thrlab plan --preset tiny` used to train the cold start (minutes) to read a shape the
    config already gives; the meta-device build equals the saved model's and trains nothing."""
    from transformers import AutoConfig

    monkeypatch.setenv("THRLAB_CACHE", str(tmp_path / "cache"))
    seed_state = torch.random.get_rng_state()
    arch = memory.architecture_of("tiny")
    assert arch == memory.Architecture.of(AutoConfig.from_pretrained(tiny_model_dir))
    assert not (tmp_path / "cache").exists()  # no cold start, no cache written
    assert torch.equal(torch.random.get_rng_state(), seed_state)  # the caller's RNG untouched
    wide = memory.architecture_of("tiny", from_preset("tiny", tiny_hidden=256, tiny_layers=2))
    assert (wide.hidden_size, wide.num_hidden_layers) == (256, 2)


@pytest.mark.parametrize("phase", memory.PHASES)
def test_knobs_never_suggest_a_value_the_config_already_has(phase):
    """Each knob is named while the config can still turn it, and dropped once it is turned:
    no `gradient_checkpointing=true` to a config that has it, no lower count at its floor."""
    cfg = from_preset("qwen2.5-math-1.5b", method="thr_explore", micro_batch_size=0)
    names = [k for k, *_ in memory._KNOBS[phase]]
    assert all(any(k in a for a in memory.knobs(phase, cfg)) for k in names
               if not (k == "gradient_checkpointing" and cfg.gradient_checkpointing))
    turned = {"micro_batch_size": 1, "kl_coef": 0.0, "thr_vocab": "group",
              "gradient_checkpointing": True, "prompts_per_step": 1, "max_new_tokens": 1,
              "eval_batch_size": 1}
    floor = from_preset("qwen2.5-math-1.5b", **{k: v for k, v in turned.items() if k in names})
    floor = floor.replace(thr_mode="thr") if phase == "thr" else floor
    assert memory.knobs(phase, floor) == [], (phase, memory.knobs(phase, floor))
    # on-policy THR needs whole groups per micro-batch: G is micro_batch_size's floor
    on_policy = from_preset("tiny", method="thr_explore", micro_batch_size=8, group_size=8)
    assert not any("micro_batch_size" in a for a in memory.knobs("update", on_policy))
    p = memory.plan(floor, memory.architecture_of("Qwen/Qwen2.5-Math-1.5B"), prompt_tokens=1800)
    for w in memory.over(p, 1.0, floor):  # 1 byte: every phase is over (kl_coef=0: no ref)
        if w.startswith(f"{phase} "):
            assert "already turned" in w and not any(f"{k} (now" in w or f"{k}=" in w
                                                     for k in names)


def test_prompt_assumption_measures_local_prompts_and_says_when_it_assumes(tiny_model_dir,
                                                                           tmp_path):
    """Prompts on this machine (a JSONL task, a local model folder) are measured with the
    model's tokenizer and template; a set only the hub has is not fetched: the plan assumes
    DEFAULT_PROMPT_TOKENS and says why; a given length is taken as given."""
    import json

    from thrlab.tasks.benchmarks import format_prompt
    from thrlab.train.model import load_tokenizer

    short, long = "2*3=?", "12*34+5678*9=?" * 4
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n"
                            for q in (short, long, short)))
    cfg = from_preset("tiny", model=str(tiny_model_dir), task=str(data), eval_sets=(str(data),),
                      sft_control=False)
    train, evals, said = memory.prompt_assumption(cfg)
    tok = load_tokenizer(str(tiny_model_dir))
    want = len(tok(format_prompt(long, cfg.template, tok), add_special_tokens=False).input_ids)
    assert train == evals == want and "measured with" in said
    hub = from_preset("qwen2.5-math-1.5b")
    n, m, said = memory.prompt_assumption(hub)
    assert n == m == memory.DEFAULT_PROMPT_TOKENS and said.startswith("assumed 1,800 tokens")
    assert "would load from the hub" in said and "--prompt-tokens" in said
    assert memory.prompt_assumption(hub, 321)[:2] == (321, 321)
