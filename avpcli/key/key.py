"""The Key: G, its scramble S and its file's metadata as one object, and how one is trained, saved, loaded and found."""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from avpcli.errors import KeyFileError
from avpcli.key.keyfile import key_fingerprint, key_metadata, key_tensors, read_key_file, write_key_file
from avpcli.key.network import KeyGenerator, KeyModel
from avpcli.key.presets import KeyPreset, new_seed, resolve_recipe, seed_secrets
from avpcli.key.training import ProgressCallback, fit_generator, seeded_generator
from avpcli.key.training_data import training_source
from avpcli.scramble import Scramble


@dataclasses.dataclass(eq=False, repr=False)
class Key:
    """A key: the frozen generator G, its scramble S (None: the paper's plain G) and its file's metadata.

    `model` is the key as encryption and decryption use it (G∘S); `plain_model` is G alone, the
    paper's key, which `--recipe research` encrypts for. Made by `Key.train` and `Key.load`,
    written by `save`; `path` is the file it was read from or last saved to, `seconds` the training
    time of a key just trained.
    """

    generator: KeyGenerator
    metadata: dict[str, str]
    scramble: Scramble | None = None
    path: Path | None = None
    seconds: float = 0.0

    def __repr__(self) -> str:  # never the seed (in the metadata) or the weights: a repr ends up in logs
        return (f"Key(fingerprint={self.fingerprint[:16]}…, preset={self.metadata.get('preset')!r}, "
                f"scramble={self.scrambles}, path={str(self.path) if self.path else None!r})")

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Key:
        """load_key: read and check a key file."""
        return load_key(path, device)

    @classmethod
    def train(cls, preset: str | KeyPreset = "default", seed: int | None = None, **options: Any) -> Key:
        """train_key, with a fresh 256-bit secret seed when none is given."""
        return train_key(preset, new_seed() if seed is None else seed, **options)

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
        """save_key: write the key owner-only and atomically; remembers the path."""
        self.path = save_key(self, path, overwrite)
        return self.path

    def tensors(self) -> dict[str, torch.Tensor]:
        """Everything the key file stores: G's weights and, for a scrambling key, the scramble secret."""
        return key_tensors(self.generator, self.scramble)

    @functools.cached_property
    def fingerprint(self) -> str:
        """sha256 over the stored tensors: names the key (in manifests) without giving away its seed."""
        return key_fingerprint(self.tensors())

    def derived_secret(self, purpose: str) -> bytes:
        """32 secret bytes of this key's for `purpose` (e.g. tagging sources in a manifest)."""
        return bytes.fromhex(key_fingerprint(self.tensors(), purpose))

    @property
    def scrambles(self) -> bool:
        return self.scramble is not None

    @property
    def model(self) -> KeyModel:
        return KeyModel(self.generator, self.scramble).freeze()

    @property
    def plain_model(self) -> KeyModel:
        return KeyModel(self.generator, None).freeze()

    def model_for(self, scramble: bool) -> KeyModel:
        """G∘S when `scramble` (a key without scramble refuses), else G alone."""
        if scramble and self.scramble is None:
            raise KeyFileError(f"{self.path or 'this key'} has no scramble (a format-1 or --no-scramble key)")
        return self.model if scramble else self.plain_model


def train_key(preset_name: str | KeyPreset, seed: int, data_dir: str | os.PathLike[str] | None = None,
              steps: int | None = None, device: str | torch.device = "cpu",
              progress: ProgressCallback | None = None, scramble: bool | str = True) -> Key:
    """Train G to reproduce its input (L1, plus (1 − SSIM) where the preset asks for it).

    Args:
        preset_name: a name in KEY_PRESETS, or a KeyPreset.
        seed: the secret, a password: every secret of the key (the scramble's, G's initialization and
            data streams) is derived from it through the preset's memory-hard `seed_kdf` (scrypt, about
            0.5 s), recorded in the metadata. The same seed, data, settings, torch version and thread
            count give a byte-identical key on CPU.
        data_dir: a folder of images (searched recursively); None for the preset's built-in procedural
            source (KeyPreset.procedural).
            A missing or image-less folder is a UsageError.
        steps: overrides the preset's step count (the learning-rate schedule follows it).
        device: where to train.
        progress: called as progress(step, total, loss) after every step (step counts from 1).
        scramble: give the key a secret scramble S, derived from the seed (avpcli.scramble): True for
            one plan per image (PER_IMAGE_SCHEME), or a scheme's name (SCHEME: one plan per size, as
            avp 0.1 made them); False keeps the paper's plain G. G's training is the same either way.

    An unknown preset or scramble scheme, steps below 1 or a negative seed is a UsageError
    (resolve_recipe, which a command can call first to check its options).
    No adversarial (PatchGAN) loss: at CPU budgets it only slows the identity fit (docs/KEY.md).
    The global torch RNG state is left as it was.
    """
    name, preset, scheme = resolve_recipe(preset_name, seed, steps, scramble)
    source, data_fingerprint = training_source(data_dir, preset.procedural)

    started = time.perf_counter()
    derived = seed_secrets(seed, preset.seed_kdf)  # the preset's scrypt: about 0.5 s, what a guess of the seed costs
    model = seeded_generator(preset.ngf, preset.blocks, preset.norm, derived.init, device)
    data_generator = torch.Generator().manual_seed(derived.data)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        images = source(data_generator, preset.batch_size, preset.crop_size).to(device)
        return images, images  # G learns to reproduce its input

    fit_generator(model, batch, preset.steps, preset.learning_rate_at, betas=preset.betas,
                  ssim_weight=preset.ssim_weight,
                  progress=None if progress is None else lambda step, total, loss: progress(step, total, float(loss)))
    metadata = key_metadata(name, preset, seed, data_fingerprint, scheme)
    scrambler = Scramble(derived.scramble, scheme) if scheme else None
    return Key(model.cpu(), metadata, scrambler, seconds=time.perf_counter() - started)


def save_key(trained: Key, path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Write the key as safetensors with its metadata: owner-only (0600), fsynced, atomically renamed.

    Raises KeyFileError if the file exists and overwrite is False, or if it cannot be written.
    """
    return write_key_file(trained.tensors(), trained.metadata, path, overwrite)


def load_key(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> Key:
    """Read a key file written by save_key: checks format, architecture, tensor names, shapes and dtypes.

    Everything is checked on the header first, before the tensors are read or any memory is spent on
    them (keyfile.read_key_file). Returns the key with its generator frozen and in eval mode.
    Raises KeyFileError (one-line message) for a missing, unreadable, truncated, corrupt, foreign or
    oversized file, or one that is not a regular file.
    """
    generator, metadata, scramble = read_key_file(path, device)
    return Key(generator, metadata, scramble, path=Path(path))


def cached_key(path: str | os.PathLike[str], preset: str | KeyPreset, seed: int | None = None, *,
               steps: int | None = None, device: str | torch.device = "cpu",
               accept: Callable[[Key], bool] = lambda key: True, progress: ProgressCallback | None = None,
               before_training: Callable[[], None] = lambda: None) -> tuple[Key, Key | None]:
    """The key at `path`, trained (train_key, a fresh secret seed where `seed` is None) and saved there
    only when no key is there yet or the one there is not `accept`ed (then it is replaced).

    Returns (the key as loaded from `path`, the Key this call trained or None): the demo and the
    benchmarks keep their keys this way between runs. before_training runs just before a training.
    """
    path = Path(path)
    if path.exists():
        cached = load_key(path, device=device)
        if accept(cached):
            return cached, None
    before_training()
    trained = train_key(preset, new_seed() if seed is None else seed, steps=steps, device=device, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_key(trained, path, overwrite=True)
    return load_key(path, device=device), trained


def find_key(fingerprint: str, folders: Sequence[Path], device: str | torch.device = "cpu",
             on_unusable: Callable[[str], None] = lambda reason: None) -> Key:
    """The key in `folders` (their *.safetensors files) whose fingerprint matches, loaded.

    A file there that is not a usable key (foreign, damaged, a pipe, too large) is skipped, its
    reason passed to on_unusable. Raises KeyFileError if no key matches.
    """
    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.glob("*.safetensors")):
            try:
                loaded = load_key(candidate, device=device)
            except KeyFileError as unusable:
                on_unusable(str(unusable))
                continue
            if loaded.fingerprint == fingerprint:
                return loaded
    searched = ", ".join(str(folder) for folder in folders)
    raise KeyFileError(f"no key with fingerprint {fingerprint[:16]}… in {searched}; give it with --key")
