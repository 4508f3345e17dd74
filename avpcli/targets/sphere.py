"""CosFace's sphere-20 and SphereFace's sphere20a: 20-layer PReLU residual nets on 112x96 faces.

Both are the networks TIP-IM and AVIH attack (their `cosface.pth` and `sphere20a_20171020.pth`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avpcli.targets import CENTRED_BY_128, TargetSpec, register_target
from avpcli.weights import load_checkpoint_into, resolve_weights

_TIPIM_MODELS = "http://ml.cs.tsinghua.edu.cn/~xiaoyang/face_models/"
COSFACE_SOURCE = _TIPIM_MODELS + "CosFace/cosface.pth (TIP-IM; net from MuggleWang/CosFace_pytorch, MIT)"
SPHEREFACE_SOURCE = _TIPIM_MODELS + "SphereFace/sphere20a_20171020.pth (TIP-IM; clcarwin/sphereface_pytorch, MIT)"
SPHERE20_STAGES = ((64, 1), (128, 2), (256, 4), (512, 1))  # (channels, residual units) per stage

_SPHERE_SPEC = dict(
    input_size=(112, 96),
    **CENTRED_BY_128,
    loss="embedding",
    normalize_embedding=True,
    alignment="arcface96",
)


class ResidualUnit(nn.Module):
    """x + PReLU(conv(PReLU(conv(x)))), 3x3 convs without bias (CosFace's `Block`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.prelu1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.prelu2 = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.prelu2(self.conv2(self.prelu1(self.conv1(x))))


class Sphere20(nn.Module):
    """CosFace sphere-20: each `layerN` is a stride-2 3x3 conv (with bias) + PReLU and residual units;
    `fc` maps the 512x7x6 map to 512-D."""

    def __init__(self):
        super().__init__()
        channels = 3
        for stage, (outputs, units) in enumerate(SPHERE20_STAGES, start=1):
            modules = [nn.Conv2d(channels, outputs, 3, 2, 1), nn.PReLU(outputs)]
            modules += [ResidualUnit(outputs) for _ in range(units)]
            setattr(self, f"layer{stage}", nn.Sequential(*modules))
            channels = outputs
        self.fc = nn.Linear(512 * 7 * 6, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(x.flatten(1))


class Sphere20a(nn.Module):
    """SphereFace sphere20a with clcarwin's flat names: convS_1 (stride 2) then pairs convS_k, convS_k+1
    in residual units, every conv with bias and followed by PReLU `reluS_k`; `fc5` -> 512-D. The
    training-only angular classifier `fc6` is not built (its weights are ignored)."""

    def __init__(self):
        super().__init__()
        self.units: list[tuple[int, list[int]]] = []
        channels = 3
        for stage, (outputs, units) in enumerate(SPHERE20_STAGES, start=1):
            self.add_module(f"conv{stage}_1", nn.Conv2d(channels, outputs, 3, 2, 1))
            self.add_module(f"relu{stage}_1", nn.PReLU(outputs))
            for index in range(2, 2 + 2 * units):
                self.add_module(f"conv{stage}_{index}", nn.Conv2d(outputs, outputs, 3, 1, 1))
                self.add_module(f"relu{stage}_{index}", nn.PReLU(outputs))
            self.units.append((stage, list(range(2, 2 + 2 * units, 2))))
            channels = outputs
        self.fc5 = nn.Linear(512 * 7 * 6, 512)

    def _layer(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"relu{name}")(getattr(self, f"conv{name}")(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage, unit_starts in self.units:
            x = self._layer(f"{stage}_1", x)
            for first in unit_starts:
                x = x + self._layer(f"{stage}_{first + 1}", self._layer(f"{stage}_{first}", x))
        return self.fc5(x.flatten(1))


@register_target(
    TargetSpec(
        name="cosface",
        description="CosFace sphere-20 (as in TIP-IM/AVIH), 112x96 RGB, 512-D",
        weights=f"--weights PATH to {COSFACE_SOURCE}",
        **_SPHERE_SPEC,
    )
)
def build_cosface(weights: Path | None) -> nn.Module:
    path = resolve_weights("cosface", weights, how_to_get=f"The AVIH paper's file is {COSFACE_SOURCE}.")
    return load_checkpoint_into(Sphere20(), path, "cosface")


@register_target(
    TargetSpec(
        name="sphereface",
        description="SphereFace sphere20a (as in TIP-IM/AVIH), 112x96 BGR, 512-D",
        channel_order="bgr",
        weights=f"--weights PATH to {SPHEREFACE_SOURCE}",
        **_SPHERE_SPEC,
    )
)
def build_sphereface(weights: Path | None) -> nn.Module:
    path = resolve_weights("sphereface", weights, how_to_get=f"The AVIH paper's file is {SPHEREFACE_SOURCE}.")
    return load_checkpoint_into(Sphere20a(), path, "sphereface", ignore_prefixes=("fc6.",))
