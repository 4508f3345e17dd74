"""A ready encryptor: the one place where a target, a key, attack settings, a device and a precision
are put together.

The CLI, `avp evaluate`, `avp demo`, the benchmarks and library users all build one here, then
encrypt images in memory (`Encryptor.encrypt` / `stream`) or hand it to a folder run
(`avpcli.jobs.encrypt_folder`). Both go through `Encryptor.encrypt_and_measure`, avp's one
encrypt → 8-bit PNG → read back → measure → judge. Settings come from engine.attack_settings.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image

from avpcli.engine import (RECIPES, AttackSettings, ImageMetrics, attack_settings, decrypt_grouped,  # noqa: F401
                           encrypt_batch, measure_images, meets_bars, precision_dtype, prepare_models, resolve_device)
from avpcli.errors import UsageError
from avpcli.images import png_bytes, png_tensor, to_pil, to_tensor
from avpcli.inputs import AlignMode, as_batch, as_pil, target_inputs  # noqa: F401 - AlignMode, target_inputs: re-exported
from avpcli.key import Key, load_key
from avpcli.targets import TargetModel, TargetSpec, get_spec, load_target

if TYPE_CHECKING:
    from avpcli.targets.custom import CustomTargetOptions

NO_SCRAMBLE_WARNING = ("this key has no scramble (format 1 or --no-scramble): filters of its ciphertexts can show "
                       "the image, and SSIM_d 0.95 is out of reach for most images; a new `avp keygen` key has one")

# A ciphertext's 8-bit PNG is handed to this, which writes it and returns the image read back (the
# in-memory API decodes the bytes instead); every figure is measured on what it returns.
StorePng = Callable[[int, bytes], torch.Tensor]


@dataclass(frozen=True)
class MeasuredCiphertext:
    """One ciphertext as written: its PNG bytes, the image read back from them, and its figures
    (the engine's iterations and met_targets, every bar judged on the image read back)."""

    png: bytes
    image: torch.Tensor
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Ciphertext:
    """One encrypted image: the ciphertext on the 8-bit grid, what the target saw, and the figures.

    image: (3, H, W) float on the 1/255 grid, on the CPU; `png()` gives its bytes as written.
    original: the target's input that was encrypted (the aligned face chip or resized image).
    metrics: measured on the 8-bit image: feature_distance, cosine, ssim_encrypted, ssim_decrypted,
        lowpass_correlation (same_class for classifiers), iterations and met_targets (every bar met).
    source: the position of its image in the input; face: which face of it (1 for the first).
    """

    image: torch.Tensor
    original: torch.Tensor
    metrics: dict[str, Any]
    source: int
    face: int = 1
    alignment: str = ""

    def pil(self) -> Image.Image:
        return to_pil(self.image)

    def png(self) -> bytes:
        return png_bytes(self.image)


def engine_figures(reached: ImageMetrics) -> dict[str, Any]:
    """The figures of one ciphertext as measure() gives them, from what the engine measured of it."""
    figures = dataclasses.asdict(reached)
    del figures["iterations"], figures["met_targets"]
    if figures["same_class"] is None:  # embedding targets have no class
        del figures["same_class"]
    return figures


class Encryptor:
    """A target and a key ready to encrypt: models on the device in the right memory layout, and settings.

    target: a registered name (see `avp targets`), onnx:PATH / torchscript:PATH with target_options,
        or a loaded TargetModel. key: a Key or the path of a key file.
    settings: AttackSettings to use as they are; by default attack_settings(target's loss, recipe,
        **overrides) builds them (stop_past_original: the target's TargetSpec value unless given).
        recipe "research" encrypts for the key's plain G, as the paper does.
    device: "auto", "cpu", "cuda" or "cuda:N". precision: the forwards' dtype ("auto": bf16 where it
        pays, see engine.default_autocast_dtype). compile: torch.compile the models (CUDA).
    batch_size: images optimized together.
    """

    def __init__(self, target: str | TargetModel, key: Key | str | os.PathLike[str],
                 settings: AttackSettings | None = None, *, recipe: str = "tuned",
                 weights: str | os.PathLike[str] | None = None, target_options: CustomTargetOptions | None = None,
                 device: str = "auto", precision: str = "auto", compile: bool = False, batch_size: int = 8,
                 **overrides: Any) -> None:
        if batch_size < 1:
            raise UsageError("the batch size must be at least 1")
        if recipe not in RECIPES:
            raise UsageError(f"the recipe is 'tuned' or 'research', not {recipe!r}")
        self.device = resolve_device(device)
        dtype = precision_dtype(precision, self.device)
        # Everything that can be checked without loading anything first: a usage error costs no model load.
        self.spec: TargetSpec = target.spec if isinstance(target, TargetModel) else get_spec(target, target_options)
        if settings is None:
            # The target's choice unless the caller makes it (None keeps the target's, like any override).
            past = overrides.pop("stop_past_original", None)
            settings = attack_settings(self.spec.loss, recipe, **overrides,
                                       stop_past_original=self.spec.stop_past_original if past is None else past)
        elif overrides:
            raise UsageError("give either settings or overrides of the recipe's settings, not both")
        self.settings = dataclasses.replace(settings, autocast_dtype=dtype)
        self.loaded_key = key if isinstance(key, Key) else load_key(key, device=self.device)
        # A caller's own target is copied: preparing it (device, memory layout) must not change theirs.
        model = copy.deepcopy(target) if isinstance(target, TargetModel) else load_target(
            target, Path(weights) if weights is not None else None, target_options)
        self.recipe = recipe
        # The research recipe reproduces the paper, whose key is G alone; the manifest records which.
        # The key's modules are copied too: a Key may serve other encryptors and decrypt() on other devices.
        key_model = copy.deepcopy(self.loaded_key.model_for(scramble=self.loaded_key.scrambles and recipe == "tuned"))
        self.target, self.key = prepare_models(model.to(self.device), key_model.to(self.device), self.device, compile)
        self.key_fingerprint = self.loaded_key.fingerprint
        # Tags the source files in a folder run's manifest, so that a rerun knows a file it did before
        # without the manifest holding a plain hash of a photo (which would confirm a guessed photo).
        self.source_tag_secret = self.loaded_key.derived_secret("source-tag")
        self.batch_size = batch_size
        self.weights_label = Path(weights).name if weights is not None else "default"

    @property
    def key_scrambles(self) -> bool:
        """Whether ciphertexts are made for G∘S (False: for the plain G)."""
        return bool(getattr(self.key, "scrambles", False))

    def __repr__(self) -> str:  # never the key's secrets, only its fingerprint's start
        return (f"Encryptor(target={self.spec.name!r}, key={self.key_fingerprint[:16]}…, recipe={self.recipe!r}, "
                f"device={self.device!r})")

    def prepare(self, image: Any, align: AlignMode = "auto", all_faces: bool = False) -> list[tuple[torch.Tensor, str]]:
        """What the target sees of one image (see target_inputs)."""
        return target_inputs(as_pil(image), self.spec, align, all_faces, self.device)

    def encrypt_tensors(self, originals: torch.Tensor, noise_seeds: Sequence[int] = ()) -> tuple[torch.Tensor, list]:
        """The engine on a batch of target inputs (N, 3, H, W): (ciphertexts on the 8-bit grid, ImageMetrics)."""
        result = encrypt_batch(originals.to(self.device), self.target, self.key, self.settings, self.spec.loss,
                               noise_seeds=noise_seeds)
        return result.encrypted, result.metrics

    def measure(self, originals: torch.Tensor, encrypted: torch.Tensor) -> list[dict[str, Any]]:
        """The figures of 8-bit ciphertexts (e.g. read back from PNGs) against their originals."""
        return measure_images(originals.to(self.device), encrypted.to(self.device), self.target, self.key,
                              self.spec.loss)

    def stream(self, images: Iterable[Any], align: AlignMode = "auto", all_faces: bool = False,
               noise_seed: int = 0) -> Iterator[Ciphertext]:
        """Encrypt images batch by batch, yielding each ciphertext as its batch finishes.

        Memory holds one batch whatever the number of images. Figures are measured on the PNG
        as it would be written and read back. An image that cannot be used raises (ImageError,
        NoFaceError); a folder run records such files and goes on instead.
        """
        pending: list[tuple[int, int, torch.Tensor, str]] = []
        for position, image in enumerate(images):
            for face, (tensor, alignment) in enumerate(self.prepare(image, align, all_faces), 1):
                pending.append((position, face, tensor, alignment))
            while len(pending) >= self.batch_size:
                yield from self._encrypt_pending(pending[:self.batch_size], noise_seed)
                del pending[:self.batch_size]
        if pending:
            yield from self._encrypt_pending(pending, noise_seed)

    def encrypt_and_measure(self, originals: torch.Tensor, noise_seeds: Sequence[int],
                            store: StorePng | None = None) -> list[MeasuredCiphertext]:
        """Encrypt a batch of target inputs, write each 8-bit PNG (`store`; by default only decoded back in
        memory), and measure and judge what was written: the one encrypt-then-measure of avp, which the
        in-memory API and folder runs both call."""
        encrypted, engine_metrics = self.encrypt_tensors(originals, noise_seeds)
        encrypted = encrypted.cpu()
        pngs = [png_bytes(image) for image in encrypted]
        written = torch.stack([store(index, data) if store is not None else png_tensor(data)
                               for index, data in enumerate(pngs)])
        # A PNG that reads back as exactly the 8-bit image the engine measured last (the state its stop
        # was decided on) has the engine's figures; only one that reads back otherwise is measured again.
        # This spares a full-precision forward of the target and the key per image.
        measured = [engine_figures(reached) for reached in engine_metrics]
        differing = [index for index, (read_back, engine_image) in enumerate(zip(written, encrypted))
                     if not torch.equal(read_back, engine_image)]
        if differing:
            for index, figures in zip(differing, self.measure(originals[differing], written[differing])):
                measured[index] = figures
        return [MeasuredCiphertext(data, image, {**figures, "iterations": reached.iterations,
                                                 "met_targets": meets_bars(figures, self.settings)})
                for data, image, figures, reached in zip(pngs, written, measured, engine_metrics)]

    def _encrypt_pending(self, pending: list[tuple[int, int, torch.Tensor, str]], noise_seed: int) -> list[Ciphertext]:
        originals = torch.stack([tensor for _, _, tensor, _ in pending])
        seeds = [noise_seed + position * 1000 + face for position, face, _, _ in pending]
        return [Ciphertext(written.image, original, written.metrics, position, face, alignment)
                for (position, face, original, alignment), written
                in zip(pending, self.encrypt_and_measure(originals, seeds))]

    def encrypt(self, images: Any, align: AlignMode = "auto", all_faces: bool = False,
                noise_seed: int = 0) -> list[Ciphertext]:
        """Encrypt one image or many (paths, PIL images, tensors (3, H, W) or a batch (N, 3, H, W))."""
        return list(self.stream(as_batch(images), align, all_faces, noise_seed))


def decrypt(images: Any, key: Key | str | os.PathLike[str], *, research: bool = False,
            device: str = "auto", batch_size: int = 16) -> list[Any]:
    """Apply a key to ciphertexts (paths of PNGs, PIL images or tensors): the images on the 8-bit grid.

    Returns PIL images for PIL inputs and (3, H, W) tensors on the CPU otherwise. research=True
    decrypts ciphertexts of the research recipe (made for the key's plain G).
    """
    resolved = resolve_device(device)
    loaded = key if isinstance(key, Key) else load_key(key, device=resolved)
    model = loaded.model_for(scramble=loaded.scrambles and not research)
    if next(model.parameters()).device != torch.device(resolved):
        model = copy.deepcopy(model).to(resolved)  # the caller's Key stays where it is
    given = as_batch(images)
    results: list[Any] = []
    for start in range(0, len(given), batch_size):
        chunk = given[start:start + batch_size]
        decrypted = decrypt_grouped([(model, to_tensor(as_pil(image))) for image in chunk], resolved)
        results += [to_pil(image) if isinstance(original, Image.Image) else image
                    for original, image in zip(chunk, decrypted)]
    return results
