"""Check registered targets with real weights: MobileFaceNet LFW verification, CIFAR-10 ResNet top-1.

LFW pairs: from ../shared/data/lfw.csv, identities with >= 2 images give positive pairs and images of
different identities give negative pairs (seeded, 600 + 600 by default). Faces are aligned with
avpcli.align (MTCNN, the face nearest the photo centre) to each target's template, and separately cut
by a fixed centre crop for comparison. Accuracy is the standard LFW 10-fold protocol: the cosine
threshold is chosen on 9 folds and applied to the 10th; mean and standard deviation over the folds.

Run: python -m benchmarks.real_weights_accuracy [--pairs 600] [--data PATH]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from avpcli import NoFaceError, load_target
from avpcli.images import to_tensor
from benchmarks.common import data_folder, read_lfw

FACE_TARGETS = {
    "mobilefacenet": "weights/mobilefacenet_xiaoccer/068.ckpt",
    "mobilefacenet-foamliu": "weights/mobilefacenet_foamliu/mobilefacenet.pt",
}
CIFAR_TARGETS = {"cifar-resnet20": "resnet20-12fca82f.th", "cifar-resnet56": "resnet56-4bfd9763.th"}
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def build_pairs(data: Path, count: int, seed: int = 0) -> list[tuple[str, str, bool]]:
    by_identity: dict[str, list[str]] = defaultdict(list)
    for photo in read_lfw(data):
        by_identity[photo.identity].append(photo.file)
    rng = random.Random(seed)
    multi = {name: sorted(paths) for name, paths in by_identity.items() if len(paths) >= 2}
    positives = [(a, b, True) for paths in multi.values() for a, b in itertools.combinations(paths, 2)]
    positives = rng.sample(sorted(positives), count)
    pool = sorted({path for a, b, _ in positives for path in (a, b)})
    identity_of = {path: name for name, paths in by_identity.items() for path in paths}
    negatives: set[tuple[str, str, bool]] = set()
    while len(negatives) < count:
        a, b = rng.sample(pool, 2)
        if identity_of[a] != identity_of[b]:
            negatives.add((min(a, b), max(a, b), False))
    return positives + sorted(negatives)


def centre_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    height, width = size
    crop_height = 120
    crop_width = round(crop_height * width / height)
    left, top = (image.width - crop_width) // 2, (image.height - crop_height) // 2 + 5
    return image.crop((left, top, left + crop_width, top + crop_height)).resize((width, height), Image.BILINEAR)


def aligned_chip(image: Image.Image, template: str) -> Image.Image | None:
    from avpcli.align import align_faces

    try:
        faces = align_faces(image, template, all_faces=True)
    except NoFaceError:
        return None
    centre = np.array([image.width / 2, image.height / 2])
    nearest = min(faces, key=lambda face: np.linalg.norm(np.array(face.box).reshape(2, 2).mean(0) - centre))
    return nearest.image


def ten_fold_accuracy(similarity: np.ndarray, same: np.ndarray) -> tuple[float, float, float]:
    order = np.random.default_rng(0).permutation(len(same))
    folds = np.array_split(order, 10)
    thresholds = np.unique(similarity)
    accuracies, chosen = [], []
    for fold in folds:
        train = np.setdiff1d(order, fold)
        train_acc = [((similarity[train] >= t) == same[train]).mean() for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        chosen.append(best)
        accuracies.append(((similarity[fold] >= best) == same[fold]).mean())
    return float(np.mean(accuracies)), float(np.std(accuracies)), float(np.mean(chosen))


def embed(target, chips: list[Image.Image]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([target(torch.stack([to_tensor(c) for c in chips[i : i + 64]])) for i in range(0, len(chips), 64)])


def lfw_verification(data: Path, pair_count: int) -> None:
    pairs = build_pairs(data, pair_count)
    paths = sorted({p for a, b, _ in pairs for p in (a, b)})
    same = np.array([s for _, _, s in pairs])
    print(f"LFW: {pair_count} positive + {pair_count} negative pairs over {len(paths)} images (seed 0)")
    for name, weights in FACE_TARGETS.items():
        if not (data / weights).is_file():
            print(f"{name}: skipped, {data / weights} not present")
            continue
        target = load_target(name, data / weights)
        template = target.spec.alignment
        images = {p: Image.open(data / p).convert("RGB") for p in paths}
        chips = {"centre crop": [centre_crop(images[p], target.spec.input_size) for p in paths]}
        started, missed, aligned = time.time(), 0, []
        for path in paths:
            chip = aligned_chip(images[path], template)
            if chip is None:
                missed += 1
                chip = centre_crop(images[path], target.spec.input_size)
            aligned.append(chip)
        chips[f"MTCNN -> {template}"] = aligned
        for how, chip_list in chips.items():
            embeddings = dict(zip(paths, embed(target, chip_list)))
            similarity = np.array([float(embeddings[a] @ embeddings[b]) for a, b, _ in pairs])
            mean, std, threshold = ten_fold_accuracy(similarity, same)
            print(f"{name:22s} {how:20s} accuracy {100 * mean:.2f}% +- {100 * std:.2f} (10-fold, mean cosine threshold {threshold:.3f})")
        print(f"{name:22s} alignment: {missed} of {len(paths)} photos without a face (centre crop used), {time.time() - started:.0f} s")


def cifar_accuracy(data: Path) -> None:
    files = [(f, label) for label, name in enumerate(CIFAR_CLASSES) for f in sorted((data / "cifar10" / name).glob("*.png"))]
    images = torch.stack([to_tensor(Image.open(f)) for f, _ in files])
    labels = torch.tensor([label for _, label in files])
    for name, filename in CIFAR_TARGETS.items():
        weights = data / "weights" / "cifar10_resnet_akamaster" / filename
        if not weights.is_file():
            print(f"{name}: skipped, {weights} not present")
            continue
        target = load_target(name, weights)
        with torch.no_grad():
            predictions = torch.cat([target(images[i : i + 250]).argmax(1) for i in range(0, len(images), 250)])
        correct = int((predictions == labels).sum())
        print(f"{name:22s} CIFAR-10 top-1 {100 * correct / len(files):.1f}% ({correct}/{len(files)} test images)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=data_folder(),
                        help="shared data (default: ../shared/data beside the repo, or $AVP_DATA)")
    parser.add_argument("--pairs", type=int, default=600)
    parser.add_argument("--skip-lfw", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, data {args.data}")
    cifar_accuracy(args.data)
    if not args.skip_lfw:
        lfw_verification(args.data, args.pairs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
