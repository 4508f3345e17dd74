"""A ready encryptor: the one place where a target, a key, attack settings, a device and a precision
are put together.

The CLI, `avp evaluate`, `avp demo`, the benchmarks and library users all build one here, then
encrypt images in memory (`Encryptor.encrypt` / `stream`) or hand it a folder
(`Encryptor.encrypt_folder`, which jobs.encrypt_folder runs). `attack_settings` is the one builder
of settings: by the target's kind of loss and the recipe, with overrides.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Literal, Sequence

import torch
from PIL import Image

from avpcli.engine import (CLASSIFIER_SETTINGS, FACE_SETTINGS, PRECISIONS, AttackSettings, StopCriteria,
                           autocast_dtype_for, decrypt_grouped, encrypt_batch, measure_images, prepare_models,
                           stopping_past_the_original)
from avpcli.errors import UsageError
from avpcli.images import fit_to_size, load_rgb, png_bytes, png_tensor, to_pil, to_tensor
from avpcli.key import Key, load_key
from avpcli.targets import LossKind, TargetModel, TargetSpec, get_spec, load_target

if TYPE_CHECKING:
    from avpcli.jobs import EventCallback
    from avpcli.manifest import Manifest
    from avpcli.targets.custom import CustomTargetOptions

RECIPES: tuple[str, ...] = ("tuned", "research")
AlignMode = Literal["auto", "never"]

NO_SCRAMBLE_WARNING = ("this key has no scramble (format 1 or --no-scramble): filters of its ciphertexts can show "
                       "the image, and SSIM_d 0.95 is out of reach for most images; a new `avp keygen` key has one")


def resolve_device(device: str = "auto") -> str:
    """'auto' is CUDA when torch sees a GPU (under torchrun each process takes its LOCAL_RANK's), else
    the CPU; asking for CUDA without one is a UsageError."""
    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ['LOCAL_RANK'])}" if "LOCAL_RANK" in os.environ else "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device} was asked for but torch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"the device is auto, cpu, cuda or cuda:N, not {device!r}")
    return device


def precision_dtype(precision: str, device: str) -> torch.dtype | None:
    """The model forwards' dtype for a precision name, with what cannot be asked for as UsageErrors."""
    if precision not in PRECISIONS:
        raise UsageError(f"the precision is one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise UsageError("precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    return autocast_dtype_for(precision, device)


def attack_settings(loss: LossKind, recipe: str = "tuned", *, early_stop: bool = True,
                    max_lowpass_correlation: float | None = None, max_feature_distance: float | None = None,
                    stop_past_original: bool = False, **overrides: Any) -> AttackSettings:
    """The attack settings for a kind of target: the recipe's base with overrides.

    loss: the target's ("embedding" or "classifier"). recipe: "tuned" (FACE_SETTINGS for embedding
    targets) or "research" (the AVIH code's settings, AttackSettings()); classifiers always take
    CLASSIFIER_SETTINGS. early_stop=False runs every iteration; max_lowpass_correlation adds that
    bar to the stop, max_feature_distance replaces its feature bar (embedding targets).
    stop_past_original (the target's TargetSpec.stop_past_original): the tuned recipe's embedding
    settings get the start-side term and bar (engine.stopping_past_the_original).
    Overrides name AttackSettings fields; a None value keeps the base's.
    """
    if recipe not in RECIPES:
        raise UsageError(f"the recipe is 'tuned' or 'research', not {recipe!r}")
    if loss == "classifier":
        base = CLASSIFIER_SETTINGS
    elif recipe == "tuned":
        base = stopping_past_the_original(FACE_SETTINGS) if stop_past_original else FACE_SETTINGS
    else:
        base = AttackSettings()
    chosen = {name: value for name, value in overrides.items() if value is not None}
    unknown = set(chosen) - {field.name for field in dataclasses.fields(AttackSettings)}
    if unknown:
        raise UsageError(f"unknown attack setting(s): {', '.join(sorted(unknown))}")
    if chosen.get("smoothness", "variance") not in ("variance", "distance"):
        raise UsageError("the smoothness is 'variance' or 'distance'")
    if chosen.get("initialization", "noise") not in ("noise", "original", "preimage"):
        raise UsageError("the start (init) is 'preimage', 'noise' or 'original'")
    if chosen.get("iterations", 1) < 1:
        raise UsageError("iterations must be at least 1")
    bars: dict[str, float] = {}
    if max_lowpass_correlation is not None:
        if not 0 <= max_lowpass_correlation <= 1:
            raise UsageError("the low-pass correlation bar must be between 0 and 1")
        bars["max_lowpass_correlation"] = max_lowpass_correlation
    if max_feature_distance is not None:
        if not max_feature_distance > 0:
            raise UsageError("the feature distance bar must be above 0")
        bars["max_feature_distance"] = max_feature_distance
    if not early_stop:
        chosen["stop"] = None
    elif bars:
        chosen["stop"] = dataclasses.replace(chosen.get("stop", base.stop) or StopCriteria(), **bars)
    return dataclasses.replace(base, **chosen)


def target_inputs(image: Image.Image, spec: TargetSpec, align: AlignMode = "auto", all_faces: bool = False,
                  device: str = "cpu") -> list[tuple[torch.Tensor, str]]:
    """Cut an image to the target's input: [(tensor (3, H, W), how it was aligned)], one per face.

    The one place that decides what the target sees of an image: an image already at the input
    size as it is; a face target's photo aligned by MTCNN to its template (the largest face, or every
    face); anything else centre-cropped and resized. NoFaceError where a face target finds no face.
    """
    height, width = spec.input_size
    if image.size == (width, height):
        return [(to_tensor(image), "none (already at the target's input size)")]
    if spec.alignment is None or align == "never":
        return [(to_tensor(fit_to_size(image, spec.input_size)), "centre crop and resize")]
    from avpcli.align import align_faces  # MTCNN loads only when a photo needs it

    faces = align_faces(image, spec.alignment, all_faces=all_faces, device=device)
    return [(to_tensor(face.image), f"mtcnn to the {spec.alignment} template") for face in faces]


def _as_pil(image: Any) -> Image.Image:
    """What encrypt() and decrypt() take for an image, as a PIL RGB image: a path, a PIL image or a
    (3, H, W) tensor (float in [0, 1], or uint8 in 1/255 steps)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype == torch.uint8:
            tensor = tensor.float() / 255
        if tensor.ndim != 3 or tensor.shape[0] != 3:
            raise ValueError(f"an image tensor is (3, H, W); got {tuple(tensor.shape)}")
        return to_pil(tensor.clamp(0, 1))
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(Path(image))
    raise TypeError(f"an image is a path, a PIL image or a tensor, not {type(image).__name__}")


def _as_batch(images: Any) -> list[Any]:
    """A list of single images from one image, a batch tensor (N, 3, H, W) or an iterable of images."""
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        return list(images)
    if isinstance(images, (torch.Tensor, Image.Image, str, os.PathLike)):
        return [images]
    return list(images)


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
        return target_inputs(_as_pil(image), self.spec, align, all_faces, self.device)

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

    def _encrypt_pending(self, pending: list[tuple[int, int, torch.Tensor, str]], noise_seed: int) -> list[Ciphertext]:
        originals = torch.stack([tensor for _, _, tensor, _ in pending])
        seeds = [noise_seed + position * 1000 + face for position, face, _, _ in pending]
        encrypted, engine_metrics = self.encrypt_tensors(originals, seeds)
        written = torch.stack([png_tensor(png_bytes(image.cpu())) for image in encrypted])
        measured = self.measure(originals, written)
        return [Ciphertext(image, original, {**figures, "iterations": metrics.iterations,
                                             "met_targets": meets_bars(figures, self.settings)},
                           position, face, alignment)
                for (position, face, original, alignment), image, figures, metrics
                in zip(pending, written, measured, engine_metrics)]

    def encrypt(self, images: Any, align: AlignMode = "auto", all_faces: bool = False,
                noise_seed: int = 0) -> list[Ciphertext]:
        """Encrypt one image or many (paths, PIL images, tensors (3, H, W) or a batch (N, 3, H, W))."""
        return list(self.stream(_as_batch(images), align, all_faces, noise_seed))

    def encrypt_folder(self, inputs: Path | str | Sequence[Path | str], output: Path | str,
                       on_event: EventCallback | None = None, **run_options: Any) -> Manifest:
        """Encrypt files and folders into `output` (PNGs and avp-manifest.json), resumably.

        run_options are jobs.FolderRun's: align, all_faces, noise_seed, overwrite, shard,
        aligned_output, anonymize, names_map, key_path, follow_links, listed.
        """
        from avpcli.jobs import FolderRun, encrypt_folder

        paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(path) for path in inputs]
        run_options.setdefault("key_path", self.loaded_key.path)  # where --anonymize's names map goes by default
        run = FolderRun(inputs=paths, output=Path(output), **run_options)
        return encrypt_folder(self, run, on_event or (lambda event: None))


def meets_bars(metrics: dict[str, Any], settings: AttackSettings) -> bool:
    """Whether measured figures meet every bar of the settings' stop criteria (the defaults' without one)."""
    stop = settings.stop or StopCriteria()
    return bool(stop.accepts(metrics["feature_distance"], metrics["ssim_encrypted"], metrics["ssim_decrypted"],
                             metrics.get("same_class"), metrics.get("lowpass_correlation")))


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
    given = _as_batch(images)
    results: list[Any] = []
    for start in range(0, len(given), batch_size):
        chunk = given[start:start + batch_size]
        decrypted = decrypt_grouped([(model, to_tensor(_as_pil(image))) for image in chunk], resolved)
        results += [to_pil(image) if isinstance(original, Image.Image) else image
                    for original, image in zip(chunk, decrypted)]
    return results
