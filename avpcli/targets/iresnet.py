"""insightface arcface_torch's IResNet-50/100 (the ArcFace backbone), for `.pth` files it trains."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avpcli.errors import TargetError
from avpcli.weights import load_state_into, load_torch_file, unwrap_state_dict

# Blocks per stage; the stages have 64/128/256/512 channels and each starts with stride 2.
IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}


class IBasicBlock(nn.Module):
    """BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, plus the (projected) input."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs, eps=1e-5)
        self.conv1 = nn.Conv2d(inputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs, eps=1e-5)
        self.prelu = nn.PReLU(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(outputs, eps=1e-5)
        self.downsample = None
        if stride != 1 or inputs != outputs:
            self.downsample = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """112x112 input -> 512-D embedding; state_dict keys as arcface_torch writes them
    (conv1, bn1, prelu, layer1-4, bn2, fc, features)."""

    def __init__(self, depth: int, embedding_size: int = 512):
        super().__init__()
        if depth not in IRESNET_LAYERS:
            raise TargetError(f"IResNet depth must be one of {sorted(IRESNET_LAYERS)}, got {depth}")
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        channels = 64
        for stage, (outputs, blocks) in enumerate(zip((64, 128, 256, 512), IRESNET_LAYERS[depth]), start=1):
            layer = []
            for index in range(blocks):
                layer.append(IBasicBlock(channels, outputs, 2 if index == 0 else 1))
                channels = outputs
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.fc = nn.Linear(512 * 7 * 7, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(torch.flatten(self.bn2(x), 1)))


def iresnet_depth_of(state: dict[str, torch.Tensor]) -> int:
    """50 or 100 (or 18/34), read from how many blocks the checkpoint's stages hold."""
    counts = tuple(
        len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")}) for stage in (1, 2, 3, 4)
    )
    for depth, layers in IRESNET_LAYERS.items():
        if counts == layers:
            return depth
    raise TargetError(f"the checkpoint's stages hold {counts} blocks, which is no IResNet-18/34/50/100")


def load_iresnet(path: Path, target: str) -> nn.Module:
    """An arcface_torch backbone `.pth` (plain state_dict, or one wrapped by DataParallel/a dict)."""
    state = unwrap_state_dict(load_torch_file(path, target), target)
    depth = iresnet_depth_of(state)
    return load_state_into(IResNet(depth, embedding_size=state["fc.weight"].shape[0]), state, target, path)
