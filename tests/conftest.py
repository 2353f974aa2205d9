"""Shared fixtures: a tiny random model saved locally (no hub), and the shared benchmark data."""
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A randomly initialised tiny Qwen2 model + char tokenizer saved to disk (built in-process)."""
    from thrlab.train.presets import from_preset
    from thrlab.train.tiny import save_random_model

    out = tmp_path_factory.mktemp("tiny_random")
    save_random_model(from_preset("tiny"), out)
    return out


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
