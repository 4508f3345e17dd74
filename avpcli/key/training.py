"""The training loop of a generator of the key's architecture: keygen's G and the paired-data attacker both use it."""

from __future__ import annotations

from collections.abc import Callable

import torch

from avpcli.key.network import KeyGenerator
from avpcli.metrics import ssim

# progress(step, total, loss) after every step; step counts from 1.
ProgressCallback = Callable[[int, int, float], None]
# One training batch per call: (inputs, the outputs wanted for them), on the training device.
BatchSource = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def seeded_generator(ngf: int, blocks: int, norm: str, seed: int, device: str | torch.device) -> KeyGenerator:
    """A KeyGenerator initialized from `seed` (on the CPU, then moved): the same seed gives the same weights.

    The global torch RNG state is left as it was.
    """
    devices = [device] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return KeyGenerator(ngf, blocks, norm).to(device)


def fit_generator(
    network: KeyGenerator,
    batches: BatchSource,
    steps: int,
    learning_rate: Callable[[int], float],
    betas: tuple[float, float] = (0.9, 0.999),
    ssim_weight: float = 0.0,
    progress: Callable[[int, int, torch.Tensor], None] | None = None,
) -> KeyGenerator:
    """Train `network` to map each batch's inputs to its targets, with Adam; returns it frozen, in eval mode.

    Args:
        network: the generator to train (in place), e.g. from seeded_generator.
        batches: called once per step for (inputs, targets).
        steps: optimizer steps.
        learning_rate: the learning rate of each 0-based step (the schedule).
        betas: Adam betas.
        ssim_weight: weight of (1 − SSIM) added to the L1 loss (0: L1 alone).
        progress: called as progress(step, steps, loss) after every step, with the loss as a detached
            tensor (turning it into a number waits for the device, so only callers that show it do).
    """
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate(0), betas=betas)
    network.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step)
        inputs, targets = batches()
        output = network(inputs)
        loss = (output - targets).abs().mean()
        if ssim_weight:
            loss = loss + ssim_weight * (1 - ssim(output, targets).mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, steps, loss.detach())
    return network.freeze()
