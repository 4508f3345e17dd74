"""Applying a key: deterministic decryption of 8-bit ciphertexts, batched by key and size."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from avpcli.engine.objective import quantize


@torch.no_grad()
def decrypt_batch(encrypted: torch.Tensor, key: nn.Module) -> torch.Tensor:
    """Apply the key in eval mode and round to 8 bits: deterministic for a given key and input."""
    key.eval()
    return quantize(key(encrypted.float()))


def decrypt_grouped(pairs: Sequence[tuple[nn.Module, torch.Tensor]], device: str | torch.device) -> list[torch.Tensor]:
    """decrypt_batch on (key, ciphertext (3, H, W)) pairs of any keys and sizes: those of one key and
    one size go together; each result (on the CPU) stands in its pair's place."""
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for index, (key, image) in enumerate(pairs):
        groups.setdefault((id(key), tuple(image.shape)), []).append(index)
    results: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    for indices in groups.values():
        key = pairs[indices[0]][0]
        decrypted = decrypt_batch(torch.stack([pairs[index][1] for index in indices]).to(device), key).cpu()
        for index, image in zip(indices, decrypted):
            results[index] = image
    return results
