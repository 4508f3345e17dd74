"""The observer: a second real recognizer (not the target) that tries to identify filtered ciphertexts
among a gallery of identities' photos."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from avpcli import evaluate
from avpcli.align import chip_transform, detect_faces, resize_transform, warp_affine
from avpcli.errors import ImageError, UsageError
from avpcli.events import Event, EventCallback, ignore_events
from avpcli.images import load_rgb, to_pil, to_tensor
from avpcli.report.datasets import identity_images
from avpcli.report.pairs import original_chips
from avpcli.targets import TargetSpec, load_target

# Fewer identities than this make the observer's rates optimistic (the report and a warning say so).
SMALL_GALLERY = 300


def default_observer(target: str) -> str:
    """The second recognizer for a target: MobileFaceNet (foamliu) watches dlib's ciphertexts, dlib the others'."""
    return "mobilefacenet-foamliu" if target == "dlib" else "dlib"


@dataclass
class Gallery:
    """The observer's features of a folder of identities' photos, with each photo's identity and file stem."""

    features: torch.Tensor
    identities: list[str]
    stems: list[str]
    skipped: int = 0

    @property
    def identity_count(self) -> int:
        return len(set(self.identities))

    @property
    def photos_per_identity(self) -> tuple[int, int]:
        """The fewest and the most photos any identity has (0, 0 for an empty gallery)."""
        counts = Counter(self.identities).values()
        return (min(counts), max(counts)) if counts else (0, 0)


def load_gallery(folder: Path, observer: nn.Module, spec: TargetSpec, device: str = "cpu",
                 on_event: EventCallback = ignore_events) -> Gallery:
    """Align every photo under folder/<identity>/ to the observer's input (as `avp encrypt` would) and
    take its features; photos without a face are counted and left out."""
    photos = [(identity, path) for identity, paths in identity_images(folder).items() for path in paths]
    if not photos:
        raise UsageError(f"{folder} has no images in identity sub-folders")
    kept: list[Path] = []
    chips: list[torch.Tensor] = []
    for done, (_, path) in enumerate(photos, 1):
        found, chip = original_chips([path], spec, device)
        kept += found
        chips += list(chip)
        on_event(Event("progress", done=done, total=len(photos)))
    identity = {path: name for name, path in photos}
    features = evaluate.features(observer, torch.stack(chips).to(device)) if chips else torch.zeros(0, 0)
    return Gallery(features, [identity[path] for path in kept], [path.stem for path in kept], len(photos) - len(kept))


def fit_observer_transform(photos: Sequence[Path], target: TargetSpec, observer: TargetSpec,
                           device: str = "cpu") -> tuple[Any, int]:
    """One 2x3 map from the target's chips to the observer's, and how many photos it was fitted on.

    MTCNN's landmarks in each original photo give that face's chip for both templates
    (align.chip_transform); photos that are chips already, or without a face, do not count. Targets
    without a face template get a plain resize.
    """
    if target.alignment is None or observer.alignment is None:
        return resize_transform(target.input_size, observer.input_size), 0
    landmarks = []
    for path in photos:
        try:
            image = load_rgb(path)
        except (ImageError, OSError):
            continue
        if image.size == (target.input_size[1], target.input_size[0]):
            continue
        faces = detect_faces(image, device)
        if faces:
            landmarks.append(faces[0][2])
    return chip_transform(landmarks, target.alignment, observer.alignment), len(landmarks)


def warp_chips(images: torch.Tensor, to_chip: Any, size: tuple[int, int]) -> torch.Tensor:
    """Every (3, H, W) image warped by one 2x3 map into a (height, width) chip (bilinear, edges repeated)."""
    return torch.stack([to_tensor(warp_affine(to_pil(image), to_chip, size)) for image in images]).to(images.device)


@dataclass
class Observer:
    """A second real recognizer (not the target) that identifies filtered ciphertexts in a gallery.

    to_observer: the fixed 2x3 map from the target's chip to the observer's input, fitted on
    `fitted_on` original photos (0: the templates alone, or a plain resize). device: the model's.
    """

    spec: TargetSpec
    model: nn.Module
    gallery: Gallery
    to_observer: Any
    fitted_on: int = 0
    device: str = "cpu"

    def ranks(self, images: torch.Tensor, identities: Sequence[str | None], stems: Sequence[str]) -> list[int | None]:
        """Rank of each image's identity among the gallery's (evaluate.identity_ranks), its own photo left out."""
        chips = warp_chips(images, self.to_observer, tuple(self.spec.input_size))
        queries = evaluate.features(self.model, chips.to(self.device))
        excluded = [{index for index, stem in enumerate(self.gallery.stems) if stem == own} for own in stems]
        ranks = evaluate.identity_ranks(queries, [name or "" for name in identities], self.gallery.features,
                                        self.gallery.identities, excluded)
        return [rank if name else None for rank, name in zip(ranks, identities)]


def make_observer(name: str, gallery: Path, target: TargetSpec, photos: Sequence[Path], weights: Path | None = None,
                  device: str = "cpu", on_event: EventCallback = ignore_events) -> Observer:
    """The observer `name` (a registered target) ready to rank: its gallery's features and the map from
    the target's chips, fitted on the original `photos` (fit_observer_transform).

    on_event gets a "stage" event (source: what runs) before the gallery's photos are aligned, their
    "progress", and a "warning" (reason) for a gallery of fewer than SMALL_GALLERY identities.
    """
    model = load_target(name, weights).to(device)
    on_event(Event("stage", source=f"gallery for {name}"))
    photos_gallery = load_gallery(gallery, model, model.spec, device, on_event)
    if photos_gallery.identity_count < SMALL_GALLERY:
        on_event(Event("warning", reason=f"the gallery has {photos_gallery.identity_count} identities, fewer than "
                                         f"{SMALL_GALLERY}: the observer's rates are optimistic"))
    transform, fitted = fit_observer_transform(photos, target, model.spec, device)
    return Observer(model.spec, model, photos_gallery, transform, fitted, device)
