"""Shared test set-up: one CPU thread (the machine is shared) and the location of ../shared/data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("AVP_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One torch thread during the test, whatever an earlier test set (results depend on the thread count)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_root() -> Path:
    """../shared/data (or $AVP_DATA); the test is skipped with the reason when it is absent."""
    if not DATA_ROOT.is_dir():
        pytest.skip(f"shared data not found at {DATA_ROOT} (set AVP_DATA)")
    return DATA_ROOT


def _tiny_key(tmp_path_factory, name: str, seed: int) -> Path:
    """A key of the smallest preset trained for a few steps: enough to exercise every code path."""
    from avpcli.key import TEST_SEED_KDF, KeyPreset, save_key, train_key

    preset = KeyPreset(ngf=4, blocks=1, norm="batch", steps=2, batch_size=2, crop_size=32, learning_rate=1e-3,
                       seed_kdf=TEST_SEED_KDF)
    path = tmp_path_factory.mktemp("keys") / name
    save_key(train_key(preset, seed=seed), path)
    return path


@pytest.fixture(scope="session")
def tiny_key_file(tmp_path_factory) -> Path:
    return _tiny_key(tmp_path_factory, "tiny.safetensors", 2**70 + 1)


@pytest.fixture(scope="session")
def other_tiny_key_file(tmp_path_factory) -> Path:
    """A second tiny key that differs from tiny_key_file only by its seed."""
    return _tiny_key(tmp_path_factory, "tiny-other.safetensors", 2**70 + 2)


def write_noise_photos(folder: Path, names: list[str], height: int, width: int, seed: int) -> Path:
    """Random-pixel RGB photos at folder/name (JPEG or PNG by suffix, sub-folders created); returns folder."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    return folder


def folder_contents(folder: Path) -> dict[str, bytes]:
    """Every file under folder by relative path: what two runs must agree on byte for byte."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def snapshot(folder: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every entry under folder (but those under `skip`): a file's sha256, a link's target, or its kind;
    to prove nothing changed."""
    state = {}
    for path in sorted(folder.rglob("*")):
        if any(path == skipped or skipped in path.parents for skipped in skip):
            continue
        if path.is_symlink():
            state[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[str(path)] = "dir" if path.is_dir() else "other"
    return state
