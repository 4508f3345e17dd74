"""FaceNet (facenet-pytorch's InceptionResnetV1) with its VGGFace2 or CASIA-WebFace weights."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from avpcli.targets import CENTRED_BY_128, TargetSpec, register_target
from avpcli.weights import RemoteWeights, load_checkpoint_into, resolve_weights

# facenet-pytorch 2.5.3, models/inception_resnet_v1.py: the URLs and file names it downloads and
# caches under $TORCH_HOME/checkpoints, so a copy facenet-pytorch already fetched is reused.
_RELEASE = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
FACENET_VGGFACE2 = RemoteWeights(
    url=_RELEASE + "20180402-114759-vggface2.pt",
    filename="20180402-114759-vggface2.pt",
    sha256="281cebca8662831adb987a874bdcb36e73f5b1c6dc5ee5878f305e985625d99b",
    licence="MIT (facenet-pytorch); weights converted from davidsandberg/facenet (MIT), trained on VGGFace2",
)
# No checksum for this one is published anywhere avp could pin, so avp never downloads it itself.
FACENET_CASIA = RemoteWeights(
    url=_RELEASE + "20180408-102900-casia-webface.pt",
    filename="20180408-102900-casia-webface.pt",
    sha256=None,
    licence="MIT (facenet-pytorch); weights converted from davidsandberg/facenet (MIT), trained on CASIA-WebFace",
)

_FACENET_SPEC = dict(
    input_size=(160, 160),
    **CENTRED_BY_128,
    loss="embedding",
    normalize_embedding=True,
    alignment="facenet",
)


def build_inception_resnet_v1(weights_path: Path | None, target: str) -> nn.Module:
    """InceptionResnetV1 returning 512-D embeddings; the checkpoint's classifier (`logits.*`) is dropped."""
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    if weights_path is not None:
        load_checkpoint_into(model, weights_path, target, ignore_prefixes=("logits.",))
    return model


@register_target(
    TargetSpec(
        name="facenet",
        description="FaceNet InceptionResnetV1 (VGGFace2), 160x160 RGB, 512-D",
        weights=f"downloaded from {FACENET_VGGFACE2.url} (sha256-checked) or --weights PATH",
        **_FACENET_SPEC,
    )
)
def build_facenet(weights: Path | None) -> nn.Module:
    return build_inception_resnet_v1(resolve_weights("facenet", weights, FACENET_VGGFACE2), "facenet")


@register_target(
    TargetSpec(
        name="facenet-casia",
        description="FaceNet InceptionResnetV1 (CASIA-WebFace), 160x160 RGB, 512-D",
        weights=f"--weights PATH, or facenet-pytorch's cached {FACENET_CASIA.filename}; from {FACENET_CASIA.url}",
        **_FACENET_SPEC,
    )
)
def build_facenet_casia(weights: Path | None) -> nn.Module:
    return build_inception_resnet_v1(resolve_weights("facenet-casia", weights, FACENET_CASIA), "facenet-casia")
