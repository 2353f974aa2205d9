"""Checkpoints of a training run: LoRA adapter (and the start adapter the run's distance is
measured from) + optimizer + RNG + loop position.

A checkpoint folder is written beside the old one and swapped in with renames, so a kill at any
moment leaves either the previous or the new checkpoint whole, never a mixture. Everything in it
is data: safetensors, JSON, and a `state.pt` of tensors and plain values (optimizer and RNG
state) that is read with `torch.load(weights_only=True)` only, so resuming a run folder from
someone else never runs code stored in it.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from thrlab.core.errors import ConfigError, RunFolderError, SetupError

from .faults import failpoint


def adapter_state(model) -> dict:
    """The trainable (LoRA) tensors only; never the base model."""
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_adapter(model, path: Path) -> None:
    """Save the adapter in peft's format (loadable with PeftModel.from_pretrained)."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    failpoint("adapter")
    _swap(tmp, path)


@dataclass
class TrainState:
    """What a trainer carries from step to step besides weights, optimizer and RNG."""

    step: int = 0  # GRPO steps done
    cursor: int = 0  # position in the seeded prompt order
    nonfinite_steps: int = 0  # steps skipped for NaN/inf
    micro_batch_size: int = 0  # rows per forward/backward now (halved on OOM; 0 = mini-batch)


def save_checkpoint(trainer, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from safetensors.torch import save_file

    save_file(adapter_state(trainer.model), str(tmp / "adapter.safetensors"))
    save_file(trainer.drift.start_state(), str(tmp / "adapter_start.safetensors"))  # distance
    # Tensors, numbers, strings, tuples, lists and dicts only: what weights_only=True loads.
    torch.save({"optimizer": trainer.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "py_rng": random.getstate()}, tmp / "state.pt")
    (tmp / "trainer.json").write_text(json.dumps(dataclasses.asdict(trainer.state)))
    failpoint("checkpoint")
    (tmp / "COMPLETE").write_text("ok\n")
    _swap(tmp, path)


def load_checkpoint(trainer, path: Path) -> bool:
    """Restore trainer state from a complete checkpoint; False if there is none."""
    path = _settle(Path(path))
    if path is None:
        return False
    from safetensors.torch import load_file

    state = load_file(str(path / "adapter.safetensors"))
    params = dict(trainer.model.named_parameters())
    missing = set(state) ^ {n for n, p in params.items() if p.requires_grad}
    if missing:
        raise RunFolderError(f"checkpoint {path} does not match the model's adapters "
                             f"(differs in {sorted(missing)[:3]}...); was the config changed?")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
    if (path / "adapter_start.safetensors").exists():  # checkpoints before drift.py lack it
        trainer.drift.load_start_state(load_file(str(path / "adapter_start.safetensors")))
    s = load_state(path / "state.pt")
    trainer.opt.load_state_dict(s["optimizer"])
    torch.set_rng_state(s["torch_rng"])
    if s["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda_rng"])
    random.setstate(s["py_rng"])
    meta = json.loads((path / "trainer.json").read_text())  # older ones lack the last two
    for key, value in meta.items():  # in place: the trainer's parts hold this state
        setattr(trainer.state, key, value)
    return True


def load_state(path: Path) -> dict:
    """Read a checkpoint's state.pt as data only; refuse (without running) anything else."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:  # what weights_only raises for a global it refuses
        raise RunFolderError(
            f"{path} is not a thrlab checkpoint state: it holds Python objects beyond tensors "
            "and plain values, so it was refused and nothing in it was run. If you trust its "
            f"origin, delete {path.parent} to restart this run from step 0; otherwise use "
            "another --run-dir") from err


def _latest_complete(path: Path) -> Path | None:
    """The newest whole checkpoint among path, path.tmp and path.old (a kill can leave any)."""
    found = []
    for p in (path, path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")):
        if (p / "COMPLETE").exists():  # COMPLETE is written last, so the folder is whole
            found.append((json.loads((p / "trainer.json").read_text())["step"], p))
    return max(found, key=lambda x: x[0])[1] if found else None


def _settle(path: Path) -> Path | None:
    """Move the newest whole checkpoint to `path` and drop leftovers; safe to kill at any line."""
    best = _latest_complete(path)
    if best is not None and best != path:
        shutil.rmtree(path, ignore_errors=True)  # older than best (or absent)
        os.replace(best, path)
    for p in (path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")):
        shutil.rmtree(p, ignore_errors=True)
    return path if best is not None else None


def _swap(tmp: Path, path: Path) -> None:
    """Replace `path` by `tmp`: path -> path.old, tmp -> path, drop path.old."""
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    failpoint("swap")
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


# LoRA fields of Config that change the adapter's tensors or its output, and their names in
# peft's adapter_config.json.
_ADAPTER_KEYS = {"lora_r": "r", "lora_alpha": "lora_alpha"}


def check_adapter(path, cfg) -> None:
    """Refuse an adapter folder that is missing, or whose adapter_config.json contradicts cfg."""
    f = Path(path) / "adapter_model.safetensors"
    if not f.exists():
        raise SetupError(f"{f} not found; pass a run's adapter/ folder")
    conf = Path(path) / "adapter_config.json"
    saved = json.loads(conf.read_text()) if conf.exists() else {}
    bad = [f"{k}={getattr(cfg, k)} (the adapter has {saved[a]})"
           for k, a in _ADAPTER_KEYS.items() if a in saved and saved[a] != getattr(cfg, k)]
    if bad:
        raise ConfigError(f"{', '.join(bad)} contradicts {conf}; drop those --set values (with "
                         "--run-dir the run's own config is used), or set the adapter's")


def load_adapter_weights(model, path) -> None:
    """Load a saved peft adapter folder's weights into a model with the same LoRA config."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    f = Path(path) / "adapter_model.safetensors"
    if not f.exists():
        raise SetupError(f"{f} not found; pass a run's adapter/ folder")
    set_peft_model_state_dict(model, load_file(str(f)))
