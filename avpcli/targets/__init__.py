"""The target registry: one decorator, one frozen spec per target model, one place for normalization.

A target is the model that must keep seeing an encrypted image as the original. Each model family
lives in its own module of this package and registers a builder with `@register_target(TargetSpec(...))`.
The rest of avp only ever sees `TargetModel`, which takes RGB tensors in [0, 1] at the spec's input
size and applies channel order and normalization itself, so callers never have to know them.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import torch
from torch import nn

from avpcli.engine.settings import LossKind
from avpcli.errors import TargetError

if TYPE_CHECKING:
    from avpcli.targets.custom import CustomTargetOptions

ChannelOrder = Literal["rgb", "bgr"]


# The input normalizations the registered models were trained with, on the [0, 1] scale (TargetSpec's
# mean and std), named once: `TargetSpec(..., **CENTRED_BY_128)`.
CENTRED_BY_127_5 = {"mean": (127.5 / 255,) * 3, "std": (127.5 / 255,) * 3}  # (x − 127.5) / 127.5: insightface
CENTRED_BY_128 = {"mean": (127.5 / 255,) * 3, "std": (128 / 255,) * 3}  # (x − 127.5) / 128: FaceNet, SphereFace
HALF_RANGE = {"mean": (0.5,) * 3, "std": (0.5,) * 3}  # (x − 0.5) / 0.5: AdaFace
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
CIFAR10 = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2023, 0.1994, 0.2010)}  # kuangliu/pytorch-cifar

@dataclass(frozen=True)
class TargetSpec:
    """What avp must know about a target model to feed it and to attack it.

    name: the registry name users type (`--target NAME`).
    description: one line for `avp targets`.
    input_size: (height, width) in pixels that the model expects.
    channel_order: "rgb" or "bgr": the order the model's first layer expects.
    mean, std: per-channel normalization on the [0, 1] scale, in the model's channel order:
        the model sees (x - mean) / std.
    loss: "embedding" (feature distance, paper Eq. 16) or "classifier" (top-1 logit, Eq. 17).
    normalize_embedding: L2-normalize embeddings before the feature loss (ArcFace-like models);
        False for models whose raw descriptor is compared by Euclidean distance (dlib).
    match_threshold: the distance under which the model's own users call two faces the same
        (informational; None where the model has no such convention).
    alignment: the face template name used by `avpcli.align` ("dlib", "arcface", "arcface96",
        "facenet"), or None for targets that take whole images (classifiers).
    stop_past_original: the tuned recipe stops a ciphertext only once its features lie past the
        original's on their way from the start (engine.stopping_past_the_original): on for targets
        whose ciphertexts, mixed with plain images, were otherwise found too often (dlib), with the
        distance pull and key weight tuned for it.
    weights: where the weights come from, said to a user who must supply them.
    hidden: test-only targets that `avp targets` does not list.
    """

    name: str
    description: str
    input_size: tuple[int, int]
    channel_order: ChannelOrder = "rgb"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    loss: LossKind = "embedding"
    normalize_embedding: bool = True
    match_threshold: float | None = None
    alignment: str | None = None
    stop_past_original: bool = False
    weights: str = ""
    hidden: bool = False


# A builder receives the user's --weights path (or None) and returns the bare model, which takes
# normalized input in its own channel order and returns embeddings or logits.
TargetBuilder = Callable[[Path | None], nn.Module]


@dataclass(frozen=True)
class RegisteredTarget:
    spec: TargetSpec
    build: TargetBuilder = field(repr=False)


_REGISTRY: dict[str, RegisteredTarget] = {}

# Modules whose import registers targets. Listed here rather than discovered so that the registry is
# explicit and importing avp never scans the file system.
_TARGET_MODULES = (
    "avpcli.targets.testing",
    "avpcli.targets.facenet",
    "avpcli.targets.dlib",
    "avpcli.targets.mobilefacenet",
    "avpcli.targets.iresnet",
    "avpcli.targets.adaface",
    "avpcli.targets.sphere",
    "avpcli.targets.arcface_onnx",
    "avpcli.targets.cifar_resnet",
    "avpcli.targets.classifiers",
)


CUSTOM_PREFIXES = ("onnx:", "torchscript:")


def is_custom_reference(name: str) -> bool:
    """True for `onnx:PATH` / `torchscript:PATH`: a user's own model instead of a registered one."""
    return name.startswith(CUSTOM_PREFIXES)


def register_target(spec: TargetSpec) -> Callable[[TargetBuilder], TargetBuilder]:
    """Decorator that adds a builder to the registry under `spec.name` (names are unique)."""

    def decorator(build: TargetBuilder) -> TargetBuilder:
        if spec.name in _REGISTRY:
            raise ValueError(f"target {spec.name!r} is registered twice")
        _REGISTRY[spec.name] = RegisteredTarget(spec, build)
        return build

    return decorator


def _load_target_modules() -> None:
    for module_name in _TARGET_MODULES:
        try:
            importlib.import_module(module_name)
        except ModuleNotFoundError as missing:
            # A family module that is not written yet must not break the others.
            if missing.name != module_name:
                raise


def target_names(include_hidden: bool = False) -> list[str]:
    """Registered target names, sorted."""
    _load_target_modules()
    return sorted(name for name, entry in _REGISTRY.items() if include_hidden or not entry.spec.hidden)


def get_spec(name: str, options: "CustomTargetOptions | None" = None) -> TargetSpec:
    """The spec registered under `name`; a TargetError naming the choices if there is none.

    Names `onnx:PATH` and `torchscript:PATH` are the user's own models, described by `options`.
    """
    if is_custom_reference(name):
        from avpcli.targets.custom import custom_spec

        return custom_spec(name, options)
    _load_target_modules()
    if name not in _REGISTRY:
        choices = ", ".join(target_names())
        raise TargetError(f"unknown target {name!r}; choose one of: {choices}")
    return _REGISTRY[name].spec


class TargetModel(nn.Module):
    """A frozen target in eval mode that takes RGB images in [0, 1] at the spec's input size.

    Channel order and normalization happen here and nowhere else. The output is the model's
    embedding (L2-normalized when the spec says so) or its logits.
    """

    def __init__(self, spec: TargetSpec, model: nn.Module):
        super().__init__()
        self.spec = spec
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        order = [2, 1, 0] if spec.channel_order == "bgr" else [0, 1, 2]
        self.register_buffer("channel_index", torch.tensor(order), persistent=False)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> "TargetModel":
        # A target is never trained by avp: batch statistics or dropout would make an image's
        # result depend on its batch-mates.
        return super().train(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected = tuple(self.spec.input_size)
        if tuple(images.shape[-2:]) != expected:
            raise ValueError(f"target {self.spec.name} expects {expected} inputs, got {tuple(images.shape[-2:])}")
        ordered = images.index_select(1, self.channel_index)
        output = self.model((ordered - self.mean) / self.std)
        if isinstance(output, (tuple, list)):  # models that also return a norm (AdaFace)
            output = output[0]
        if self.spec.loss == "embedding" and self.spec.normalize_embedding:
            output = nn.functional.normalize(output, dim=1)
        return output


def load_target(
    name: str, weights: Path | None = None, options: "CustomTargetOptions | None" = None
) -> TargetModel:
    """Build the named target with its weights (downloading or locating them as its module says)."""
    spec = get_spec(name, options)
    if is_custom_reference(name):
        from avpcli.targets.custom import load_custom_model

        return TargetModel(spec, load_custom_model(name))
    model = _REGISTRY[name].build(weights)
    return TargetModel(spec, model)
