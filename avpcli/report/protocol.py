"""The paper's protocol: Table 1 (quality of the ciphertexts), Table 2 (identification: Original,
AVP-ONE, AVP-ALL) and Table 4 (classification accuracy on originals vs ciphertexts)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from avpcli import evaluate
from avpcli.encryptor import Encryptor
from avpcli.engine import decrypt_batch
from avpcli.events import EventCallback, ignore_events
from avpcli.report.datasets import class_folders
from avpcli.report.pairs import PairedImages, encrypt_selection, original_chips
from avpcli.report.render import Report, markdown_table, percent, sheet_picture
from avpcli.targets import TargetSpec


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


def identification_report(probes: dict[str, list[Path]], gallery: list[tuple[str, Path]], encryptor: Encryptor,
                          work: Path, turns_per_identity: int | None = None, encrypt_gallery: bool = True,
                          on_event: EventCallback = ignore_events) -> Report:
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
        kept, chips = original_chips(paths, spec, device)
        if len(kept) >= 2:
            probe_paths[identity], plain_probes[identity] = kept, evaluate.features(target, chips.to(device))
    gallery_paths, gallery_chips = original_chips([path for _, path in gallery], spec, device)
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


def classification_report(dataset: Path, encryptor: Encryptor, work: Path, per_class: int | None = None,
                          on_event: EventCallback = ignore_events) -> Report:
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
