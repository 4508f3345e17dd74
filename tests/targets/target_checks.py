"""Checks every target test makes: output shape, and that gradients reach the [0, 1] input."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avpcli.targets import TargetModel


def check_target(target: TargetModel, output_size: int, batch: int = 2) -> torch.Tensor:
    """Run a random batch through `target`; assert the output shape and a finite, nonzero input gradient."""
    height, width = target.spec.input_size
    images = torch.rand(batch, 3, height, width, requires_grad=True)
    output = target(images)
    assert output.shape == (batch, output_size)
    assert torch.isfinite(output).all()
    if target.spec.loss == "embedding" and target.spec.normalize_embedding:
        assert torch.allclose(output.norm(dim=1), torch.ones(batch), atol=1e-4)
    # A fixed random direction: the squared norm of a unit embedding would have no gradient at all.
    direction = torch.randn(output.shape, generator=torch.Generator().manual_seed(0))
    (output * direction).sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(parameter.grad is None for parameter in target.parameters())
    return output.detach()


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BN statistic random values, like a trained checkpoint would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                else:
                    tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path
