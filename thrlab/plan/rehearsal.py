"""A paper preset rehearsed on CPU at real width: its model's architecture (thrlab.train.model_cards) with
random weights and a few layers, a tokenizer of the real size with the real special tokens, and
then the preset's own code path: 4-bit NF4 + LoRA (its rank and targets), gradient
checkpointing, its template, math-verify on real MATH rows, its mini-batch schedule (THR streamed
from the unembedding, off-policy), two GRPO steps with THR and a small evaluation. Only the batch
(prompts), the lengths and the depth are reduced. benchmarks/rehearse.py prints what it measures.

Two things differ from a real run, both because the weights are random:
- the tokenizer's BPE merges are learned from MATH train text (a few thousand), and the rest of
  the regular vocabulary is filler entries, so prompts tokenise to realistic lengths and every
  id the model can sample decodes; the chat template is a minimal one of the model's format
  (ChatML; Llama 3 headers without the date lines), not the model's file;
- a random model never answers right, so `RehearsalTrainer` ends the first half of each group's
  completions with the gold answer (the sampled tokens, then "The answer is $\boxed{gold}$." and
  eos in the last positions) after sampling, before grading: rewards are mixed, correct
  responses are full length, and the update and THR do the work they do in a real run. Grading
  is math-verify on the real texts.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

import torch

from thrlab.plan import profiling
from thrlab.train import memory
from thrlab.train.experiment import (eval_problems as eval_sets_of, evaluate_run, make_grade_fn,
                                     train_problems)
from thrlab.train.model import load_policy
from thrlab.train.model_cards import ModelCard, card_of
from thrlab.train.packaged import PACKAGED
from thrlab.train.presets import PRESETS, from_preset
from thrlab.train.rollout import _rollout, stop_token_ids
from thrlab.train.runs import STEP_PHASES, RunDir, cache_root
from thrlab.train.trainer import GRPOTrainer

# the presets of the paper's GPU runs: a hub model (not the embedded one, nor a packaged CPU model)
PAPER_PRESETS = [n for n, p in PRESETS.items()
                 if p.get("model", "tiny") != "tiny" and p.get("model") not in PACKAGED]

# Chat formats in thrlab's words: system / user turns and the assistant prompt only.
_CHAT_TEMPLATES = {
    "chatml": ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
               "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
               "{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "llama3": ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + "
               "'<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}"
               "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
}
MERGES = 4000  # BPE vocabulary learned from MATH text; the rest of the regular ids are fillers
BUILD = 1  # version of build_tokenizer / build_model: part of the cached folders' key


def _corpus(data_dir: str | Path, n: int = 3000) -> list[str]:
    rows = (Path(data_dir) / "math_train.jsonl").read_text(encoding="utf-8").splitlines()[:n]
    return [r["problem"] + "\n" + r["solution"] for r in map(json.loads, rows)]


def build_tokenizer(card: ModelCard, folder: Path, data_dir: str | Path):
    """A fast tokenizer of len(card.tokenizer) ids: byte-level BPE, fillers, then the special
    tokens at their real ids; saved to folder and returned."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tc = card.tokenizer
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(_corpus(data_dir), trainers.BpeTrainer(
        vocab_size=MERGES, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    vocab = tk.get_vocab()
    merges = json.loads(tk.to_str())["model"]["merges"]
    for i in range(len(vocab), tc.regular_tokens):
        vocab[f"<filler{i}>"] = i  # reachable only by sampling; decodes to its own text
    full = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m) if isinstance(m, list)
                                                     else tuple(m.split(" ")) for m in merges]))
    full.pre_tokenizer, full.decoder = tk.pre_tokenizer, tk.decoder
    by_id = {i: t for t, i in tc.specials.items()}
    names = [by_id.get(i, f"<|reserved_{i}|>") for i in range(tc.regular_tokens, len(tc))]
    full.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in names])
    assert all(full.token_to_id(t) == i for t, i in tc.specials.items()), "special ids moved"
    tok = PreTrainedTokenizerFast(tokenizer_object=full, eos_token=tc.eos_token,
                                  pad_token=tc.pad_token, bos_token=tc.bos_token)
    tok.chat_template = _CHAT_TEMPLATES[tc.chat_format]
    tok.save_pretrained(folder)
    return tok


def build_model(card: ModelCard, folder: Path, layers: int, dtype: torch.dtype = torch.bfloat16,
                seed: int = 0) -> None:
    """card's architecture with `layers` decoder layers and random weights (transformers' own
    initialisation), saved to folder in dtype, as a checkpoint is published."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    d = card.config_dict(layers)
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=list(card.tokenizer.generation_eos_ids))
    model.save_pretrained(folder)


def model_folder(card: ModelCard, layers: int, data_dir: str | Path,
                 root: Path | None = None) -> Path:
    """The cached rehearsal checkpoint (model + tokenizer) of `card` at `layers` layers: built
    once, keyed by the card, the layers and BUILD (raise it when the builders change)."""

    key = hashlib.sha256(f"{card!r}/{layers}/{BUILD}".encode()).hexdigest()[:12]
    name = f"{card.hub_id.replace('/', '--')}-L{layers}-{key}"
    folder = (root or cache_root() / "rehearsal") / name
    if not (folder / "DONE").exists():
        folder.mkdir(parents=True, exist_ok=True)
        build_tokenizer(card, folder, data_dir)
        build_model(card, folder, layers)
        (folder / "DONE").write_text("ok\n")
    return folder


class RehearsalTrainer(GRPOTrainer):
    """GRPOTrainer whose sampled batch gets the gold answer in the first half of every group
    (module docstring): the rest of the step is the trainer's own."""

    def sample(self, problems: list):
        batch = super().sample(problems)
        self.prompt_len = batch.prompt_len  # the rehearsal plans memory at this batch's shapes
        G, tok = self.cfg.group_size, self.tok
        comp = batch.tokens.clone()  # (B, T)
        eos = tok.convert_tokens_to_ids(tok.eos_token)
        T = comp.shape[1]
        for i, p in enumerate(problems):
            ids = tok(f"The answer is $\\boxed{{{p.answer}}}$.",
                      add_special_tokens=False).input_ids[:T - 1] + [eos]
            for j in range(i * G, i * G + G // 2):  # the sampled text, then the answer at the end
                comp[j, T - len(ids):] = torch.tensor(ids)
        lp = batch.prompt_len
        lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return _rollout(tok, batch.input_ids[:, :lp], batch.attention_mask[:, :lp], comp,
                        stop_token_ids(tok, lm), 0, G)


def rehearsal_config(preset: str, folder: Path, *, prompts: int, new_tokens: int,
                     eval_problems: int, eval_samples: int, threads: int, data_dir: str,
                     dtype: str = "", device: str = "cpu"):
    """The preset's config with THR on (p = +0.1) and only batch, lengths and device reduced."""
    return from_preset(
        preset, "thr_exploit", model=str(folder), device=device, data_dir=data_dir,
        prompts_per_step=prompts, max_new_tokens=new_tokens, steps=2, eval_sets=("math500",),
        eval_limit=eval_problems, eval_samples=eval_samples, eval_max_new_tokens=new_tokens,
        eval_batch_size=eval_problems, threads=threads, thr_save_every=0, save_every=1,
        **({"compute_dtype": dtype} if dtype else {}))


def live_tensor_bytes(model) -> float:
    """Bytes of every tensor the model holds: parameters, buffers and bitsandbytes' quantisation
    state (absmax, nested scales, code), each storage counted once."""
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()

    for t in (*model.parameters(), *model.buffers()):
        add(t)
        qs = getattr(t, "quant_state", None)
        while qs is not None:
            for name in ("absmax", "code", "offset"):
                add(getattr(qs, name, None))
            qs = getattr(qs, "state2", None)
    return float(total)


def rehearse(preset: str, *, layers: int = 2, prompts: int = 2, new_tokens: int = 48,
             eval_problems: int = 2, eval_samples: int = 2, dtype: str = "", threads: int = 2,
             data_dir: str, card: ModelCard | None = None, root: Path | None = None,
             device: str = "cpu") -> dict:
    """Rehearse `preset` (module docstring): two GRPO steps, the second measured, and an
    evaluation; returns what benchmarks/rehearse.py prints. `card` replaces the model's card
    (e.g. a narrower one, for a test), `root` the cache folder of the built checkpoints;
    device="cuda" rehearses on a GPU (layers=0: the full depth), where the tracked bytes are
    the CUDA allocator's."""

    card = card or card_of(PRESETS[preset]["model"])
    layers = layers or card.num_hidden_layers
    out = {"preset": preset, "model": card.hub_id, "card_revision": card.revision,
           "completed": False, "vocab_size": card.vocab_size, "hidden_size": card.hidden_size,
           "layers": layers, "full_layers": card.num_hidden_layers, "prompts": prompts,
           "new_tokens": new_tokens}
    t0 = time.perf_counter()
    folder = model_folder(card, layers, data_dir, root)
    out["build_s"] = time.perf_counter() - t0
    cfg = rehearsal_config(preset, folder, prompts=prompts, new_tokens=new_tokens,
                           eval_problems=eval_problems, eval_samples=eval_samples,
                           threads=threads, data_dir=data_dir, dtype=dtype, device=device)
    out.update(group_size=cfg.group_size, mini_batches=cfg.mini_batches,
               micro_batch_size=cfg.micro_batch_size, lora_r=cfg.lora_r,
               compute_dtype=cfg.compute_dtype, template=cfg.template, grader=cfg.grader)
    torch.set_num_threads(threads)
    problems, sets = train_problems(cfg), eval_sets_of(cfg)
    profiling.reset_peak_rss()
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model, tok = load_policy(cfg, str(folder), torch.device(device))
    out["load_s"], out["rss_peak_mb"] = time.perf_counter() - t0, {}
    out["rss_peak_mb"]["load"] = profiling.window_peak_rss_mb()
    out["weights_tracked_gb"] = live_tensor_bytes(model) / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        trainer = RehearsalTrainer(cfg, model, tok, problems, RunDir(tmp), make_grade_fn(cfg))
        first, row, res, peaks, base = _measure(trainer, sets, device, out)
    out["step_s"] = row["time/step"]
    out["train"] = {k: row[k] for k in ("train/reward_mean", "train/skipped", "train/loss",
                                        "thr/frac_masked", "train/completion_len") if k in row}
    out["eval"] = {"greedy_acc": res["mean"].get("greedy_acc"),
                   "grading": res.get("grading_by_set")}
    out.update(_plans(preset, cfg, card, trainer, problems, sets, row, peaks, base, device))
    out["completed"] = first.get("train/skipped") == 0 and row.get("train/skipped") == 0
    return out


def _measure(trainer, sets: dict, device: str, out: dict):
    """Two steps, the second profiled, then an evaluation profiled; (first step's metrics, second
    step's + time/evaluate, eval results, {phase: peak bytes allocated in it}, persistent bytes
    before the second step: the model's tensors and AdamW's moments). Peak RSS goes into out."""

    model, cfg = trainer.model, trainer.cfg
    profiling.reset_peak_rss()
    first = trainer.train_step()  # the optimizer's state exists from here on: measure step 2
    out["first_step_s"] = first["time/step"]
    base = live_tensor_bytes(model) + sum(
        t.untyped_storage().nbytes() for st in trainer.opt.state.values()
        for t in st.values() if isinstance(t, torch.Tensor))
    out["persistent_tracked_gb"] = base / 1e9
    acts = [torch.profiler.ProfilerActivity.CPU] + (
        [torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=acts, profile_memory=True) as prof:
        row = trainer.train_step()
    out["rss_peak_mb"]["step"] = profiling.window_peak_rss_mb()
    peaks = profiling.phase_peaks(prof, device)
    del prof
    profiling.reset_peak_rss()
    with torch.profiler.profile(activities=acts, profile_memory=True) as prof:
        with torch.profiler.record_function("thrlab/evaluate"):
            t0 = time.perf_counter()
            res = evaluate_run(model, trainer.tok, cfg, sets, progress=False)
            row["time/evaluate"] = time.perf_counter() - t0
    out["rss_peak_mb"]["evaluate"] = profiling.window_peak_rss_mb()
    peaks.update(profiling.phase_peaks(prof, device))
    return first, row, res, peaks, base


def _plans(preset, cfg, card, trainer, problems, sets, row, peaks, base, device) -> dict:
    """The measured phases beside thrlab.train.memory's plan at the rehearsal's shapes, and the plan
    of the preset's real run (full depth and batch, on CUDA)."""

    tok = trainer.tok
    eval_len = memory.prompt_tokens(next(iter(sets.values())), tok, cfg.template)
    terms = memory.plan(cfg, memory.Architecture.of(trainer.model.config), trainer.prompt_len,
                        eval_prompt_tokens=eval_len, device=device)
    plan = memory.total(terms)
    real = from_preset(preset, "thr_exploit")
    real_prompt = memory.prompt_tokens(problems, tok, real.template)
    full = memory.plan(real, memory.Architecture.of(card.config_dict()), real_prompt)
    return {
        "plan_terms_gb": {k: {t: b / 1e9 for t, b in v.items()} for k, v in terms.items()},
        "phases": {k: {"s": row.get(f"time/{k}", 0.0),
                       "tracked_gb": (base + peaks[k]) / 1e9 if k in peaks else None,
                       "plan_gb": plan[k] / 1e9 if k in plan else None}
                   for k in (*STEP_PHASES, "evaluate")},
        "prompt_tokens": {"train_batch": trainer.prompt_len, "eval": eval_len,
                          "train_max": real_prompt},
        "estimate_gb": {k: v / 1e9 for k, v in memory.total(full).items()},
        "estimate_top_terms": {k: sorted(((t, b / 1e9) for t, b in v.items()),
                                         key=lambda x: -x[1])[:2] for k, v in full.items()},
    }
