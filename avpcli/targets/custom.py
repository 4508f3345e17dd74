"""Any model as a target: `onnx:PATH` (converted to torch by onnx2torch) or `torchscript:PATH`.

The user says what avp cannot read from the file: input size, normalization, channel order and
whether the output is an embedding or logits. avp then attacks it like a registered target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from avpcli.errors import TargetError
from avpcli.targets import ChannelOrder, LossKind, TargetModel, TargetSpec, is_custom_reference


@dataclass(frozen=True)
class CustomTargetOptions:
    """How to feed a user's own model.

    input_size: (height, width) the model expects.
    mean, std: per-channel normalization on the [0, 1] scale in the model's channel order
        (the model sees (x - mean) / std); e.g. 127.5/255 and 128/255 for (x*255 - 127.5)/128.
    channel_order: "rgb" or "bgr".
    loss: "embedding" (the output is a feature vector) or "classifier" (the output is logits).
    normalize_embedding: L2-normalize embeddings before comparing them.
    """

    input_size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: ChannelOrder = "rgb"
    loss: LossKind = "embedding"
    normalize_embedding: bool = True

    def __post_init__(self) -> None:
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            raise TargetError(f"input size must be two positive numbers (height, width), got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise TargetError("mean and std need three values each (one per channel)")
        if any(value <= 0 for value in self.std):
            raise TargetError(f"std values must be positive, got {self.std}")
        if self.channel_order not in ("rgb", "bgr"):
            raise TargetError(f"channel order must be rgb or bgr, got {self.channel_order!r}")
        if self.loss not in ("embedding", "classifier"):
            raise TargetError(f"loss must be embedding or classifier, got {self.loss!r}")


def _split_reference(reference: str) -> tuple[str, Path]:
    if not is_custom_reference(reference):
        raise TargetError(f"{reference!r} is not onnx:PATH or torchscript:PATH")
    kind, _, path = reference.partition(":")
    if not path:
        raise TargetError(f"{reference!r} names no file: write {kind}:PATH")
    return kind, Path(path).expanduser()


def custom_spec(reference: str, options: CustomTargetOptions | None) -> TargetSpec:
    """The spec for `onnx:PATH` / `torchscript:PATH`; the options are required (a file says too little)."""
    kind, path = _split_reference(reference)
    if options is None:
        raise TargetError(
            f"{reference}: a custom model needs at least --input-size HxW "
            "(and usually --mean, --std, --channels, --loss)"
        )
    return TargetSpec(
        name=reference,
        description=f"user's {kind} model {path.name}",
        input_size=tuple(options.input_size),
        channel_order=options.channel_order,
        mean=tuple(options.mean),
        std=tuple(options.std),
        loss=options.loss,
        normalize_embedding=options.normalize_embedding,
        alignment=None,
        weights=str(path),
    )


def load_onnx_model(path: Path, target: str) -> nn.Module:
    """An ONNX file as a differentiable torch module (onnx2torch), parameters in float32 on the CPU."""
    try:
        import onnx
        from onnx2torch import convert
    except ImportError as missing:
        raise TargetError(f"{target}: ONNX models need the onnx and onnx2torch packages ({missing})") from None
    try:
        model = convert(onnx.load(str(path)))
    except Exception as error:  # noqa: BLE001 - a file onnx2torch cannot convert is the user's to fix
        raise TargetError(f"{target}: cannot convert ONNX model {path}: {type(error).__name__}: {str(error)[:300]}") from None
    return model.float().eval()


def load_torchscript_model(path: Path, target: str) -> nn.Module:
    """A TorchScript archive (torch.jit.save), loaded on the CPU; no Python pickles are involved."""
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as error:  # noqa: BLE001
        raise TargetError(f"{target}: cannot load TorchScript model {path}: {type(error).__name__}: {str(error)[:300]}") from None


class _ContiguousInput(nn.Module):
    """Hands a user's model NCHW-contiguous input: avp runs NHWC for speed, and a model written for
    NCHW tensors (one that calls `.view` on a feature map, say) may fail on anything else."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.contiguous())


def load_custom_model(reference: str) -> nn.Module:
    """The model behind `onnx:PATH` / `torchscript:PATH`, fed NCHW-contiguous input."""
    kind, path = _split_reference(reference)
    if not path.is_file():
        raise TargetError(f"{reference}: model file {path} does not exist")
    model = load_onnx_model(path, reference) if kind == "onnx" else load_torchscript_model(path, reference)
    return _ContiguousInput(model)


def custom_target(
    reference: str,
    input_size: tuple[int, int],
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    channel_order: ChannelOrder = "rgb",
    loss: LossKind = "embedding",
    normalize_embedding: bool = True,
) -> TargetModel:
    """Shortcut for `load_target(reference, options=CustomTargetOptions(...))`."""
    options = CustomTargetOptions(tuple(input_size), tuple(mean), tuple(std), channel_order, loss, normalize_embedding)
    return TargetModel(custom_spec(reference, options), load_custom_model(reference))
