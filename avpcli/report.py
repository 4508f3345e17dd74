"""`avp evaluate`'s reports: folders in, encrypt what is missing, run avpcli.evaluate, write JSON + markdown + PNGs.

Each analysis writes `<name>.json`, `<name>.md` and `<name>-*.png` into one report folder and returns
the markdown's path. Nothing here prints; progress goes through the same `on_event` callback as jobs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image, ImageDraw
from torch import nn

from avpcli import evaluate
from avpcli.engine import AttackSettings, decrypt_batch
from avpcli.errors import AvpError, ImageError, NoFaceError, UsageError
from avpcli.images import atomic_write_bytes, contact_sheet, contained_path, find_images, read_png, to_pil
from avpcli.jobs import EncryptJob, EventCallback, encrypt_folder
from avpcli.manifest import read_manifest
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


def prepare_original(path: Path, spec: TargetSpec, align: str = "auto", device: str = "cpu") -> list[torch.Tensor]:
    """What the target sees of one file, exactly as `avp encrypt` prepares it (one tensor per face)."""
    from avpcli.jobs import prepare_faces

    return [tensor for tensor, _ in prepare_faces(path, spec, align, all_faces=True, device=device)]


def read_pairs(originals: Path, encrypted: Path, spec: TargetSpec, device: str = "cpu",
               aligned: Path | None = None) -> PairedImages:
    """Pair every ciphertext in an encrypted folder (its manifest) with its aligned original.

    `originals` is either the folder of aligned originals (EncryptJob.aligned_output: files named like
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


@dataclass
class Encryptor:
    """What encrypting a selection needs: the target, its spec, a key and the attack settings."""

    spec: TargetSpec
    target: nn.Module
    key: nn.Module
    key_fingerprint: str
    settings: AttackSettings
    device: str = "cpu"
    batch_size: int = 8
    noise_seed: int = 0


def encrypt_selection(files: dict[str, Path], work: Path, encryptor: Encryptor,
                      on_event: EventCallback = lambda event: None) -> PairedImages:
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
    job = EncryptJob(inputs=[selection], output=work / "encrypted", spec=encryptor.spec, target=encryptor.target,
                     key=encryptor.key, key_fingerprint=encryptor.key_fingerprint, settings=encryptor.settings,
                     batch_size=encryptor.batch_size, device=encryptor.device, noise_seed=encryptor.noise_seed,
                     aligned_output=work / "aligned", follow_links=True)  # the selection's links are ours
    encrypt_folder(job, on_event)
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
            ["|low-pass correlation (x', x)| ↓", summary["lowpass_correlation_abs"]["mean"],
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


def split_identities(folder: Path, min_images: int) -> tuple[dict[str, list[Path]], list[tuple[str, Path]]]:
    """LFW layout: identities with more than `min_images` images are probes; every other image is gallery."""
    if not folder.is_dir():
        raise UsageError(f"not a folder of identities: {folder}")
    probes: dict[str, list[Path]] = {}
    gallery: list[tuple[str, Path]] = []
    for person in sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")):
        images = [source.path for source in find_images([person])]
        if len(images) > min_images:
            probes[person.name] = images
        else:
            gallery += [(person.name, image) for image in images]
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
    summaries = {"training pairs (key A)": evaluate.summarize(on_training),
                 "held-out (key A)": evaluate.summarize(same),
                 "other key (key B)": evaluate.summarize(other)}
    markdown = (f"# Paired-data attack: a generator trained on {len(training.names)} key-A pairs, {steps} steps\n\n"
                + markdown_table(["ciphertexts", "images", "SSIM(attacker(x'), x) mean", "min", "max"],
                                 [[name, s["count"], s["mean"], s["min"], s["max"]] for name, s in summaries.items()]))
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
            "held_out": dict(zip(held_out.names, same)), "other_key": dict(zip(other_key_pairs.names, other))}
    return Report("attack", data, markdown, pictures)


# ------------------------------------------------------------------------------------------------
# Statistics (appendix A.1) and face detection on ciphertexts


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
        from avpcli.align import detect_faces

        for name, images in (("original", pairs.originals), ("encrypted", pairs.encrypted)):
            detection[name] = evaluate.detection_rate([bool(detect_faces(to_pil(image), device)) for image in images])
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


__all__ = ["Report", "PairedImages", "Encryptor", "read_pairs", "encrypt_selection", "quality_report",
           "identification_report", "classification_report", "cross_key_report", "attack_report",
           "statistics_report", "split_identities", "class_folders", "markdown_table", "histogram_picture"]
