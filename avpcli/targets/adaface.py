"""AdaFace's IR-50/IR-101 backbones (mk-minchul/AdaFace net.py layout) for its released checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from avpcli.errors import TargetError
from avpcli.targets import HALF_RANGE, TargetSpec, register_target
from avpcli.weights import load_state_into, load_torch_file, resolve_weights, unwrap_state_dict

# Blocks per stage (64/128/256/512 channels, each stage starts with stride 2). AdaFace calls the
# 100-layer network "ir_101".
IR_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
ADAFACE_SOURCE = "https://github.com/mk-minchul/AdaFace (README: pretrained models, MIT licence)"


class IRBlock(nn.Module):
    """res_layer: BN, 3x3 conv, BN, PReLU, 3x3 conv (stride), BN; shortcut_layer: a 1x1 max-pool
    subsampling (same width) or a 1x1 conv + BN (wider)."""

    def __init__(self, inputs: int, outputs: int, stride: int):
        super().__init__()
        if inputs == outputs:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(inputs),
            nn.Conv2d(inputs, outputs, 3, 1, 1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.PReLU(outputs),
            nn.Conv2d(outputs, outputs, 3, stride, 1, bias=False),
            nn.BatchNorm2d(outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class AdaFaceIR(nn.Module):
    """112x112 BGR input normalized to [-1, 1] -> (unit 512-D feature, its norm), as AdaFace returns."""

    def __init__(self, depth: int):
        super().__init__()
        if depth not in IR_LAYERS:
            raise TargetError(f"AdaFace IR depth must be one of {sorted(IR_LAYERS)}, got {depth}")
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        body, channels = [], 64
        for outputs, blocks in zip((64, 128, 256, 512), IR_LAYERS[depth]):
            for index in range(blocks):
                body.append(IRBlock(channels, outputs, 2 if index == 0 else 1))
                channels = outputs
        self.body = nn.Sequential(*body)
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(512),
            nn.Dropout(0.4),
            nn.Flatten(),
            nn.Linear(512 * 7 * 7, 512),
            nn.BatchNorm1d(512, affine=False),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature = self.output_layer(self.body(self.input_layer(x)))
        norm = feature.norm(p=2, dim=1, keepdim=True)
        return feature / norm, norm


def adaface_state_dict(checkpoint: object, target: str) -> dict[str, torch.Tensor]:
    """The backbone's weights: AdaFace checkpoints hold {"state_dict": {"model.<k>": ..., "head.kernel": ...}}."""
    state = unwrap_state_dict(checkpoint, target, prefixes=())
    if any(key.startswith("model.") for key in state):
        state = {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}
    return state


def _depth_of(state: dict[str, torch.Tensor]) -> int:
    blocks = len({key.split(".")[1] for key in state if key.startswith("body.")})
    for depth, layers in IR_LAYERS.items():
        if sum(layers) == blocks:
            return depth
    raise TargetError(f"the checkpoint holds {blocks} IR blocks, which is no AdaFace IR-18/34/50/101")


def load_adaface(path: Path, target: str) -> nn.Module:
    state = adaface_state_dict(load_torch_file(path, target), target)
    return load_state_into(AdaFaceIR(_depth_of(state)), state, target, path)


@register_target(
    TargetSpec(
        name="adaface",
        description="AdaFace IR-50/IR-101 (depth read from the checkpoint), 112x112 BGR, 512-D",
        input_size=(112, 112),
        channel_order="bgr",
        **HALF_RANGE,
        loss="embedding",
        normalize_embedding=True,
        alignment="arcface",
        weights=f"--weights PATH to an AdaFace .ckpt (e.g. adaface_ir50_ms1mv2.ckpt) from {ADAFACE_SOURCE}",
    )
)
def build_adaface(weights: Path | None) -> nn.Module:
    path = resolve_weights("adaface", weights, how_to_get=f"Get an ir_50 or ir_101 checkpoint from {ADAFACE_SOURCE}.")
    return load_adaface(path, "adaface")
