"""`avp evaluate`'s reports: folders in, encrypt what is missing, run avpcli.evaluate, write JSON + markdown + PNGs.

Each analysis writes `<name>.json`, `<name>.md` and `<name>-*.png` into one report folder and returns
the markdown's path. Nothing here prints; progress goes through the same `on_event` callback as jobs.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw
from torch import nn

from avpcli import evaluate
from avpcli.engine import decrypt_batch, quantize
from avpcli.errors import AvpError, ImageError, NoFaceError, UsageError
from avpcli.images import atomic_write_bytes, contact_sheet, contained_path, find_images, read_png, to_pil
from avpcli.encryptor import Encryptor
from avpcli.jobs import EventCallback
from avpcli.manifest import read_manifest
from avpcli.metrics import colour_mean_correlation, lowpass_correlation, ssim
from avpcli.targets import TargetSpec

# ------------------------------------------------------------------------------------------------
# Writing


def number(value: Any, digits: int = 3) -> str:
    """A table cell: fixed digits, 'undefined' for a missing or NaN number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def percent(fraction: float | None) -> str:
    """A table cell for an accuracy: percent with one decimal, 'undefined' when there is none."""
    return number(None if fraction is None else 100 * fraction, 1)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; numbers are formatted with `number`."""
    def cell(value: Any) -> str:
        return value if isinstance(value, str) else number(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return evaluate.nan_to_none(value)
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value


@dataclass
class Report:
    """One analysis's output: data for JSON, markdown text, and pictures (name → PIL image)."""

    name: str
    data: dict[str, Any]
    markdown: str
    pictures: dict[str, Image.Image] = field(default_factory=dict)

    def write(self, folder: Path) -> Path:
        """Write `<name>.json`, `<name>.md` (pictures linked) and `<name>-<picture>.png`; returns the .md path."""
        folder.mkdir(parents=True, exist_ok=True)
        links = []
        for picture_name, picture in self.pictures.items():
            file_name = f"{self.name}-{picture_name}.png"
            picture.save(folder / file_name, format="PNG")
            links.append(f"![{picture_name}]({file_name})")
        atomic_write_bytes(folder / f"{self.name}.json",
                           (json.dumps(_json_ready(self.data), indent=2, allow_nan=False) + "\n").encode())
        text = self.markdown + ("\n" + "\n\n".join(links) + "\n" if links else "")
        atomic_write_bytes(folder / f"{self.name}.md", text.encode())
        return folder / f"{self.name}.md"


# ------------------------------------------------------------------------------------------------
# Pictures (PIL only)

_ORIGINAL_COLOUR = (40, 90, 200)
_ENCRYPTED_COLOUR = (220, 80, 30)


def histogram_picture(series: dict[str, torch.Tensor], height: int = 140) -> Image.Image:
    """Grey-level histograms (256 bins each) as bar charts stacked vertically, one per series, labelled."""
    colours = [_ORIGINAL_COLOUR, _ENCRYPTED_COLOUR, (30, 150, 60)]
    width, margin = 256 * 2, 16
    picture = Image.new("RGB", (width + 2 * margin, len(series) * (height + 2 * margin)), "white")
    draw = ImageDraw.Draw(picture)
    for row, (label, counts) in enumerate(series.items()):
        top = row * (height + 2 * margin) + margin
        peak = max(int(counts.max()), 1)
        for level, count in enumerate(counts.tolist()):
            bar = round(height * count / peak)
            left = margin + 2 * level
            draw.rectangle([left, top + height - bar, left + 1, top + height], fill=colours[row % len(colours)])
        draw.line([margin, top + height, margin + width, top + height], fill="black")
        draw.text((margin + 4, top - 2), f"{label} (0..255 grey levels)", fill="black")
    return picture


def scatter_picture(first: torch.Tensor, second: torch.Tensor, label: str, size: int = 256) -> Image.Image:
    """Adjacent-pixel pairs (x = pixel, y = its neighbour, 0–255) as dots, like the paper's Fig. 9."""
    margin = 16
    picture = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([margin, margin, margin + size, margin + size], outline="black")
    scale = size / 255
    for x, y in zip(first.tolist(), second.tolist()):
        px, py = margin + x * scale, margin + size - y * scale
        draw.point((px, py), fill=_ENCRYPTED_COLOUR)
    draw.text((margin + 2, 2), label, fill="black")
    return picture


def sheet_picture(rows: Sequence[Sequence[torch.Tensor]]) -> Image.Image:
    """images.contact_sheet as a PIL image."""
    return to_pil(contact_sheet(rows))


def side_by_side(pictures: Sequence[Image.Image], gap: int = 8) -> Image.Image:
    """Pictures in one row on white."""
    width = sum(picture.width for picture in pictures) + gap * (len(pictures) - 1)
    height = max(picture.height for picture in pictures)
    canvas = Image.new("RGB", (width, height), "white")
    left = 0
    for picture in pictures:
        canvas.paste(picture, (left, 0))
        left += picture.width + gap
    return canvas


# ------------------------------------------------------------------------------------------------
# Reading and making (original, ciphertext) pairs


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


def prepare_original(path: Path, spec: TargetSpec, align: str = "auto", device: str = "cpu") -> list[torch.Tensor]:
    """What the target sees of one file, exactly as `avp encrypt` prepares it (one tensor per face)."""
    from avpcli.jobs import prepare_faces

    return [tensor for tensor, _ in prepare_faces(path, spec, align, all_faces=True, device=device)]


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
                      on_event: EventCallback = lambda event: None, noise_seed: int = 0) -> PairedImages:
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
    encryptor.encrypt_folder([selection], work / "encrypted", on_event, noise_seed=noise_seed,
                             aligned_output=work / "aligned", follow_links=True)  # the selection's links are ours
    # Ciphertexts kept from an earlier run may have no aligned original saved: those are aligned again.
    return read_pairs(selection, work / "encrypted", encryptor.spec, encryptor.device, aligned=work / "aligned")


# ------------------------------------------------------------------------------------------------
# Quality + contact sheet


def quality_report(pairs: PairedImages, target: nn.Module, spec: TargetSpec, key: nn.Module,
                   wrong_key: nn.Module | None = None, sheet_rows: int = 8) -> Report:
    """Table 1 per image and summarized, and the contact sheet original | encrypted | decrypted | wrong key."""
    result = evaluate.measure_quality(pairs.originals, pairs.encrypted, target, key, spec.loss, pairs.names)
    summary = result.summary()
    threshold = spec.match_threshold
    rows = [["SSIM_e (x', x) ↓", summary["ssim_encrypted"]["mean"], summary["ssim_encrypted"]["max"]],
            ["SSIM_d (G(x'), x) ↑", summary["ssim_decrypted"]["mean"], summary["ssim_decrypted"]["min"]],
            ["feature distance ↓", summary["feature_distance"]["mean"], summary["feature_distance"]["max"]],
            ["cosine ↑", summary["cosine"]["mean"], summary["cosine"]["min"]],
            ["low-pass correlation (x', x), absolute ↓", summary["lowpass_correlation_abs"]["mean"],
             summary["lowpass_correlation_abs"]["max"]]]
    if result.same_class is not None:
        rows.append(["same top-1 class ↑", summary["same_class"]["mean"], summary["same_class"]["min"]])
    markdown = (f"# Quality ({spec.name}, {len(result.names)} images)\n\n"
                + markdown_table(["metric", "mean", "worst"], rows)
                + ("" if threshold is None else f"\n{spec.name}'s same-person threshold: distance < {threshold}.\n")
                + "\n" + markdown_table(
                    ["image", "SSIM_e", "SSIM_d", "distance", "cosine", "low-pass corr."],
                    [list(row) for row in zip(result.names, result.ssim_encrypted, result.ssim_decrypted,
                                              result.feature_distance, result.cosine,
                                              result.lowpass_correlation)])
                + "\nLow-pass correlation: Pearson's r of the Gaussian-blurred (σ 3 px) brightness of x' and x; "
                "near 0 means a blur does not show x in x' (docs/PRIVACY.md).\n")
    shown = min(sheet_rows, len(pairs.names))
    decrypted = decrypt_batch(pairs.encrypted[:shown], key).cpu()
    columns = [pairs.originals[:shown], pairs.encrypted[:shown], evaluate.blur_reveal(pairs.encrypted[:shown]),
               decrypted]
    caption = "original | encrypted | encrypted, blurred and contrast-stretched | decrypted"
    if wrong_key is not None:
        columns.append(decrypt_batch(pairs.encrypted[:shown], wrong_key).cpu())
        caption += " | decrypted with a wrong key"
    sheet = sheet_picture([[column[i] for column in columns] for i in range(shown)])
    markdown += f"\nContact sheet: {caption}.\n"
    data = {"target": spec.name, "images": len(result.names), "summary": summary,
            "per_image": asdict(result), "skipped": pairs.skipped}
    return Report("quality", data, markdown, {"contact-sheet": sheet})


# ------------------------------------------------------------------------------------------------
# Identification (Table 2)


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


def _plain_chips(paths: Sequence[Path], spec: TargetSpec, device: str) -> tuple[list[Path], torch.Tensor]:
    kept, chips = [], []
    for path in paths:
        try:
            chips.append(prepare_original(path, spec, device=device)[0])
            kept.append(path)
        except (ImageError, NoFaceError):
            continue
    return kept, torch.stack(chips) if chips else torch.zeros(0, 3, *spec.input_size)


def identification_report(probes: dict[str, list[Path]], gallery: list[tuple[str, Path]], encryptor: Encryptor,
                          work: Path, turns_per_identity: int | None = None, encrypt_gallery: bool = True,
                          on_event: EventCallback = lambda event: None) -> Report:
    """Table 2: Original, AVP-ONE and AVP-ALL accuracy by the paper's protocol (§4.1).

    Every probe image and gallery image is aligned; the first `turns_per_identity` images of each probe
    identity (all by default) take turns as the inserted gallery image, and those are encrypted.
    AVP-ALL also encrypts the whole gallery (unless `encrypt_gallery` is False). Probes stay plain.
    Original is reported both over every turn and over the turns that AVP-ONE uses.
    """
    spec, target, device = encryptor.spec, encryptor.target, encryptor.device
    plain_probes: dict[str, torch.Tensor] = {}
    probe_paths: dict[str, list[Path]] = {}
    for identity, paths in probes.items():
        kept, chips = _plain_chips(paths, spec, device)
        if len(kept) >= 2:
            probe_paths[identity], plain_probes[identity] = kept, evaluate.features(target, chips.to(device))
    gallery_paths, gallery_chips = _plain_chips([path for _, path in gallery], spec, device)
    gallery_identity = {path: identity for identity, path in gallery}
    gallery_labels = [gallery_identity[path] for path in gallery_paths]
    plain_gallery = evaluate.features(target, gallery_chips.to(device))
    if plain_gallery.numel() == 0:
        plain_gallery = torch.zeros(0, next(iter(plain_probes.values())).shape[1])

    turns = {identity: list(range(len(paths) if turns_per_identity is None else min(turns_per_identity, len(paths))))
             for identity, paths in probe_paths.items()}
    to_encrypt = {f"probe/{identity}/{probe_paths[identity][j].name}": probe_paths[identity][j]
                  for identity, chosen in turns.items() for j in chosen}
    if encrypt_gallery:
        to_encrypt.update({f"gallery/{path.parent.name}/{path.name}": path for path in gallery_paths})
    pairs = encrypt_selection(to_encrypt, work, encryptor, on_event)
    encrypted_features = dict(zip(pairs.sources, evaluate.features(target, pairs.encrypted.to(device))))

    # An inserted image whose encryption failed keeps no turn in any column, so the columns compare alike.
    done_turns = {identity: [j for j in chosen if f"probe/{identity}/{probe_paths[identity][j].name}" in encrypted_features]
                  for identity, chosen in turns.items()}
    inserted_encrypted = {}
    for identity, plain in plain_probes.items():
        rows = [encrypted_features.get(f"probe/{identity}/{path.name}", plain[j])
                for j, path in enumerate(probe_paths[identity])]
        inserted_encrypted[identity] = torch.stack(rows)

    original_all = evaluate.identify_turns(plain_probes, plain_probes, plain_gallery, gallery_labels)
    original = evaluate.identify_turns(plain_probes, plain_probes, plain_gallery, gallery_labels, done_turns)
    one = evaluate.identify_turns(plain_probes, inserted_encrypted, plain_gallery, gallery_labels, done_turns)
    columns = {"original_all_turns": original_all, "original": original, "avp_one": one}
    missing_gallery = 0
    if encrypt_gallery:
        encrypted_gallery, all_labels = [], []
        for path, label, plain in zip(gallery_paths, gallery_labels, plain_gallery):
            feature = encrypted_features.get(f"gallery/{path.parent.name}/{path.name}")
            missing_gallery += feature is None
            encrypted_gallery.append(feature if feature is not None else plain)
            all_labels.append(label)
        gallery_tensor = torch.stack(encrypted_gallery) if encrypted_gallery else plain_gallery
        columns["avp_all"] = evaluate.identify_turns(plain_probes, inserted_encrypted, gallery_tensor, all_labels,
                                                     done_turns)
    quality = evaluate.measure_quality(pairs.originals, pairs.encrypted, target, encryptor.key, spec.loss, pairs.names)
    header = ["target", "Original (all turns)", "Original", "AVP-ONE"] + (["AVP-ALL"] if encrypt_gallery else [])
    row = [spec.name] + [percent(columns[name].accuracy) for name in columns]
    sizes = {"probe_identities": len(plain_probes), "probe_images": sum(len(p) for p in probe_paths.values()),
             "turns": sum(len(t) for t in done_turns.values()), "gallery": len(gallery_paths),
             "encrypted": len(pairs.names), "gallery_left_plain": missing_gallery}
    markdown = (f"# Identification ({spec.name}), accuracy in %\n\n" + markdown_table(header, [row])
                + f"\n{sizes['probe_identities']} probe identities ({sizes['probe_images']} images), "
                f"{sizes['turns']} turns with an encrypted inserted image, a gallery of {sizes['gallery']} images. "
                "Nearest neighbour by Euclidean distance on the target's output; probes stay plain.\n")
    data = {"target": spec.name, "sizes": sizes,
            "accuracy": {name: result.to_dict() for name, result in columns.items()},
            "quality_of_encrypted": quality.summary(), "skipped": pairs.skipped}
    return Report("identification", data, markdown)


# ------------------------------------------------------------------------------------------------
# Classification (Table 4 / 5)


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


def classification_report(dataset: Path, encryptor: Encryptor, work: Path, per_class: int | None = None,
                          on_event: EventCallback = lambda event: None) -> Report:
    """Table 4: top-1 accuracy on originals vs their ciphertexts (labels = sorted class folder names)."""
    spec, target = encryptor.spec, encryptor.target
    classes, files = class_folders(dataset, per_class)
    pairs = encrypt_selection(files, work, encryptor, on_event)
    labels = torch.tensor([classes.index(Path(source).parts[0]) for source in pairs.sources])
    original_logits = evaluate.features(target, pairs.originals.to(encryptor.device))
    encrypted_logits = evaluate.features(target, pairs.encrypted.to(encryptor.device))
    accuracy = {"original": evaluate.top1_accuracy(original_logits, labels),
                "encrypted": evaluate.top1_accuracy(encrypted_logits, labels),
                "same_prediction": float((original_logits.argmax(1) == encrypted_logits.argmax(1)).float().mean())}
    quality = evaluate.measure_quality(pairs.originals, pairs.encrypted, target, encryptor.key, spec.loss, pairs.names)
    summary = quality.summary()
    markdown = (f"# Classification ({spec.name}, {len(pairs.names)} images, {len(classes)} classes)\n\n"
                + markdown_table(["target", "Original top-1 %", "Encrypted top-1 %", "same prediction %",
                                  "SSIM_e", "SSIM_d"],
                                 [[spec.name, percent(accuracy["original"]), percent(accuracy["encrypted"]),
                                   percent(accuracy["same_prediction"]), summary["ssim_encrypted"]["mean"],
                                   summary["ssim_decrypted"]["mean"]]]))
    shown = min(8, len(pairs.names))
    sheet = sheet_picture([[pairs.originals[i], pairs.encrypted[i], decrypt_batch(pairs.encrypted[i:i + 1], encryptor.key)[0].cpu()]
                           for i in range(shown)])
    data = {"target": spec.name, "classes": classes, "images": len(pairs.names), "accuracy": accuracy,
            "quality": summary, "skipped": pairs.skipped}
    return Report("classification", data, markdown + "\nContact sheet: original | encrypted | decrypted.\n",
                  {"contact-sheet": sheet})


# ------------------------------------------------------------------------------------------------
# Security: keys of other seeds, the paired-data attack


def cross_key_report(pairs: PairedImages, key: nn.Module, other_keys: dict[str, nn.Module],
                     sheet_rows: int = 6) -> Report:
    """Fig. 5: SSIM(G'(x'), x) for keys of other seeds (should be low) beside the right key's (high)."""
    results = {"right key": evaluate.decryption_ssim(pairs.encrypted, pairs.originals, key)}
    for name, other in other_keys.items():
        results[name] = evaluate.decryption_ssim(pairs.encrypted, pairs.originals, other)
    summaries = {name: evaluate.summarize(values) for name, values in results.items()}
    markdown = (f"# Decryption with keys of other seeds ({len(pairs.names)} ciphertexts)\n\n"
                + markdown_table(["key", "SSIM_d mean", "min", "max"],
                                 [[name, s["mean"], s["min"], s["max"]] for name, s in summaries.items()]))
    shown = min(sheet_rows, len(pairs.names))
    keys = [key, *other_keys.values()]
    sheet = sheet_picture([[pairs.originals[i], pairs.encrypted[i]]
                           + [decrypt_batch(pairs.encrypted[i:i + 1], k)[0].cpu() for k in keys] for i in range(shown)])
    markdown += "\nContact sheet: original | encrypted | right key | " + " | ".join(other_keys) + ".\n"
    return Report("cross-key", {"ssim_decrypted": results, "summary": summaries, "names": pairs.names}, markdown,
                  {"contact-sheet": sheet})


def attack_report(training: PairedImages, held_out: PairedImages, other_key_pairs: PairedImages, key: nn.Module,
                  steps: int = 200, seed: int = 0, progress=None) -> Report:
    """Fig. 6: an attacker trained on key-A pairs, applied to held-out key-A and to key-B ciphertexts."""
    attacker = evaluate.train_attacker(training.encrypted, training.originals, key, steps=steps, seed=seed,
                                       progress=progress)
    same = evaluate.decryption_ssim(held_out.encrypted, held_out.originals, attacker)
    other = evaluate.decryption_ssim(other_key_pairs.encrypted, other_key_pairs.originals, attacker)
    on_training = evaluate.decryption_ssim(training.encrypted, training.originals, attacker)
    # What an attacker scores without looking at the ciphertext: the mean of its training originals
    # (an average face) against each held-out original. Above this, the ciphertext told it something.
    average = training.originals.float().mean(dim=0, keepdim=True)

    def against_average(originals: torch.Tensor) -> list[float]:
        return ssim(average.expand_as(originals), originals.float()).tolist()

    guess, guess_other = against_average(held_out.originals), against_average(other_key_pairs.originals)
    summaries = {"training pairs (key A)": evaluate.summarize(on_training),
                 "held-out (key A)": evaluate.summarize(same),
                 "other key (key B)": evaluate.summarize(other),
                 "no ciphertext: the training originals' mean vs the held-out originals": evaluate.summarize(guess),
                 "no ciphertext: the same mean vs key B's originals": evaluate.summarize(guess_other)}
    markdown = (f"# Paired-data attack: a generator trained on {len(training.names)} key-A pairs, {steps} steps\n\n"
                + markdown_table(["ciphertexts", "images", "SSIM(attacker(x'), x) mean", "min", "max"],
                                 [[name, s["count"], s["mean"], s["min"], s["max"]] for name, s in summaries.items()])
                + "\nThe last rows are the control: what a guess that ignores the ciphertext scores. An attacker "
                "learns something from ciphertexts only where it beats them.\n")
    shown = min(4, len(held_out.names), len(other_key_pairs.names))
    rows = []
    for i in range(shown):
        rows.append([held_out.originals[i], held_out.encrypted[i], decrypt_batch(held_out.encrypted[i:i + 1], attacker)[0].cpu(),
                     other_key_pairs.originals[i], other_key_pairs.encrypted[i],
                     decrypt_batch(other_key_pairs.encrypted[i:i + 1], attacker)[0].cpu()])
    pictures = {"contact-sheet": sheet_picture(rows)} if rows else {}
    markdown += ("\nContact sheet: key-A original | ciphertext | attacker's output, then the same for key B.\n"
                 if rows else "")
    data = {"steps": steps, "training_pairs": len(training.names), "summary": summaries,
            "held_out": dict(zip(held_out.names, same)), "other_key": dict(zip(other_key_pairs.names, other)),
            "mean_original_guess": {"held_out": dict(zip(held_out.names, guess)),
                                    "other_key": dict(zip(other_key_pairs.names, guess_other))}}
    return Report("attack", data, markdown, pictures)


# ------------------------------------------------------------------------------------------------
# Statistics (appendix A.1) and face detection on ciphertexts


def faces_found(images: torch.Tensor, device: str = "cpu") -> list[bool]:
    """Per (3, H, W) image of a batch: whether MTCNN (avp's aligner) finds any face in it, as 8-bit."""
    from avpcli.align import detect_faces

    return [bool(detect_faces(to_pil(image), device)) for image in images]


def statistics_report(pairs: PairedImages, pairs_per_image: int = 3000, detect: bool = True,
                      device: str = "cpu") -> Report:
    """Adjacent-pixel correlations, grey-level histograms and MTCNN's detection rate, originals vs ciphertexts."""
    correlations = {"original": evaluate.correlation_table(pairs.originals, pairs_per_image),
                    "encrypted": evaluate.correlation_table(pairs.encrypted, pairs_per_image)}
    histograms = {"original": evaluate.grey_histogram(pairs.originals),
                  "encrypted": evaluate.grey_histogram(pairs.encrypted)}
    entropy = {name: evaluate.histogram_entropy(counts) for name, counts in histograms.items()}
    rows = [[name] + [correlations[name][direction]["mean"] for direction in evaluate.DIRECTIONS] + [entropy[name]]
            for name in correlations]
    detection: dict[str, float] = {}
    if detect:
        for name, images in (("original", pairs.originals), ("encrypted", pairs.encrypted)):
            detection[name] = evaluate.detection_rate(faces_found(images, device))
    markdown = (f"# Statistics ({len(pairs.names)} image pairs, {pairs_per_image} random adjacent pairs each)\n\n"
                + markdown_table(["images", "horizontal", "vertical", "diagonal", "histogram entropy (bits)"], rows)
                + "\nCorrelation: Pearson's r of BT.601 grey levels of adjacent pixels, averaged over images; "
                "'undefined' where an image has no variance (a constant image).\n")
    if detect:
        markdown += "\n" + markdown_table(["images", "MTCNN finds a face"],
                                          [[name, percent(rate) + " %"] for name, rate in detection.items()])
    scatter = []
    for name, images in (("original", pairs.originals), ("encrypted", pairs.encrypted)):
        first, second = evaluate.adjacent_pairs(images[0], "horizontal", pairs_per_image)
        scatter.append(scatter_picture(first, second, f"{name}: horizontal neighbours"))
    data = {"images": len(pairs.names), "pairs_per_image": pairs_per_image, "correlation": correlations,
            "histogram": {name: counts.tolist() for name, counts in histograms.items()},
            "histogram_entropy_bits": entropy, "face_detection_rate": detection}
    return Report("statistics", data, markdown,
                  {"histograms": histogram_picture(histograms), "correlation": side_by_side(scatter)})


# ------------------------------------------------------------------------------------------------
# Privacy: what filters, a face detector and a second recognizer get out of ciphertexts

_LFW_FILE = re.compile(r"^(?P<identity>.+)_\d{4}$")


def identity_of(name: str) -> str | None:
    """Whose photo a file is: `Name` for an LFW-style `Name_NNNN.jpg`, else its folder's name (None at the top)."""
    path = Path(name)
    match = _LFW_FILE.match(path.stem)
    if match:
        return match["identity"]
    return path.parent.name or None


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
                 on_event: EventCallback = lambda event: None) -> Gallery:
    """Align every photo under folder/<identity>/ to the observer's input (as `avp encrypt` would) and
    take its features; photos without a face are counted and left out."""
    from avpcli.jobs import Event

    photos = [(identity, path) for identity, paths in identity_images(folder).items() for path in paths]
    if not photos:
        raise UsageError(f"{folder} has no images in identity sub-folders")
    kept: list[Path] = []
    chips: list[torch.Tensor] = []
    for done, (_, path) in enumerate(photos, 1):
        found, chip = _plain_chips([path], spec, device)
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
    from avpcli.align import chip_transform, detect_faces, resize_transform
    from avpcli.images import load_rgb

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
    from avpcli.align import warp_affine
    from avpcli.images import to_tensor

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


def privacy_report(pairs: PairedImages, spec: TargetSpec, key: nn.Module, observer: Observer | None = None,
                   detect: bool = True, device: str = "cpu", sheet_rows: int = 8) -> Report:
    """Leak correlations; MTCNN and an observer on every filter of evaluate.REVEAL_FILTERS, for the
    ciphertexts and, for scale, their originals; a contact sheet original | ciphertext | the filter
    under which the observer ranked it best | decrypted."""
    count = len(pairs.names)
    sources = pairs.sources or pairs.names
    identities = [identity_of(source) for source in sources]
    stems = [Path(source).stem for source in sources]
    leaks = evaluate.leak_correlations(pairs.encrypted, pairs.originals)
    colour = colour_mean_correlation(pairs.encrypted, pairs.originals) if count >= 2 else float("nan")

    # The control: uniform noise of the same size, one image per ciphertext and given its identity. A
    # detector or an observer scores on it by chance alone (MTCNN finds "faces" in blurred noise), so a
    # ciphertext leaks only where it scores above the noise.
    noise = quantize(torch.rand(pairs.encrypted.shape, generator=torch.Generator().manual_seed(0)))
    filters: dict[str, dict[str, Any]] = {}
    ranks: dict[str, dict[str, list[int | None]]] = {}
    for reveal in evaluate.REVEAL_FILTERS:
        row: dict[str, Any] = {"description": reveal.description}
        ranks[reveal.name] = {}
        for side, images in (("encrypted", pairs.encrypted), ("original", pairs.originals), ("noise", noise)):
            filtered = reveal.apply(images)
            if detect:
                row[f"detection_{side}"] = evaluate.detection_rate(faces_found(filtered, device))
            if observer is not None:
                ranks[reveal.name][side] = observer.ranks(filtered, identities, stems)
                row[f"observer_{side}"] = evaluate.rank_summary(ranks[reveal.name][side])
        filters[reveal.name] = row

    # The filter that shows each ciphertext best to the observer (the first on ties); without an
    # observer, the classic blur.
    best: list[tuple[str, int | None]] = []
    for index in range(count):
        ranked = [(ranks[name]["encrypted"][index], name) for name in filters
                  if observer is not None and ranks[name]["encrypted"][index] is not None]
        best.append((min(ranked)[1], min(ranked)[0]) if ranked else ("blur3-grey", None))

    identity_count = observer.gallery.identity_count if observer is not None else 0
    leak_summary = {name: evaluate.summarize(values) for name, values in leaks.items()}
    markdown = (f"# Privacy ({spec.name}, {count} ciphertexts)\n\n## What the ciphertexts correlate with\n\n"
                + markdown_table(["measure (luma, ciphertext vs its original)", "mean", "worst"], [
                    ["low-pass r, absolute (Gaussian σ 3)", leak_summary["lowpass_abs"]["mean"], leak_summary["lowpass_abs"]["max"]],
                    ["band-pass r, absolute (DoG σ 1 − σ 4)", leak_summary["bandpass_abs"]["mean"],
                     leak_summary["bandpass_abs"]["max"]],
                    ["edge r (Sobel of a σ 2 blur)", leak_summary["edge"]["mean"], leak_summary["edge"]["max"]],
                    ["colour-mean r across the set (per-image mean R, G, B)", colour, "—"]])
                + "\nNear 0: that view of a ciphertext shows nothing of its original; near 1 it shows it.\n")
    headers, table = ["filter"], []
    sides = ("encrypted", "original", "noise")
    if detect:
        headers += ["MTCNN finds a face: ciphertexts", "originals", "noise (control)"]
    if observer is not None:
        headers += [f"observer {measure}: {label}" if index == 0 else measure
                    for label in ("ciphertexts", "originals", "noise (control)")
                    for index, measure in enumerate(("top-1", "top-10", "median rank"))]
    for name, row in filters.items():
        cells: list[Any] = [f"{name}: {row['description']}"]
        if detect:
            cells += [percent(row[f"detection_{side}"]) + " %" for side in sides]
        if observer is not None:
            for side in sides:
                summary = row[f"observer_{side}"]
                cells += [percent(summary["top1"]) + " %", percent(summary["top10"]) + " %", summary["median_rank"]]
        table.append(cells)
    chance = evaluate.chance_ranks(identity_count) if identity_count else None
    if chance is not None:
        guess = [percent(chance["top1"]) + " %", percent(chance["top10"]) + " %", chance["median_rank"]]
        table.append(["chance (a guess)"] + (["", "", ""] if detect else []) + guess * 3)
    if detect or observer is not None:
        markdown += "\n## Filters a person would try\n\n" + markdown_table(headers, table)
    if observer is not None:
        ranked = filters["none"]["observer_encrypted"]["queries"]
        markdown += (
            f"\nObserver: {observer.spec.name}, a second recognizer (not the target). Each filtered image is "
            f"moved from {spec.name}'s chip to the observer's input by one fixed map, "
            + (f"a similarity transform fitted on {observer.fitted_on} original photos (MTCNN's landmarks aligned "
               "to both templates)" if observer.fitted_on
               else "the similarity transform between the two templates" if spec.alignment and observer.spec.alignment
               else "a plain resize (a model without a face template)")
            + f", then identified among {identity_count} identities ({len(observer.gallery.identities)} gallery "
            f"photos; the very same photo is left out). {ranked} of {count} images could be ranked (their identity "
            "has a photo in the gallery).\n")
        if identity_count < 300:
            markdown += f"\n**A small gallery** ({identity_count} identities, fewer than 300): rates are optimistic.\n"
        fewest, most = observer.gallery.photos_per_identity
        if fewest != most:
            markdown += (f"\n**An unbalanced gallery** ({fewest} to {most} photos per identity): an identity with "
                         "more photos is nearer to any image by chance alone, so the chance row understates what "
                         "a guess scores for those identities.\n")
    markdown += "\n## Per ciphertext\n\n" + markdown_table(
        ["image", "identity", "low-pass abs. r", "band-pass abs. r", "edge r"]
        + (["observer's best filter", "its rank"] if observer is not None else []),
        [[name, identity or "unknown", low, band, edge] + ([best_name, "—" if rank is None else rank]
                                                           if observer is not None else [])
         for name, identity, low, band, edge, (best_name, rank)
         in zip(pairs.names, identities, leaks["lowpass_abs"], leaks["bandpass_abs"], leaks["edge"], best)])

    shown = min(sheet_rows, count)
    decrypted = decrypt_batch(pairs.encrypted[:shown], key).cpu()
    sheet = sheet_picture([[pairs.originals[i], pairs.encrypted[i],
                            evaluate.reveal_filter(best[i][0]).apply(pairs.encrypted[i:i + 1])[0].cpu(), decrypted[i]]
                           for i in range(shown)])
    markdown += ("\nContact sheet: original | ciphertext | "
                 + ("the filter under which the observer ranked it best" if observer is not None
                    else "blurred (σ 3) and contrast-stretched") + " | decrypted.\n")
    data = {"target": spec.name, "images": count, "leak_summary": leak_summary, "colour_mean_correlation": colour,
            "filters": filters,
            "observer": None if observer is None else {
                "name": observer.spec.name, "identities": identity_count,
                "photos_per_identity": list(observer.gallery.photos_per_identity),
                "gallery_images": len(observer.gallery.identities), "gallery_skipped": observer.gallery.skipped,
                "transform": observer.to_observer.tolist(), "fitted_on": observer.fitted_on, "chance": chance},
            "per_image": {"names": pairs.names, "identities": identities, **leaks,
                          "best_filter": [name for name, _ in best], "best_rank": [rank for _, rank in best],
                          "ranks": ranks},
            "skipped": pairs.skipped}
    return Report("privacy", data, markdown, {"contact-sheet": sheet})


# ------------------------------------------------------------------------------------------------
# Key recovery from (ciphertext, original) pairs


def key_recovery_report(training: PairedImages, held_out: PairedImages, key: nn.Module, pair_counts: Sequence[int],
                        rules: Sequence[str] = evaluate.RECOVERY_RULES, sheet_rows: int = 4) -> Report:
    """The curve pairs → share of the scramble recovered → SSIM of the attacker's held-out reconstructions."""
    curve = evaluate.key_recovery_curve(training.encrypted, training.originals, held_out.encrypted,
                                        held_out.originals, key, pair_counts, rules)
    height, width = training.encrypted.shape[-2:]
    per_image = bool(getattr(getattr(key, "scramble", None), "per_image", False))
    baseline = evaluate.summarize(evaluate.decryption_ssim(held_out.encrypted, held_out.originals, nn.Identity()))
    right_key = evaluate.summarize(evaluate.decryption_ssim(held_out.encrypted, held_out.originals, key))
    rows = [[result.pairs, result.rule, percent(result.recovered) + " %", percent(result.source) + " %",
             result.ssim_unscrambled, result.lowpass_unscrambled, result.ssim_decrypted] for result in curve]
    truth = evaluate.key_plan(key, height, width, held_out.encrypted)
    perfect = quantize(truth.apply(held_out.encrypted.float()))
    perfect_ssim = float(ssim(perfect, held_out.originals.float()).mean())
    perfect_lowpass = float(lowpass_correlation(perfect, held_out.originals.float()).abs().mean())
    # What knowing faces alone gives: the attacker's training originals averaged, as a guess for every one.
    mean_face = training.originals[:max(pair_counts)].float().mean(dim=0, keepdim=True).expand_as(held_out.originals)
    mean_ssim = float(ssim(quantize(mean_face), held_out.originals.float()).mean())
    mean_lowpass = float(lowpass_correlation(mean_face, held_out.originals.float()).abs().mean())
    markdown = (f"# Key recovery from (ciphertext, original) pairs ({height}×{width}, "
                f"{len(held_out.names)} held-out ciphertexts)\n\n"
                "An attacker who knows avp's method and holds N pairs of one key guesses the key's scramble S: "
                "for every original value, the ciphertext value that matches it best over the N pairs "
                "(rule 'correlation': largest |Pearson r|, from 3 pairs on; 'distance': nearest in value, or in "
                "1 − value). Recovered: the share of the 3·H·W values whose source position and inversion are "
                f"both right (a guess: 1 in {6 * height * width:,}). The attacker then applies the guessed S to "
                "ciphertexts it has not seen.\n\n"
                + ("**This key scrambles every image with its own plan** (a nonce in the ciphertext picks it, "
                   "docs/KEY.md): 'recovered' is the agreement with each held-out ciphertext's own plan, which "
                   "no pair of another image shows.\n\n" if per_image else "")
                + markdown_table(["pairs N", "rule", "recovered", "source right", "SSIM(guessed S(x′), x)",
                                  "low-pass abs. r", "SSIM(G(guessed S(x′)), x), attacker holding G too"], rows)
                + f"\nFor scale, on the same held-out ciphertexts: no attack, SSIM(x′, x) {number(baseline['mean'])}; "
                f"a perfect guess (the key's own S), SSIM(S(x′), x) {number(perfect_ssim)} with low-pass abs. r "
                f"{number(perfect_lowpass)} (S(x′) is the original under the noise that G removes); the mean of the "
                f"attacker's {max(pair_counts)} training originals as the guess for every face (what knowing that "
                f"they are aligned faces gives), SSIM {number(mean_ssim)} with low-pass abs. r {number(mean_lowpass)}; "
                f"the key itself, SSIM {number(right_key['mean'])}.\n")
    best = {count: max((result for result in curve if result.pairs == count), key=lambda result: result.recovered)
            for count in pair_counts}
    shown = min(sheet_rows, len(held_out.names))
    columns = [held_out.originals[:shown], held_out.encrypted[:shown]]
    columns += [quantize(result.plan.apply(held_out.encrypted[:shown].float())) for result in best.values()]
    columns += [perfect[:shown], decrypt_batch(held_out.encrypted[:shown], key).cpu()]
    sheet = sheet_picture([[column[i] for column in columns] for i in range(shown)])
    markdown += ("\nContact sheet: original | ciphertext | the attacker's S(x′) with "
                 + ", ".join(f"{count} pair{'s' if count > 1 else ''} ({result.rule})" for count, result in best.items())
                 + " | S(x′) with the key's own S | decrypted with the key.\n")
    data = {"size": [height, width], "training_pairs": len(training.names), "held_out": held_out.names,
            "scramble_per_image": per_image,
            "curve": [result.to_dict() for result in curve],
            "reference": {"ssim_encrypted": baseline, "ssim_right_key": right_key, "ssim_perfect_guess": perfect_ssim,
                          "lowpass_perfect_guess": perfect_lowpass, "ssim_mean_face": mean_ssim,
                          "lowpass_mean_face": mean_lowpass}}
    return Report("key-recovery", data, markdown, {"contact-sheet": sheet})


__all__ = ["Report", "PairedImages", "read_pairs", "encrypt_selection", "quality_report",
           "identification_report", "classification_report", "cross_key_report", "attack_report",
           "statistics_report", "split_identities", "class_folders", "markdown_table", "histogram_picture",
           "privacy_report", "key_recovery_report", "load_gallery", "fit_observer_transform", "Observer", "Gallery"]
