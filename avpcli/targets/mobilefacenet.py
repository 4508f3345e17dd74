"""MobileFaceNet, 128-D face embeddings: Xiaoccer's 112x96 ArcFace model and foamliu's 112x112 model."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avpcli.targets import CENTRED_BY_128, IMAGENET, TargetSpec, register_target
from avpcli.weights import default_cache_dir, load_checkpoint_into, resolve_weights

# (expansion t, output channels c, repeats n, first stride s) of the paper's bottleneck stages,
# which both upstream implementations use.
BOTTLENECK_STAGES = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))

XIAOCCER_URL = "https://github.com/Xiaoccer/MobileFaceNet_Pytorch/raw/master/model/best/068.ckpt"
FOAMLIU_SOURCE = "https://github.com/foamliu/MobileFaceNet (mobilefacenet.pt, Apache-2.0)"


def _conv_bn(inputs: int, outputs: int, kernel, stride: int, padding, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(inputs, outputs, kernel, stride, padding, groups=groups, bias=False), nn.BatchNorm2d(outputs)]


# ---- Xiaoccer/MobileFaceNet_Pytorch layout: PReLU everywhere, 7x6 global depthwise conv ----


class ConvUnit(nn.Module):
    """conv -> BN (-> PReLU unless linear); state_dict keys `conv`, `bn`, `prelu`."""

    def __init__(self, inputs: int, outputs: int, kernel, stride: int, padding, depthwise: bool = False, linear: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(inputs, outputs, kernel, stride, padding, groups=inputs if depthwise else 1, bias=False)
        self.bn = nn.BatchNorm2d(outputs)
        self.prelu = None if linear else nn.PReLU(outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.prelu is None else self.prelu(x)


class PReLUBottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise (stride), 1x1 project; keys `conv.0`..`conv.7`."""

    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int):
        super().__init__()
        hidden = inputs * expansion
        self.residual = stride == 1 and inputs == outputs
        self.conv = nn.Sequential(
            *_conv_bn(inputs, hidden, 1, 1, 0), nn.PReLU(hidden),
            *_conv_bn(hidden, hidden, 3, stride, 1, groups=hidden), nn.PReLU(hidden),
            *_conv_bn(hidden, outputs, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileFaceNetXiaoccer(nn.Module):
    """112x96 input, 128-D output; matches the `net_state_dict` of Xiaoccer's 068.ckpt."""

    def __init__(self):
        super().__init__()
        self.conv1 = ConvUnit(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvUnit(64, 64, 3, 1, 1, depthwise=True)
        blocks, channels = [], 64
        for expansion, outputs, repeats, stride in BOTTLENECK_STAGES:
            for index in range(repeats):
                blocks.append(PReLUBottleneck(channels, outputs, stride if index == 0 else 1, expansion))
                channels = outputs
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvUnit(128, 512, 1, 1, 0)
        self.linear7 = ConvUnit(512, 512, (7, 6), 1, 0, depthwise=True, linear=True)
        self.linear1 = ConvUnit(512, 128, 1, 1, 0, linear=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.dw_conv1(self.conv1(x)))
        return self.linear1(self.linear7(self.conv2(x))).flatten(1)


# ---- foamliu/MobileFaceNet layout: MobileNetV2-style ReLU6, 7x7 global depthwise conv ----


def _conv_bn_relu6(inputs: int, outputs: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(*_conv_bn(inputs, outputs, kernel, stride, (kernel - 1) // 2, groups), nn.ReLU6())


class SeparableConv(nn.Module):
    """3x3 depthwise -> BN -> ReLU -> 1x1 pointwise -> BN -> ReLU; keys `depthwise`, `pointwise`, `bn1`, `bn2`."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.depthwise(x)))
        return torch.relu(self.bn2(self.pointwise(x)))


class ReLU6Bottleneck(nn.Module):
    """Inverted residual with keys `conv.0.{0,1}` (expand), `conv.1.{0,1}` (depthwise), `conv.2`, `conv.3`."""

    def __init__(self, inputs: int, outputs: int, stride: int, expansion: int):
        super().__init__()
        hidden = inputs * expansion
        self.residual = stride == 1 and inputs == outputs
        self.conv = nn.Sequential(
            _conv_bn_relu6(inputs, hidden, kernel=1),
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            *_conv_bn(hidden, outputs, 1, 1, 0),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class GlobalDepthwise(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, kernel, groups=channels, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.depthwise(x))


class MobileFaceNetFoamliu(nn.Module):
    """112x112 input, 128-D output; matches foamliu's plain-state_dict mobilefacenet.pt."""

    def __init__(self):
        super().__init__()
        self.conv1 = _conv_bn_relu6(3, 64, stride=2)
        self.dw_conv = SeparableConv(64)
        features, channels = [], 64
        for expansion, outputs, repeats, stride in BOTTLENECK_STAGES:
            for index in range(repeats):
                features.append(ReLU6Bottleneck(channels, outputs, stride if index == 0 else 1, expansion))
                channels = outputs
        self.features = nn.Sequential(*features)
        self.conv2 = _conv_bn_relu6(128, 512, kernel=1)
        self.gdconv = GlobalDepthwise(512, 7)
        self.conv3 = nn.Conv2d(512, 128, 1)
        self.bn = nn.BatchNorm2d(128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.dw_conv(self.conv1(x)))
        return self.bn(self.conv3(self.gdconv(self.conv2(x)))).flatten(1)


@register_target(
    TargetSpec(
        name="mobilefacenet",
        description="MobileFaceNet (Xiaoccer, ArcFace loss, CASIA-WebFace), 112x96 RGB, 128-D",
        input_size=(112, 96),
        **CENTRED_BY_128,
        loss="embedding",
        normalize_embedding=True,
        alignment="arcface96",
        weights=f"--weights PATH to 068.ckpt from {XIAOCCER_URL} (no licence stated; research use)",
    )
)
def build_mobilefacenet(weights: Path | None) -> nn.Module:
    return _load_local_weights(MobileFaceNetXiaoccer(), "mobilefacenet", weights, "mobilefacenet_xiaoccer_068.ckpt",
                               f"It is 068.ckpt from {XIAOCCER_URL}.")


@register_target(
    TargetSpec(
        name="mobilefacenet-foamliu",
        description="MobileFaceNet (foamliu), 112x112 RGB, 128-D",
        input_size=(112, 112),
        **IMAGENET,
        loss="embedding",
        normalize_embedding=True,
        alignment="arcface",
        weights=f"--weights PATH to mobilefacenet.pt from {FOAMLIU_SOURCE}",
    )
)
def build_mobilefacenet_foamliu(weights: Path | None) -> nn.Module:
    return _load_local_weights(MobileFaceNetFoamliu(), "mobilefacenet-foamliu", weights, "mobilefacenet_foamliu.pt",
                               f"It is mobilefacenet.pt from {FOAMLIU_SOURCE}.")


def _load_local_weights(model: nn.Module, target: str, weights: Path | None, cached_name: str,
                        how_to_get: str) -> nn.Module:
    """Weights that cannot be downloaded (no stable URL): --weights, or a copy in avp's cache folder."""
    path = resolve_weights(target, weights, known_paths=[default_cache_dir() / cached_name], how_to_get=how_to_get)
    return load_checkpoint_into(model, path, target)
