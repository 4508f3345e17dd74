"""(original, ciphertext) pairs: read back from an encrypted folder and its originals, or made by
encrypting chosen files; and what the target sees of an original."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from avpcli.encryptor import Encryptor
from avpcli.errors import AvpError, ImageError, NoFaceError, UsageError
from avpcli.events import EventCallback, ignore_events
from avpcli.images import contained_path, read_png, save_png
from avpcli.inputs import AlignMode, prepare_file
from avpcli.jobs import encrypt_folder
from avpcli.manifest import read_manifest
from avpcli.targets import TargetSpec


@dataclass
class PairedImages:
    """Aligned originals and their 8-bit ciphertexts read back from disk, in one order."""

    names: list[str]
    originals: torch.Tensor
    encrypted: torch.Tensor
    sources: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def subset(self, indices: Sequence[int]) -> "PairedImages":
        index = torch.tensor(list(indices), dtype=torch.long)
        return PairedImages([self.names[i] for i in indices], self.originals[index], self.encrypted[index],
                            [self.sources[i] for i in indices] if self.sources else [])

    def split(self, held_out: int | None, training: int | None = None) -> tuple["PairedImages", "PairedImages"]:
        """(the attacker's pairs, the held-out pairs): the last `held_out` pairs in order are held out
        (None: all beyond the `training` first); the attacker gets the first `training` of the rest
        (None: all of them). UsageError where the counts do not fit the pairs there are."""
        total = len(self.names)
        if held_out is None:
            if training is None or not 1 <= training < total:
                raise UsageError(f"{total} pairs cannot give {training} to the attacker and keep at least one held out")
            held_out = total - training
        if not 1 <= held_out < total:
            raise UsageError(f"{total} pairs cannot keep {held_out} held out and give the attacker at least one")
        available = total - held_out
        if training is not None and not 1 <= training <= available:
            raise UsageError(f"{total} pairs cannot give {training} to the attacker and keep {held_out} held out")
        return (self.subset(range(available if training is None else training)),
                self.subset(range(available, total)))


def prepare_original(path: Path, spec: TargetSpec, align: AlignMode = "auto",
                     device: str = "cpu") -> list[torch.Tensor]:
    """What the target sees of one file, exactly as `avp encrypt` prepares it (one tensor per face)."""
    return [tensor for tensor, _ in prepare_file(path, spec, align, all_faces=True, device=device)]


def original_chips(paths: Sequence[Path], spec: TargetSpec, device: str = "cpu") -> tuple[list[Path], torch.Tensor]:
    """The target's input of each file's first face, (N, 3, H, W), and the files it holds: a file that
    is no image or shows no face is left out."""
    kept, chips = [], []
    for path in paths:
        try:
            chips.append(prepare_original(path, spec, device=device)[0])
            kept.append(path)
        except (ImageError, NoFaceError):
            continue
    return kept, torch.stack(chips) if chips else torch.zeros(0, 3, *spec.input_size)


def read_pairs(originals: Path, encrypted: Path, spec: TargetSpec, device: str = "cpu",
               aligned: Path | None = None) -> PairedImages:
    """Pair every ciphertext in an encrypted folder (its manifest) with its aligned original.

    `originals` is either the folder of aligned originals (FolderRun.aligned_output: files named like
    the ciphertexts) or the folder that was encrypted, whose files are then aligned again the way the
    manifest records.
    """
    manifest = read_manifest(encrypted)
    align = manifest.settings.get("alignment", "auto")
    names, plain, cipher, sources, skipped = [], [], [], [], []
    for entry in manifest.files:
        if entry.get("status") != "ok":
            continue
        output = entry.get("output")
        try:
            ciphertext = read_png(contained_path(encrypted, output))
            # The originals are the user's own folder (for encrypt_selection, a folder of links): links are followed.
            chips = [contained_path(aligned, output)] if aligned is not None else []
            chips.append(contained_path(originals, output, follow_links=True))
            chips = [chip for chip in chips if chip.is_file() and tuple(read_png(chip).shape[-2:]) == tuple(spec.input_size)]
            if chips:
                original = read_png(chips[0])
            else:
                faces = prepare_original(contained_path(originals, entry.get("source"), follow_links=True), spec, align,
                                         device)
                original = faces[entry.get("face", 1) - 1]
        except (OSError, ImageError, NoFaceError, IndexError, TypeError) as problem:
            skipped.append({"output": str(output), "reason": str(problem) or type(problem).__name__})
            continue
        names.append(output)
        sources.append(entry["source"])
        plain.append(original)
        cipher.append(ciphertext)
    if not names:
        raise AvpError(f"no (original, ciphertext) pair could be read from {encrypted} and {originals}")
    return PairedImages(names, torch.stack(plain), torch.stack(cipher), sources, skipped)


def encrypt_selection(files: dict[str, Path], work: Path, encryptor: Encryptor,
                      on_event: EventCallback = ignore_events, noise_seed: int = 0) -> PairedImages:
    """Encrypt chosen files (relative name → path) into `work/encrypted`, aligned originals into `work/aligned`.

    The selection is a folder of symbolic links (`work/selection`), so outputs keep the relative
    names and a rerun resumes: ciphertexts already in `work/encrypted` are kept.
    """
    selection = work / "selection"
    for relative, path in files.items():
        link = selection / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            if link.is_symlink():
                link.unlink()
            os.symlink(path.resolve(), link)
    encrypt_folder(encryptor, [selection], work / "encrypted", on_event, noise_seed=noise_seed,
                   aligned_output=work / "aligned", follow_links=True)  # the selection's links are ours
    # Ciphertexts kept from an earlier run may have no aligned original saved: those are aligned again.
    return read_pairs(selection, work / "encrypted", encryptor.spec, encryptor.device, aligned=work / "aligned")


def save_originals(pairs: PairedImages, folder: Path) -> dict[str, Path]:
    """Each pair's original as a PNG in `folder`, named like its ciphertext: the files to encrypt them
    again with another key (encrypt_selection); returns name → path."""
    files = {}
    for name, image in zip(pairs.names, pairs.originals):
        save_png(image, folder / name)
        files[name] = folder / name
    return files
