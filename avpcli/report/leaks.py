"""What ciphertexts still show: pixel statistics (appendix A.1), and what filters, a face detector and a
second recognizer (the observer) get out of them beside the leak correlations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from avpcli import evaluate
from avpcli.align import detect_faces
from avpcli.engine import decrypt_batch, quantize
from avpcli.images import to_pil
from avpcli.metrics import colour_mean_correlation
from avpcli.report.datasets import identity_of
from avpcli.report.observer import SMALL_GALLERY, Observer
from avpcli.report.pairs import PairedImages
from avpcli.report.render import (Report, histogram_picture, markdown_table, percent, scatter_picture, sheet_picture,
                                  side_by_side)
from avpcli.targets import TargetSpec


def faces_found(images: torch.Tensor, device: str = "cpu") -> list[bool]:
    """Per (3, H, W) image of a batch: whether MTCNN (avp's aligner) finds any face in it, as 8-bit."""
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
        if identity_count < SMALL_GALLERY:
            markdown += f"\n**A small gallery** ({identity_count} identities, fewer than {SMALL_GALLERY}): rates are optimistic.\n"
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
