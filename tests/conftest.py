"""Shared test set-up: one CPU thread (the machine is shared) and the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("AVP_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(1)


@pytest.fixture
def data_root() -> Path:
    """../shared/data (or $AVP_DATA); the test is skipped with the reason when it is absent."""
    if not DATA_ROOT.is_dir():
        pytest.skip(f"shared data not found at {DATA_ROOT} (set AVP_DATA)")
    return DATA_ROOT


@pytest.fixture(scope="session")
def tiny_key_file(tmp_path_factory) -> Path:
    """A key of the smallest preset trained for a few steps: enough to exercise every code path."""
    from avpcli.key import KeyPreset, save_key, train_key

    preset = KeyPreset(ngf=4, blocks=1, norm="batch", steps=2, batch_size=2, crop_size=32, learning_rate=1e-3)
    path = tmp_path_factory.mktemp("keys") / "tiny.safetensors"
    save_key(train_key(preset, seed=2**70 + 1), path)
    return path
