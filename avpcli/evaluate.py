"""The paper's protocol and security analyses (§4, appendix A.1): tensors and modules in, results out.

Every function here is pure computation: no files, no printing. `avpcli.report` reads folders,
encrypts what is missing, calls these and writes the report.

Conventions: images are (N, 3, H, W) or (3, H, W) float tensors in [0, 1]; features are (N, D)
outputs of a `TargetModel` (already L2-normalized where the target's spec says so, raw for dlib),
so nearest neighbours are always taken by Euclidean distance on the target's own output.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Collection, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from avpcli.engine import LossKind, decrypt_batch, measure_images, quantize
from avpcli.metrics import (bandpass_correlation, difference_of_gaussians, edge_correlation, gaussian_blur,
                            lowpass_correlation, luminance, ssim)
from avpcli.scramble import ScramblePlan

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


# A detection counts as the face when its box and the face's overlap by at least this much
# (intersection over union; PASCAL VOC's criterion of a correct detection).
AT_FACE_IOU = 0.5


def box_iou(first: Sequence[float], second: Sequence[float]) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1): 1 for equal boxes, 0 for disjoint or empty ones."""
    width = min(first[2], second[2]) - max(first[0], second[0])
    height = min(first[3], second[3]) - max(first[1], second[1])
    intersection = max(width, 0.0) * max(height, 0.0)
    union = ((first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
             - intersection)
    return intersection / union if union > 0 else 0.0


# ------------------------------------------------------------------------------------------------
# What a person with an image editor sees (docs/PRIVACY.md)


def percentile_stretch(images: torch.Tensor, low: float = 0.01, high: float = 0.99) -> torch.Tensor:
    """Auto levels: per image and channel, the `low` and `high` quantiles map to 0 and 1, clipped.

    (N, C, H, W) → (N, C, H, W) in [0, 1]. A flat channel stays finite (it becomes 0).
    """
    flat = images.float().flatten(2)
    bottom = flat.quantile(low, dim=2, keepdim=True)
    top = flat.quantile(high, dim=2, keepdim=True)
    return ((flat - bottom) / (top - bottom).clamp_min(1e-6)).clamp(0, 1).view(images.shape)


def median_filter(images: torch.Tensor, size: int = 5) -> torch.Tensor:
    """The median of every size×size window (odd size, reflect borders), per channel: (N, C, H, W), same size."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"a median filter needs an odd size, got {size}")
    radius = size // 2
    if radius >= min(images.shape[-2:]):
        raise ValueError(f"a {size}×{size} median needs images larger than {radius} pixels")
    # One image at a time: the windows take size² times the image's memory.
    filtered = []
    for image in images.float():
        padded = F.pad(image[None], (radius,) * 4, mode="reflect")[0]
        windows = padded.unfold(1, size, 1).unfold(2, size, 1)  # (C, H, W, size, size)
        filtered.append(windows.flatten(3).median(dim=3).values)
    return torch.stack(filtered)


def downscale_and_back(images: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Shrink by `factor` (area average) and enlarge back to the same size (bilinear): a thumbnail, enlarged."""
    height, width = images.shape[-2:]
    small = F.interpolate(images.float(), size=(max(1, height // factor), max(1, width // factor)), mode="area")
    return F.interpolate(small, size=(height, width), mode="bilinear", align_corners=False)


def _as_grey(luma: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) → a grey (N, 3, H, W) picture."""
    return luma.expand(-1, 3, -1, -1).contiguous()


def _blur_grey(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return _as_grey(percentile_stretch(gaussian_blur(luminance(images.float()), sigma)))


def _blur_colour(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return percentile_stretch(gaussian_blur(images.float(), sigma))


@dataclass(frozen=True)
class RevealFilter:
    """One thing a person would try on a ciphertext: (N, 3, H, W) in [0, 1] → (N, 3, H, W) in [0, 1]."""

    name: str
    description: str
    apply: Callable[[torch.Tensor], torch.Tensor]


REVEAL_FILTERS: tuple[RevealFilter, ...] = (
    RevealFilter("none", "the image as it is", lambda images: images.float()),
    *(RevealFilter(f"blur{sigma:g}-{kind}", f"Gaussian blur σ {sigma:g} px of the {label}, contrast-stretched",
                   partial(blur, sigma=sigma))
      for sigma in (1.5, 3.0, 5.0)
      for kind, label, blur in (("grey", "brightness", _blur_grey), ("colour", "colour channels", _blur_colour))),
    RevealFilter("median5", "median 5×5 of the colour channels, contrast-stretched",
                 lambda images: percentile_stretch(median_filter(images, 5))),
    RevealFilter("downscale4", "shrunk ×4 and enlarged back (colour), contrast-stretched",
                 lambda images: percentile_stretch(downscale_and_back(images, 4))),
    RevealFilter("dog1-4", "difference of Gaussians σ 1 − σ 4 of the brightness, contrast-stretched",
                 lambda images: _as_grey(percentile_stretch(difference_of_gaussians(luminance(images.float()))))),
)


def reveal_filter(name: str) -> RevealFilter:
    """The filter of REVEAL_FILTERS called `name`."""
    for candidate in REVEAL_FILTERS:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown filter {name!r}; choose one of: {', '.join(f.name for f in REVEAL_FILTERS)}")


def blur_reveal(images: torch.Tensor, sigma: float = 3.0) -> torch.Tensor:
    """The simplest attack on a ciphertext: blur its brightness and stretch the contrast, per image.

    (N, 3, H, W) → (N, 3, H, W) grey pictures in [0, 1]; the 1st and 99th percentiles of each blurred
    image map to black and white. Where the face survives at a coarse scale this shows it.
    """
    return _blur_grey(images, sigma)


def leak_correlations(encrypted: torch.Tensor, originals: torch.Tensor, batch_size: int = 32) -> dict[str, list[float]]:
    """Per ciphertext, on luma: |low-pass r|, |band-pass r| and the (signed) edge r with its original.

    0 means that view of x' shows nothing of x (metrics.py: a negative low- or band-pass shows x as
    well as a positive one, so those count as magnitudes; edges are magnitudes already).
    """
    measures = {"lowpass_abs": lambda a, b: lowpass_correlation(a, b).abs(),
                "bandpass_abs": lambda a, b: bandpass_correlation(a, b).abs(),
                "edge": edge_correlation}
    found: dict[str, list[float]] = {name: [] for name in measures}
    for start in range(0, encrypted.shape[0], batch_size):
        cipher, plain = encrypted[start:start + batch_size].float(), originals[start:start + batch_size].float()
        for name, measure in measures.items():
            found[name] += measure(cipher, plain).tolist()
    return found


# ------------------------------------------------------------------------------------------------
# Who an observer takes a picture for: rank of the right identity in a gallery


def identity_ranks(queries: torch.Tensor, query_identities: Sequence[str], gallery: torch.Tensor,
                   gallery_identities: Sequence[str],
                   excluded: Sequence[Collection[int]] | None = None) -> list[int | None]:
    """Where each query's own identity comes among the gallery's identities (1: identified).

    queries (Q, D) and gallery (G, D) are features; an identity's distance to a query is that of its
    nearest gallery image (Euclidean), and the rank is 1 + the number of identities strictly nearer.
    excluded[q]: gallery indices query q may not use (its very own photo). None for a query whose
    identity has no usable gallery image.
    """
    if gallery.shape[0] != len(gallery_identities) or queries.shape[0] != len(query_identities):
        raise ValueError("one identity per feature is needed")
    names = sorted(set(gallery_identities))
    index = {name: position for position, name in enumerate(names)}
    if queries.shape[0] == 0 or not names:
        return [None] * queries.shape[0]
    distances = torch.cdist(queries.double(), gallery.double())  # (Q, G)
    for row, indices in enumerate(excluded or []):
        if indices:
            distances[row, list(indices)] = math.inf
    columns = torch.tensor([index[name] for name in gallery_identities]).expand_as(distances)
    nearest = torch.full((queries.shape[0], len(names)), math.inf, dtype=torch.float64)
    nearest = nearest.scatter_reduce(1, columns, distances, reduce="amin")  # (Q, identities)
    ranks: list[int | None] = []
    for row, identity in enumerate(query_identities):
        own = nearest[row, index[identity]] if identity in index else torch.tensor(math.inf)
        ranks.append(None if math.isinf(float(own)) else 1 + int((nearest[row] < own).sum()))
    return ranks


def rank_summary(ranks: Sequence[int | None]) -> dict[str, float | int | None]:
    """Top-1 and top-10 rates and the median rank of the ranked queries; how many could not be ranked."""
    ranked = [rank for rank in ranks if rank is not None]
    if not ranked:
        return {"queries": 0, "unranked": len(ranks), "top1": None, "top10": None, "median_rank": None}
    return {"queries": len(ranked), "unranked": len(ranks) - len(ranked),
            "top1": sum(rank == 1 for rank in ranked) / len(ranked),
            "top10": sum(rank <= 10 for rank in ranked) / len(ranked),
            "median_rank": float(statistics.median(ranked))}


def chance_ranks(identities: int) -> dict[str, float]:
    """What a guess scores among `identities` identities: top-1 1/n, top-10 10/n, median rank (n + 1)/2."""
    return {"top1": 1 / identities, "top10": min(10, identities) / identities, "median_rank": (identities + 1) / 2}


# ------------------------------------------------------------------------------------------------
# Key recovery: an attacker who knows avp's method and holds (ciphertext, original) pairs of one key

RecoveryRule = Literal["correlation", "distance"]
RECOVERY_RULES: tuple[RecoveryRule, ...] = ("correlation", "distance")


def recover_scramble(encrypted: torch.Tensor, originals: torch.Tensor, rule: RecoveryRule = "correlation",
                     block_rows: int = 512) -> ScramblePlan:
    """Guess the key's scramble S from N pairs, by S(x′) ≈ x (what G is trained to undo is small).

    For every value i of the original (flattened (C, H, W)), the ciphertext value j whose N values
    match x_i best across the pairs becomes source[i], inverted when the match is v ↦ 1 − v:
      "correlation": largest |Pearson r| over the pairs, inverted where r < 0; needs N ≥ 3 (with one
          pair no value varies, with two every pair of values correlates ±1);
      "distance": smallest squared distance of x_i to x′_j or to 1 − x′_j (uses that S keeps values,
          not only their order; works from one pair).
    Ties go to the lowest j, and to "not inverted". The (3HW × 3HW) scores are taken `block_rows`
    rows at a time into one reused buffer, so memory stays at block_rows × 3HW numbers.
    """
    if encrypted.shape != originals.shape or encrypted.ndim != 4 or encrypted.shape[0] == 0:
        raise ValueError("key recovery needs (N, C, H, W) ciphertexts and originals of one shape, N ≥ 1")
    if rule not in RECOVERY_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of: {', '.join(RECOVERY_RULES)}")
    if rule == "correlation" and encrypted.shape[0] < 3:
        raise ValueError("the correlation rule needs at least 3 pairs")
    plain = originals.flatten(1).double()  # (N, V): what S(x′) must give
    cipher = encrypted.flatten(1).double()
    values = plain.shape[1]
    if rule == "correlation":
        def standardized(table: torch.Tensor) -> torch.Tensor:
            centred = table - table.mean(dim=0, keepdim=True)
            spread = centred.norm(dim=0, keepdim=True)
            # A value that does not vary over the pairs correlates with nothing (r = 0).
            return torch.where(spread > 1e-9, centred / spread.clamp_min(1e-12), torch.zeros_like(centred)).float()

        plain, cipher = standardized(plain), standardized(cipher)
    else:
        plain, cipher = plain.float(), cipher.float()
        kept_norm = cipher.pow(2).sum(dim=0)  # ||x′_j||²
        inverted_norm = (1 - cipher).pow(2).sum(dim=0)  # ||1 − x′_j||²
        plain_sum = plain.sum(dim=0)
    source = torch.empty(values, dtype=torch.long)
    inverted = torch.empty(values, dtype=torch.bool)
    buffer = torch.empty(min(block_rows, values), values)
    for start in range(0, values, block_rows):
        rows = slice(start, min(start + block_rows, values))
        scores = buffer[:rows.stop - start]
        if rule == "correlation":
            torch.mm(plain[:, rows].T, cipher, out=scores)  # r of every (i, j)
            high, high_index = scores.max(dim=1)
            low, low_index = scores.min(dim=1)
            flip = -low > high
            source[rows] = torch.where(flip, low_index, high_index)
        else:
            # ||x_i − x′_j||² and ||x_i − (1 − x′_j)||², less ||x_i||², which every j shares.
            torch.addmm(kept_norm, plain[:, rows].T, cipher, alpha=-2, out=scores)
            kept, kept_index = scores.min(dim=1)
            torch.addmm(inverted_norm, plain[:, rows].T, cipher, alpha=2, out=scores)
            flipped, flipped_index = scores.min(dim=1)
            flip = flipped - 2 * plain_sum[rows] < kept
            source[rows] = torch.where(flip, flipped_index, kept_index)
        inverted[rows] = flip
    return ScramblePlan(source, inverted.float())


def key_plan(key: nn.Module, height: int, width: int, images: torch.Tensor | None = None) -> ScramblePlan:
    """The key's true scramble for H×W images (on the CPU); the identity for a key without one.

    A per-image scramble has a plan per ciphertext: `images` (N, 3, H, W) are then required, and the
    plan is (N, 3·H·W), one row each.
    """
    scramble = getattr(key, "scramble", None)
    if scramble is None:
        values = 3 * height * width
        return ScramblePlan(torch.arange(values), torch.zeros(values))
    if getattr(scramble, "per_image", False):
        if images is None:
            raise ValueError("a per-image scramble's plans are those of the ciphertexts: pass them")
        return scramble.plans_of(images.cpu())
    return scramble.plan(height, width, torch.device("cpu"))


def plan_agreement(guess: ScramblePlan, truth: ScramblePlan) -> dict[str, float]:
    """Share of values whose source is right, and whose source and inversion are both right ("recovered");
    against per-image plans (N, 3·H·W), over all their values."""
    right_source = guess.source.cpu() == truth.source.cpu()
    right_sign = guess.inverted.cpu() == truth.inverted.cpu()
    return {"source": float(right_source.float().mean()), "recovered": float((right_source & right_sign).float().mean())}


@dataclass
class RecoveryResult:
    """One point of the key-recovery curve (key_recovery_curve)."""

    pairs: int
    rule: str
    source: float
    recovered: float
    ssim_unscrambled: float
    lowpass_unscrambled: float
    ssim_decrypted: float
    plan: ScramblePlan = field(repr=False)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in ("pairs", "rule", "source", "recovered", "ssim_unscrambled",
                                                       "lowpass_unscrambled", "ssim_decrypted")}


@torch.no_grad()
def key_recovery_curve(training_encrypted: torch.Tensor, training_originals: torch.Tensor,
                       held_out_encrypted: torch.Tensor, held_out_originals: torch.Tensor, key: nn.Module,
                       pair_counts: Sequence[int], rules: Sequence[RecoveryRule] = RECOVERY_RULES,
                       block_rows: int = 512) -> list[RecoveryResult]:
    """For each pair count N and rule: recover S from the first N training pairs, then measure it
    (the correlation rule only from 3 pairs on).

    Each result: the "source" and "recovered" fractions (plan_agreement against the key's own plan),
    and on the held-out pairs, against the originals: the mean SSIM and mean |low-pass r| of the
    attacker's S(x′) (8-bit, as an image: even the key's own S leaves the noise that G removes, so
    SSIM stays low where a blur shows the face), and the mean SSIM of G(S(x′)) (for an attacker who
    also has G, the key's generator).
    """
    if not pair_counts or min(pair_counts) < 1 or max(pair_counts) > training_encrypted.shape[0]:
        raise ValueError(f"pair counts must be between 1 and the {training_encrypted.shape[0]} training pairs")
    if held_out_encrypted.shape[0] == 0:
        raise ValueError("key recovery needs at least one held-out pair")
    truth = key_plan(key, *training_encrypted.shape[-2:], images=held_out_encrypted)
    generator = getattr(key, "generator", key)
    results = []
    for count in pair_counts:
        for rule in rules:
            if rule == "correlation" and count < 3:
                continue  # meaningless (recover_scramble)
            guess = recover_scramble(training_encrypted[:count], training_originals[:count], rule, block_rows)
            unscrambled = quantize(guess.to(held_out_encrypted.device).apply(held_out_encrypted.float()))
            results.append(RecoveryResult(
                count, rule, **plan_agreement(guess, truth),
                ssim_unscrambled=float(ssim(unscrambled, held_out_originals.float()).mean()),
                lowpass_unscrambled=float(lowpass_correlation(unscrambled, held_out_originals.float()).abs().mean()),
                ssim_decrypted=float(ssim(decrypt_batch(unscrambled, generator), held_out_originals.float()).mean()),
                plan=guess))
    return results
