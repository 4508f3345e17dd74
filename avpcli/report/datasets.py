"""Data set layouts the reports read: one folder per identity (LFW) or per class, and whose photo a file is."""

from __future__ import annotations

import re
from pathlib import Path

from avpcli.errors import UsageError
from avpcli.images import find_images

_LFW_FILE = re.compile(r"^(?P<identity>.+)_\d{4}$")


def identity_images(folder: Path) -> dict[str, list[Path]]:
    """LFW layout: identity (sub-folder name, hidden ones skipped) → its images, both sorted."""
    if not folder.is_dir():
        raise UsageError(f"not a folder of identities: {folder}")
    return {person.name: [source.path for source in find_images([person])]
            for person in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))}


def split_identities(folder: Path, min_images: int) -> tuple[dict[str, list[Path]], list[tuple[str, Path]]]:
    """LFW layout: identities with more than `min_images` images are probes; every other image is gallery."""
    probes: dict[str, list[Path]] = {}
    gallery: list[tuple[str, Path]] = []
    for identity, images in identity_images(folder).items():
        if len(images) > min_images:
            probes[identity] = images
        else:
            gallery += [(identity, image) for image in images]
    if not probes:
        raise UsageError(f"no identity in {folder} has more than {min_images} images; lower --min-images")
    return probes, gallery


def class_folders(folder: Path, per_class: int | None) -> tuple[list[str], dict[str, Path]]:
    """A class-per-folder data set: class names (sorted: their index is the label) and files by relative name."""
    if not folder.is_dir():
        raise UsageError(f"not a folder of class folders: {folder}")
    classes = sorted(path.name for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))
    if not classes:
        raise UsageError(f"{folder} has no class sub-folders")
    files: dict[str, Path] = {}
    for name in classes:
        images = [source.path for source in find_images([folder / name])]
        for path in images[:per_class] if per_class else images:
            files[f"{name}/{path.name}"] = path
    return classes, files


def identity_of(name: str) -> str | None:
    """Whose photo a file is: `Name` for an LFW-style `Name_NNNN.jpg`, else its folder's name (None at the top)."""
    path = Path(name)
    match = _LFW_FILE.match(path.stem)
    if match:
        return match["identity"]
    return path.parent.name or None
