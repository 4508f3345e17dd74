"""Tiny seeded targets so the whole CLI can be tested on a CPU without weights (hidden from users)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avpcli.targets import TargetSpec, register_target

TINY_SIZE = (32, 32)


def _tiny_backbone(outputs: int, seed: int) -> nn.Module:
    # Seeded so that every test run sees the same model; no weights file is ever needed.
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, outputs),
    )
    torch.random.set_rng_state(generator_state)
    return model


@register_target(
    TargetSpec(
        name="tiny-embedding",
        description="test only: a seeded 2-conv embedding network, 32x32 RGB",
        input_size=TINY_SIZE,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        loss="embedding",
        normalize_embedding=False,
        match_threshold=0.6,
        weights="none (random, seeded)",
        hidden=True,
    )
)
def build_tiny_embedding(weights: Path | None) -> nn.Module:
    return _tiny_backbone(16, seed=1)


@register_target(
    TargetSpec(
        name="tiny-classifier",
        description="test only: a seeded 2-conv 10-class classifier, 32x32 BGR",
        input_size=TINY_SIZE,
        channel_order="bgr",
        mean=(0.4, 0.45, 0.5),
        std=(0.25, 0.25, 0.25),
        loss="classifier",
        weights="none (random, seeded)",
        hidden=True,
    )
)
def build_tiny_classifier(weights: Path | None) -> nn.Module:
    return _tiny_backbone(10, seed=2)
