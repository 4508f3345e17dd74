"""The paper's protocol and security analyses (§4, appendix A.1): tensors and modules in, results out.

Every function here is pure computation: no files, no printing. `avpcli.report` reads folders,
encrypts what is missing, calls these and writes the report.

Conventions: images are (N, 3, H, W) or (3, H, W) float tensors in [0, 1]; features are (N, D)
outputs of a `TargetModel` (already L2-normalized where the target's spec says so, raw for dlib),
so nearest neighbours are always taken by Euclidean distance on the target's own output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from avpcli.engine import LossKind, decrypt_batch, measure_images, quantize
from avpcli.metrics import gaussian_blur, luminance, ssim

Direction = Literal["horizontal", "vertical", "diagonal"]
DIRECTIONS: tuple[Direction, ...] = ("horizontal", "vertical", "diagonal")
_OFFSETS: dict[str, tuple[int, int]] = {"horizontal": (0, 1), "vertical": (1, 0), "diagonal": (1, 1)}
# ITU-R BT.601 luma weights: correlation and histograms are taken on grey levels, as in the
# image-encryption literature the paper's appendix follows.
_LUMA = (0.299, 0.587, 0.114)


# ------------------------------------------------------------------------------------------------
# Summaries


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, standard deviation, min and max of the defined (non-NaN) values, and how many were NaN.

    Statistics of an empty set are None (JSON null, "undefined" in the tables).
    """
    defined = [float(value) for value in values if not math.isnan(float(value))]
    if not defined:
        return {"count": 0, "undefined": len(values), "mean": None, "std": None, "min": None, "max": None}
    mean = sum(defined) / len(defined)
    variance = sum((value - mean) ** 2 for value in defined) / len(defined)
    return {"count": len(defined), "undefined": len(values) - len(defined), "mean": mean,
            "std": math.sqrt(variance), "min": min(defined), "max": max(defined)}


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN: an undefined number is written as null."""
    return None if math.isnan(value) else value


# ------------------------------------------------------------------------------------------------
# Quality (Table 1)


@dataclass
class QualityResult:
    """SSIM_e = SSIM(x', x), SSIM_d = SSIM(G(x'), x) and the feature match, per image and summarized."""

    names: list[str]
    ssim_encrypted: list[float]
    ssim_decrypted: list[float]
    feature_distance: list[float]
    cosine: list[float]
    lowpass_correlation: list[float] = field(default_factory=list)
    same_class: list[bool] | None = None

    def summary(self) -> dict[str, dict]:
        summary = {metric: summarize(getattr(self, metric))
                   for metric in ("ssim_encrypted", "ssim_decrypted", "feature_distance", "cosine")}
        summary["lowpass_correlation_abs"] = summarize([abs(value) for value in self.lowpass_correlation])
        if self.same_class is not None:
            summary["same_class"] = summarize([float(flag) for flag in self.same_class])
        return summary


def measure_quality(originals: torch.Tensor, encrypted: torch.Tensor, target: nn.Module, key: nn.Module,
                    loss_kind: LossKind, names: Sequence[str] | None = None, batch_size: int = 32) -> QualityResult:
    """Table 1 for given 8-bit ciphertexts (as read from disk) of aligned originals.

    The same measurements as the manifest's (engine.measure_images), batched and gathered per metric.
    """
    rows: list[dict] = []
    for start in range(0, originals.shape[0], batch_size):
        rows += measure_images(originals[start:start + batch_size], encrypted[start:start + batch_size],
                               target, key, loss_kind)
    names = list(names) if names is not None else [str(index) for index in range(originals.shape[0])]
    return QualityResult(
        names=names,
        ssim_encrypted=[row["ssim_encrypted"] for row in rows],
        ssim_decrypted=[row["ssim_decrypted"] for row in rows],
        feature_distance=[row["feature_distance"] for row in rows],
        cosine=[row["cosine"] for row in rows],
        lowpass_correlation=[row["lowpass_correlation"] for row in rows],
        same_class=[row["same_class"] for row in rows] if loss_kind == "classifier" else None,
    )


@torch.no_grad()
def features(target: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The target's outputs (N, D) for images (N, 3, H, W), in batches, as float32 on the CPU."""
    target.eval()
    if images.shape[0] == 0:
        return torch.zeros(0, 0)
    return torch.cat([target(images[start:start + batch_size].float()).float().cpu()
                      for start in range(0, images.shape[0], batch_size)])


# ------------------------------------------------------------------------------------------------
# Identification (paper §4.1, Table 2)


@dataclass
class IdentificationResult:
    """Nearest-neighbour identification over probe turns: correct / total queries, per identity too."""

    correct: int
    total: int
    turns: int
    per_identity: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else float("nan")

    def to_dict(self) -> dict:
        return {"accuracy": nan_to_none(self.accuracy), "correct": self.correct, "total": self.total,
                "turns": self.turns, "per_identity": {name: list(value) for name, value in self.per_identity.items()}}


def identify_turns(
    probes: dict[str, torch.Tensor],
    inserted: dict[str, torch.Tensor],
    gallery: torch.Tensor,
    gallery_labels: Sequence[str],
    turns: dict[str, Sequence[int]] | None = None,
) -> IdentificationResult:
    """The paper's identification protocol on features.

    probes: identity → (n, D) features of all its (plain) images.
    inserted: identity → (n, D) features of the same images as they are put into the gallery
        (the plain features for "Original", the ciphertexts' for AVP-ONE / AVP-ALL).
    gallery: (G, D) features of the gallery (plain, or encrypted for AVP-ALL); gallery_labels: their
        identities (any label may repeat; a probe identity may appear too).
    turns: identity → indices of its images that take a turn as the inserted one (default: all).

    For each turn (identity p, image j): image j joins the gallery with label p and every other image
    of p is identified by its nearest neighbour (Euclidean) in that gallery; a query is correct when
    the neighbour's label is p. Ties go to the inserted image (it is listed first).
    """
    if gallery.shape[0] != len(gallery_labels):
        raise ValueError("one gallery label per gallery feature is needed")
    labels = list(gallery_labels)
    correct = total = turn_count = 0
    per_identity: dict[str, tuple[int, int]] = {}
    for identity, queries in probes.items():
        candidates = inserted[identity]
        if candidates.shape != queries.shape:
            raise ValueError(f"{identity}: inserted features {tuple(candidates.shape)} differ from probes {tuple(queries.shape)}")
        count = queries.shape[0]
        chosen = list(range(count)) if turns is None or identity not in turns else list(turns[identity])
        if gallery.shape[0]:
            gallery_distances = torch.cdist(queries.double(), gallery.double())  # (n, G)
            nearest_gallery, nearest_index = gallery_distances.min(dim=1)
        else:
            nearest_gallery = torch.full((count,), float("inf"), dtype=torch.float64)
            nearest_index = torch.zeros(count, dtype=torch.long)
        inserted_distances = torch.cdist(queries.double(), candidates.double())  # (query, inserted)
        right = asked = 0
        for j in chosen:
            for k in range(count):
                if k == j:
                    continue
                asked += 1
                if inserted_distances[k, j] <= nearest_gallery[k]:
                    right += 1
                elif labels[int(nearest_index[k])] == identity:
                    right += 1
        per_identity[identity] = (right, asked)
        correct, total, turn_count = correct + right, total + asked, turn_count + len(chosen)
    return IdentificationResult(correct, total, turn_count, per_identity)


# ------------------------------------------------------------------------------------------------
# Classification (Table 4 / 5)


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose largest logit is at the label's index (NaN for no rows)."""
    if logits.shape[0] == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())


# ------------------------------------------------------------------------------------------------
# Keys of other seeds (Fig. 5) and the paired-data attack (Fig. 6)


@torch.no_grad()
def decryption_ssim(encrypted: torch.Tensor, originals: torch.Tensor, key: nn.Module) -> list[float]:
    """SSIM(G(x'), x) per image for a key G, with the 8-bit rounding a decrypted PNG gets."""
    return ssim(decrypt_batch(encrypted.float(), key), originals.float()).tolist()


def train_attacker(
    encrypted: torch.Tensor,
    originals: torch.Tensor,
    like: nn.Module,
    steps: int = 200,
    batch_size: int = 8,
    learning_rate: float = 2e-3,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """Train a generator of the key's architecture to map ciphertexts to originals (L1 loss, Adam).

    `like` is the key whose architecture the attacker copies (a KeyGenerator, or a KeyModel whose G
    is one: its ngf, blocks and norm); the attacker knows the architecture and the training recipe,
    not the seed or the scramble. Returns the attacker frozen, in eval mode.
    """
    from avpcli.key import KeyGenerator

    like = getattr(like, "generator", like)

    if encrypted.shape != originals.shape or encrypted.shape[0] == 0:
        raise ValueError("the attacker needs (encrypted, original) pairs of one shape")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        attacker = KeyGenerator(like.ngf, like.blocks, like.norm).to(encrypted.device)
    sampler = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(attacker.parameters(), lr=learning_rate)
    attacker.train()
    for step in range(steps):
        # Cosine decay: the last steps settle instead of bouncing.
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))
        # BatchNorm needs two samples in training mode; a single pair is simply repeated.
        pick = torch.randint(0, encrypted.shape[0], (max(2, min(batch_size, encrypted.shape[0])),), generator=sampler)
        pick = pick.to(encrypted.device)
        loss = (attacker(encrypted[pick].float()) - originals[pick].float()).abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, steps)
    return attacker.freeze()


# ------------------------------------------------------------------------------------------------
# Statistics (appendix A.1)


def grey_levels(image: torch.Tensor) -> torch.Tensor:
    """(H, W) grey levels on the 0–255 scale of a (3, H, W) image in [0, 1] (BT.601 luma)."""
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one (3, H, W) image, got {tuple(image.shape)}")
    weights = torch.tensor(_LUMA, dtype=torch.float64).view(3, 1, 1)
    return (image.double() * weights).sum(dim=0) * 255


def adjacent_pairs(image: torch.Tensor, direction: Direction, pairs: int = 3000,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`pairs` random (pixel, right / lower / lower-right neighbour) grey-level pairs of one image."""
    grey = grey_levels(image)
    down, right = _OFFSETS[direction]
    height, width = grey.shape
    if height <= down or width <= right:
        raise ValueError(f"image {height}×{width} is too small for {direction} pairs")
    generator = generator or torch.Generator().manual_seed(0)
    rows = torch.randint(0, height - down, (pairs,), generator=generator)
    columns = torch.randint(0, width - right, (pairs,), generator=generator)
    return grey[rows, columns], grey[rows + down, columns + right]


def pearson(first: torch.Tensor, second: torch.Tensor) -> float:
    """Pearson's correlation coefficient; NaN (undefined) when either side has no variance."""
    first, second = first.double() - first.double().mean(), second.double() - second.double().mean()
    spread = math.sqrt(float((first * first).sum()) * float((second * second).sum()))
    if spread == 0:
        return float("nan")
    return float((first * second).sum()) / spread


def adjacent_correlation(image: torch.Tensor, direction: Direction, pairs: int = 3000, seed: int = 0) -> float:
    """Correlation of adjacent grey levels over `pairs` random pairs (appendix A.1, Fig. 9).

    Near 1 for photographs, near 0 for a good cipher. A constant image has no variance, so its
    correlation is undefined: NaN here, null in JSON, "undefined" in the tables (not 0, which would
    claim the cipher-like answer).
    """
    first, second = adjacent_pairs(image, direction, pairs, torch.Generator().manual_seed(seed))
    return pearson(first, second)


def correlation_table(images: torch.Tensor, pairs: int = 3000, seed: int = 0) -> dict[str, dict]:
    """Per direction: the summary over images of each image's adjacent-pixel correlation."""
    return {
        direction: summarize([adjacent_correlation(image, direction, pairs, seed + index)
                              for index, image in enumerate(images)])
        for direction in DIRECTIONS
    }


def grey_histogram(images: torch.Tensor) -> torch.Tensor:
    """Counts of the 256 grey levels over all images (N, 3, H, W), as int64 (256,)."""
    levels = torch.cat([grey_levels(quantize(image)).round().long().flatten() for image in images])
    return torch.bincount(levels.clamp(0, 255), minlength=256)


def histogram_entropy(counts: torch.Tensor) -> float:
    """Shannon entropy in bits of a histogram (8 bits for a flat 256-level histogram)."""
    probabilities = counts.double() / counts.sum()
    probabilities = probabilities[probabilities > 0]
    return float(-(probabilities * probabilities.log2()).sum())


def detection_rate(found: Sequence[bool]) -> float:
    """Fraction of images in which a detector found a face (NaN for no images)."""
    return sum(bool(flag) for flag in found) / len(found) if found else float("nan")


# ------------------------------------------------------------------------------------------------
# What a blur shows (docs/PRIVACY.md)


def blur_reveal(images: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """The simplest attack on a ciphertext: blur its brightness and stretch the contrast, per image.

    (N, 3, H, W) → (N, 3, H, W) grey pictures in [0, 1]; the 1st and 99th percentiles of each blurred
    image map to black and white. Where the face survives at a coarse scale this shows it.
    """
    blurred = gaussian_blur(luminance(images.float()), sigma).flatten(1)
    low = blurred.quantile(0.01, dim=1, keepdim=True)
    high = blurred.quantile(0.99, dim=1, keepdim=True)
    stretched = ((blurred - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)
    return stretched.view(images.shape[0], 1, *images.shape[-2:]).expand(-1, 3, -1, -1).contiguous()
