"""Keys of other seeds (Fig. 5) and the paired-data attack (Fig. 6): decrypting with a key that is not the right one."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from avpcli.engine import decrypt_batch
from avpcli.key import fit_generator, seeded_generator
from avpcli.metrics import ssim


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
    """Train a generator of the key's architecture to map ciphertexts to originals (L1 loss, Adam, cosine decay).

    `like` is the key whose architecture the attacker copies (a KeyGenerator, or a KeyModel whose G
    is one: its ngf, blocks and norm); the attacker knows the architecture and the training recipe,
    not the seed or the scramble. The loop is keygen's (avpcli.key.fit_generator). Returns the attacker
    frozen, in eval mode.
    """
    like = getattr(like, "generator", like)
    if encrypted.shape != originals.shape or encrypted.shape[0] == 0:
        raise ValueError("the attacker needs (encrypted, original) pairs of one shape")
    attacker = seeded_generator(like.ngf, like.blocks, like.norm, seed, encrypted.device)
    sampler = torch.Generator().manual_seed(seed)
    # BatchNorm needs two samples in training mode; a single pair is simply repeated.
    batch = max(2, min(batch_size, encrypted.shape[0]))

    def pairs() -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.randint(0, encrypted.shape[0], (batch,), generator=sampler).to(encrypted.device)
        return encrypted[pick].float(), originals[pick].float()

    def cosine_decay(step: int) -> float:  # the last steps settle instead of bouncing
        return learning_rate * 0.5 * (1 + math.cos(math.pi * step / max(1, steps)))

    return fit_generator(attacker, pairs, steps, cosine_decay,
                         progress=None if progress is None else lambda step, total, loss: progress(step, total))
