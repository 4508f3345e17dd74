"""CIFAR-10 ResNet-20/32/44/56 (He et al. 2016, option-A shortcuts) with akamaster's trained weights."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from avpcli.targets import IMAGENET, TargetSpec, register_target
from avpcli.weights import RemoteWeights, load_checkpoint_into, resolve_weights

_AKAMASTER = "https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
_LICENCE = "BSD-2-Clause (akamaster/pytorch_resnet_cifar10)"


class OptionABlock(nn.Module):
    """Two 3x3 conv-BN layers; a strided block's shortcut subsamples and zero-pads the channels
    (option A: no parameters), which is why the checkpoints hold no shortcut weights."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.pad = (outputs - inputs) // 2
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class CifarResNet(nn.Module):
    """3 stages of `blocks_per_stage` blocks with 16/32/64 channels, global average pool, linear head.

    state_dict keys (after stripping DataParallel's `module.`): conv1, bn1, layer{1,2,3}.N.{conv,bn}{1,2}, linear.
    """

    def __init__(self, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        channels = 16
        for stage, (outputs, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            blocks = []
            for index in range(blocks_per_stage):
                blocks.append(OptionABlock(channels, outputs, stride if index == 0 else 1))
                channels = outputs
            setattr(self, f"layer{stage}", nn.Sequential(*blocks))
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(x.mean(dim=(2, 3)))


def _register(depth: int, sha256: str) -> None:
    filename = f"resnet{depth}-{sha256[:8]}.th"
    remote = RemoteWeights(url=_AKAMASTER + filename, filename=filename, sha256=sha256, licence=_LICENCE)
    name = f"cifar-resnet{depth}"

    @register_target(
        TargetSpec(
            name=name,
            description=f"CIFAR-10 ResNet-{depth} (akamaster), 32x32 RGB, 10 logits",
            input_size=(32, 32),
            **IMAGENET,
            loss="classifier",
            alignment=None,
            weights=f"downloaded from {remote.url} (sha256-checked; {_LICENCE}) or --weights PATH",
        )
    )
    def build(weights: Path | None) -> nn.Module:
        path = resolve_weights(name, weights, remote)
        return load_checkpoint_into(CifarResNet((depth - 2) // 6), path, name)


# sha256 of the published files (the 8-hex prefix is in each file name).
for _depth, _sha256 in (
    (20, "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8"),
    (32, "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850"),
    (44, "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4"),
    (56, "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367"),
):
    _register(_depth, _sha256)
