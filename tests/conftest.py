"""Shared fixtures: a tiny random model saved locally (no hub), and the shared benchmark data."""
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen2 model + char tokenizer saved to disk (built in-process)."""
    from thrlab.config import from_preset
    from thrlab.tiny import build_model, build_tokenizer

    out = tmp_path_factory.mktemp("tiny_random")
    tok = build_tokenizer()
    model = build_model(from_preset("tiny"), len(tok))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
