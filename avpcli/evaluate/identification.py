"""Who a picture is taken for: the paper's identification protocol (§4.1, Table 2) and an observer's ranks."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Collection, Sequence

import torch

from avpcli.evaluate.summary import nan_to_none


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
