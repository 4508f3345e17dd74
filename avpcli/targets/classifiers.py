"""torchvision ResNet-50 and VGG-19 classifiers with the user's weights, at ImageNet or CIFAR-10 size.

Accepted state_dict layouts (after stripping DataParallel's `module.`):
- `resnet50`: torchvision's own (`conv1` 7x7, `layer1-4`, `fc`), e.g. resnet50-11ad3fa6.pth.
- `resnet50-cifar`: the same names with `conv1` 3x3 stride 1 and no max-pool; kuangliu/pytorch-cifar's
  `shortcut.*` and `linear.*` names are accepted for `downsample.*` and `fc.*`.
- `vgg19`: torchvision's (`features.*`, `classifier.{0,3,6}`), with or without batch norm.
- `vgg19-cifar`: torchvision's `features.*` (with or without batch norm; kuangliu's VGG19 matches) and a
  single linear head `classifier.{weight,bias}` on the 512x1x1 map a 32x32 image leaves.
The number of classes is read from the head's weight.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models
from torchvision.models import vgg

from avpcli.targets import CIFAR10, IMAGENET, TargetSpec, register_target
from avpcli.weights import load_state_into, load_torch_file, resolve_weights, unwrap_state_dict

_TORCHVISION_WEIGHTS = "https://pytorch.org/vision/stable/models.html (BSD-3-Clause code; weights per their terms)"


def _read_state(path: Path, target: str) -> dict[str, torch.Tensor]:
    return unwrap_state_dict(load_torch_file(path, target), target)


def resnet50_classifier(state: dict[str, torch.Tensor], cifar: bool) -> nn.Module:
    model = models.resnet50(weights=None, num_classes=state["fc.weight"].shape[0] if "fc.weight" in state else 1000)
    if cifar:
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    return model


def _rename_kuangliu_resnet(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        key = key.replace(".shortcut.", ".downsample.")
        if key.startswith("linear."):
            key = "fc." + key[len("linear."):]
        renamed[key] = value
    return renamed


class CifarVGG(nn.Module):
    """torchvision VGG-19 feature layers + one linear layer on the 512x1x1 map of a 32x32 input."""

    def __init__(self, batch_norm: bool, num_classes: int):
        super().__init__()
        # torchvision's own layer list for VGG-19 (config "E"), without building its 120M-parameter head.
        self.features = vgg.make_layers(vgg.cfgs["E"], batch_norm=batch_norm)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def _has_batch_norm(state: dict[str, torch.Tensor]) -> bool:
    return any(key.startswith("features.") and key.endswith("running_mean") for key in state)


def _classifier_spec(name: str, description: str, cifar: bool, layout: str) -> TargetSpec:
    return TargetSpec(
        name=name,
        description=description,
        input_size=(32, 32) if cifar else (224, 224),
        **(CIFAR10 if cifar else IMAGENET),
        loss="classifier",
        alignment=None,
        weights=f"--weights PATH (required): {layout}",
    )


@register_target(_classifier_spec("resnet50", "torchvision ResNet-50, 224x224 RGB, logits", False,
                                  f"a torchvision resnet50 state_dict, e.g. from {_TORCHVISION_WEIGHTS}"))
def build_resnet50(weights: Path | None) -> nn.Module:
    path = resolve_weights("resnet50", weights, how_to_get="It takes a torchvision resnet50 state_dict.")
    state = _read_state(path, "resnet50")
    return load_state_into(resnet50_classifier(state, cifar=False), state, "resnet50", path)


@register_target(_classifier_spec("resnet50-cifar", "ResNet-50 for CIFAR-10 (3x3 stem, no max-pool), 32x32 RGB, logits",
                                  True, "a torchvision-named or kuangliu/pytorch-cifar ResNet50 state_dict"))
def build_resnet50_cifar(weights: Path | None) -> nn.Module:
    path = resolve_weights("resnet50-cifar", weights, how_to_get="It takes a CIFAR-10 ResNet-50 state_dict (see docs/TARGETS.md).")
    state = _rename_kuangliu_resnet(_read_state(path, "resnet50-cifar"))
    return load_state_into(resnet50_classifier(state, cifar=True), state, "resnet50-cifar", path)


@register_target(_classifier_spec("vgg19", "torchvision VGG-19 (with or without BN), 224x224 RGB, logits", False,
                                  f"a torchvision vgg19 or vgg19_bn state_dict, e.g. from {_TORCHVISION_WEIGHTS}"))
def build_vgg19(weights: Path | None) -> nn.Module:
    path = resolve_weights("vgg19", weights, how_to_get="It takes a torchvision vgg19 / vgg19_bn state_dict.")
    state = _read_state(path, "vgg19")
    constructor = models.vgg19_bn if _has_batch_norm(state) else models.vgg19
    model = constructor(weights=None, num_classes=state["classifier.6.weight"].shape[0] if "classifier.6.weight" in state else 1000)
    return load_state_into(model, state, "vgg19", path)


@register_target(_classifier_spec("vgg19-cifar", "VGG-19 for CIFAR-10 (one linear head), 32x32 RGB, logits", True,
                                  "torchvision-named VGG-19 features + classifier.{weight,bias} (kuangliu's VGG19 fits)"))
def build_vgg19_cifar(weights: Path | None) -> nn.Module:
    path = resolve_weights("vgg19-cifar", weights, how_to_get="It takes a CIFAR-10 VGG-19 state_dict (see docs/TARGETS.md).")
    state = _read_state(path, "vgg19-cifar")
    num_classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else 10
    return load_state_into(CifarVGG(_has_batch_norm(state), num_classes), state, "vgg19-cifar", path)
