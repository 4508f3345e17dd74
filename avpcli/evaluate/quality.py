"""Quality (Table 1): how close ciphertexts and decryptions are to the originals; the target's features and top-1."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from avpcli.engine import LossKind, measure_images
from avpcli.evaluate.summary import summarize


@dataclass
class QualityResult:
    """SSIM_e = SSIM(x', x), SSIM_d = SSIM(G(x'), x) and the feature match, per image and summarized."""

    names: list[str]
    ssim_encrypted: list[float]
    ssim_decrypted: list[float]
    feature_distance: list[float]
    cosine: list[float]
    lowpass_correlation: list[float] = field(default_factory=list)
    same_class: list[bool] | None = None

    def summary(self) -> dict[str, dict]:
        summary = {metric: summarize(getattr(self, metric))
                   for metric in ("ssim_encrypted", "ssim_decrypted", "feature_distance", "cosine")}
        summary["lowpass_correlation_abs"] = summarize([abs(value) for value in self.lowpass_correlation])
        if self.same_class is not None:
            summary["same_class"] = summarize([float(flag) for flag in self.same_class])
        return summary


def measure_quality(originals: torch.Tensor, encrypted: torch.Tensor, target: nn.Module, key: nn.Module,
                    loss_kind: LossKind, names: Sequence[str] | None = None, batch_size: int = 32) -> QualityResult:
    """Table 1 for given 8-bit ciphertexts (as read from disk) of aligned originals.

    The same measurements as the manifest's (engine.measure_images), batched and gathered per metric.
    """
    rows: list[dict] = []
    for start in range(0, originals.shape[0], batch_size):
        rows += measure_images(originals[start:start + batch_size], encrypted[start:start + batch_size],
                               target, key, loss_kind)
    names = list(names) if names is not None else [str(index) for index in range(originals.shape[0])]
    return QualityResult(
        names=names,
        ssim_encrypted=[row["ssim_encrypted"] for row in rows],
        ssim_decrypted=[row["ssim_decrypted"] for row in rows],
        feature_distance=[row["feature_distance"] for row in rows],
        cosine=[row["cosine"] for row in rows],
        lowpass_correlation=[row["lowpass_correlation"] for row in rows],
        same_class=[row["same_class"] for row in rows] if loss_kind == "classifier" else None,
    )


@torch.no_grad()
def features(target: nn.Module, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """The target's outputs (N, D) for images (N, 3, H, W), in batches, as float32 on the CPU."""
    target.eval()
    if images.shape[0] == 0:
        return torch.zeros(0, 0)
    return torch.cat([target(images[start:start + batch_size].float()).float().cpu()
                      for start in range(0, images.shape[0], batch_size)])


# ------------------------------------------------------------------------------------------------
# Classification (Table 4 / 5)


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose largest logit is at the label's index (NaN for no rows)."""
    if logits.shape[0] == 0:
        return float("nan")
    return float((logits.argmax(dim=1) == labels.to(logits.device)).float().mean())
