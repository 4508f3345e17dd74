"""ArcFace: insightface's buffalo_l recognizer (w600k_r50.onnx via onnx2torch) or an arcface_torch .pth."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from avpcli.targets import CENTRED_BY_127_5, TargetSpec, register_target
from avpcli.targets.custom import load_onnx_model
from avpcli.targets.iresnet import load_iresnet
from avpcli.weights import RemoteWeights, resolve_weights

BUFFALO_L = RemoteWeights(
    url="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip",
    filename="insightface_buffalo_l_w600k_r50.onnx",
    sha256="80ffe37d8a5940d59a7384c201a2a38d4741f2f3c51eef46ebb28218a7b0ca2f",  # of the zip
    archive_member="w600k_r50.onnx",
    licence="insightface pretrained models: non-commercial research use only",
)
# Where the insightface package itself unpacks buffalo_l.
INSIGHTFACE_COPY = Path("~/.insightface/models/buffalo_l/w600k_r50.onnx").expanduser()


@register_target(
    TargetSpec(
        name="arcface",
        description="ArcFace ResNet-50 (insightface buffalo_l, WebFace600K), 112x112 RGB, 512-D",
        input_size=(112, 112),
        **CENTRED_BY_127_5,
        loss="embedding",
        normalize_embedding=True,
        alignment="arcface",
        weights=(
            f"w600k_r50.onnx from {BUFFALO_L.url} (sha256-checked, {BUFFALO_L.licence}), "
            "or --weights PATH to an .onnx or an arcface_torch iresnet50/100 .pth"
        ),
    )
)
def build_arcface(weights: Path | None) -> nn.Module:
    path = resolve_weights("arcface", weights, BUFFALO_L, known_paths=[INSIGHTFACE_COPY])
    if path.suffix.lower() == ".onnx":
        return load_onnx_model(path, "arcface")
    return load_iresnet(path, "arcface")
