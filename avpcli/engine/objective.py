"""The attack's objective (paper Eq. 15 with avp's terms) for one batch, and its figures on 8-bit images.

    L(x') = L_t(x', x) + λ·L_v(x') + μ·(mean((x − K(x'))²) + w·(1 − SSIM(K(x'), x))) + ρ·Σ_f r_f²

L_t is the mean square of f(x') − f(x) for embedding targets (or the distance itself, scaled:
settings.distance_pull) and −scale·(top-1 logit) for classifiers. Every term is per sample, so an
image's loss never depends on its batch-mates.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch

from avpcli.engine.settings import AttackSettings, LossKind, StopCriteria
from avpcli.metrics import (LeakFilters, SsimAgainst, box_filter_sum, cosine_similarity, feature_distance,
                            lowpass_correlation, luminance, ssim)


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid that a PNG stores, staying in float."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def variance_consistency(images: torch.Tensor, block_size: int) -> torch.Tensor:
    """L_v per sample: the variance of block sums, per channel, added over channels (Eq. 12–13)."""
    block_sums = box_filter_sum(images, block_size).flatten(2)
    return block_sums.var(dim=2, unbiased=True).sum(dim=1)


def autocast_forwards(images: torch.Tensor, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=images.device.type, dtype=dtype)


class LeakPenalty:
    """Σ_f r_f², r_f the correlation of F_f(x') with F_f(x) for the leak filters F_f of metrics (low-pass
    σ 3, band-pass σ 1 − σ 4 and edge magnitude of luma): what a blur, a band-pass or an edge filter
    and a contrast stretch show of x in x'.

    Scale-free: it removes x's layout from x' at those scales instead of flattening x' (a flattened
    x' still correlates with whatever is left). The filters run by FFT (metrics.LeakFilters) and the
    originals' side is computed once, so the term costs a few milliseconds a step.
    """

    def __init__(self, originals: torch.Tensor, sigma: float):
        self.filters = LeakFilters(*originals.shape[-2:], lowpass_sigma=sigma, device=originals.device)
        with torch.no_grad():
            filtered = self.filters(luminance(originals.float())).flatten(2)  # (N, filters, H·W)
            centred = filtered - filtered.mean(dim=2, keepdim=True)
            self.unit = centred / centred.norm(dim=2, keepdim=True).clamp_min(1e-12)

    def penalty(self, images: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        filtered = self.filters(luminance(images.float())).flatten(2)
        centred = filtered - filtered.mean(dim=2, keepdim=True)
        correlations = (centred * self.unit[active]).sum(dim=2) / centred.norm(dim=2).clamp_min(1e-12)
        return correlations.pow(2).sum(dim=1)


class Measured(NamedTuple):
    """Per-image figures (N,) of a batch of 8-bit ciphertexts; same_class is None for embedding targets.

    start_side (the component of f(x') − f(x) toward the start's features) is known only while
    encrypting, where the start is; it is a stop decision's figure, not one of the rows.
    """

    distance: torch.Tensor
    cosine: torch.Tensor
    ssim_encrypted: torch.Tensor
    ssim_decrypted: torch.Tensor
    same_class: torch.Tensor | None
    lowpass: torch.Tensor
    start_side: torch.Tensor | None = None

    def take(self, which: torch.Tensor) -> Measured:
        """The figures of the images `which` selects (a mask or indices)."""
        return Measured(*(None if column is None else column[which] for column in self))

    @staticmethod
    def assembled(parts: list[tuple[torch.Tensor, Measured]], batch: int) -> Measured:
        """One batch's figures from parts measured apart: (indices into the batch, their figures), each
        image in exactly one part."""
        columns = []
        for position in range(len(Measured._fields)):
            pieces = [(indices, part[position]) for indices, part in parts if indices.numel() > 0]
            if not pieces or any(column is None for _, column in pieces):
                columns.append(None)
                continue
            whole = pieces[0][1].new_empty((batch, *pieces[0][1].shape[1:]))
            for indices, column in pieces:
                whole[indices] = column
            columns.append(whole)
        return Measured(*columns)

    def rows(self) -> list[dict]:
        """One dict per image with the names the manifest uses."""
        columns = {"feature_distance": self.distance, "cosine": self.cosine, "ssim_encrypted": self.ssim_encrypted,
                   "ssim_decrypted": self.ssim_decrypted, "lowpass_correlation": self.lowpass}
        values = {name: column.float().cpu().tolist() for name, column in columns.items()}
        same_class = self.same_class.cpu().tolist() if self.same_class is not None else None
        return [{**{name: column[index] for name, column in values.items()},
                 **({"same_class": bool(same_class[index])} if same_class is not None else {})}
                for index in range(self.distance.shape[0])]


def _target_figures(outputs, reference, reference_class, toward_start):
    """(distance, same class or None, start side or None) of the target's outputs against the originals'."""
    same_class = outputs.argmax(dim=1) == reference_class if reference_class is not None else None
    start_side = ((outputs - reference) * toward_start).sum(dim=1) if toward_start is not None else None
    return feature_distance(outputs, reference), same_class, start_side


class StepLoss(NamedTuple):
    """A step's per-sample loss (N,), and whether each image's float figures already meet the stop's bars
    on the target and the key (N,): a hint that its 8-bit check may pass, so that the loop checks an
    image when it may be done rather than only every check_every steps (which wasted half that many
    steps per image on average, and all of them where the start side flickers about its bar)."""

    value: torch.Tensor
    may_meet: torch.Tensor


class Objective:
    """The per-sample loss of Eq. 15 and the measurements on 8-bit images, for one batch."""

    def __init__(self, originals, target, key, settings: AttackSettings, loss_kind: LossKind):
        self.settings = settings
        self.loss_kind = loss_kind
        self.target = target
        self.key = key
        with torch.no_grad():
            reference = target(originals).float()
        self.reference = reference
        self.leak = LeakPenalty(originals, settings.lowpass_sigma) if settings.leak_weight else None
        # SSIM(K(x'), x) on every step: x's side of it is filtered once.
        self.key_ssim = SsimAgainst(originals) if settings.key_ssim_weight or settings.early_checks else None
        self.reference_class = reference.argmax(dim=1) if loss_kind == "classifier" else None
        # Unit vectors (N, D) from f(x) toward f(x'_0), once the start is known (see set_start).
        self.toward_start: torch.Tensor | None = None

    @torch.no_grad()
    def set_start(self, starts: torch.Tensor) -> None:
        """Note where each image starts, for the start-side term and bar (embedding targets only)."""
        stop = self.settings.stop
        wanted = self.settings.start_side_weight or (stop is not None and stop.max_start_side is not None)
        if self.loss_kind == "classifier" or not wanted:
            return
        direction = self.target(starts).float() - self.reference
        length = direction.norm(dim=1, keepdim=True)
        # A start whose features are f(x)'s (the original itself) has no side: its direction is 0.
        self.toward_start = torch.where(length > 1e-6, direction / length.clamp_min(1e-12), torch.zeros_like(direction))

    def target_loss(self, outputs, reference, reference_class, toward_start=None):
        if self.loss_kind == "classifier":
            top1_logit = outputs.gather(1, reference_class[:, None]).squeeze(1)
            return -self.settings.classifier_scale * top1_logit
        residual = outputs - reference
        pull = self.settings.distance_pull
        if not pull:
            loss = (residual ** 2).mean(dim=1)
        else:  # the distance, with the gradient of the mean square at distance `pull` (settings)
            loss = 2 * pull * residual.norm(dim=1) / residual.shape[1]
        if toward_start is not None and self.settings.start_side_weight:
            # In the same units as the mean square: the along-start component weighs (1 + weight)
            # times any other direction of the residual.
            along = (residual * toward_start).sum(dim=1)
            loss = loss + self.settings.start_side_weight * along ** 2 / residual.shape[1]
        return loss

    def start_directions(self, active: torch.Tensor) -> torch.Tensor | None:
        return self.toward_start[active] if self.toward_start is not None else None

    def loss(self, images, originals, reference, reference_class, active) -> StepLoss:
        """Per-sample loss (N,) of the images being optimized, with the float hint of StepLoss; `active`
        indexes them in the batch."""
        settings = self.settings
        with autocast_forwards(images, settings.autocast_dtype):
            outputs = self.target(images).float()
            decrypted = self.key(images).float()
        toward_start = self.start_directions(active)
        loss = self.target_loss(outputs, reference, reference_class, toward_start)
        key_error = ((decrypted - originals) ** 2).flatten(1).mean(dim=1)
        key_ssim = None
        if settings.key_ssim_weight:
            key_ssim = self.key_ssim(decrypted.clamp(0, 1), active)
            key_error = key_error + settings.key_ssim_weight * (1 - key_ssim)
        loss = loss + settings.key_weight * key_error
        if self.leak is not None:
            loss = loss + settings.leak_weight * self.leak.penalty(images, active)
        if settings.smoothness == "variance":
            if settings.variance_weight:  # (λ 0, the tuned recipes': no need to filter)
                loss = loss + settings.variance_weight * variance_consistency(images, settings.block_size)
        else:
            loss = loss - settings.variance_weight * ((images - originals) ** 2).flatten(1).sum(dim=1)
        return StepLoss(loss, self._may_meet(outputs.detach(), decrypted.detach(), key_ssim, active,
                                             reference, reference_class, toward_start))

    @torch.no_grad()
    def _may_meet(self, outputs, decrypted, key_ssim, active, reference, reference_class, toward_start):
        """The stop's bars on the target's and the key's float outputs of this step (the ciphertext's own
        SSIM and low-pass bars are left to the 8-bit check: they hold all along from a scrambled start).
        All False without early checks: nothing is computed for a hint no one reads."""
        if self.settings.stop is None or not self.settings.early_checks:
            return torch.zeros(outputs.shape[0], dtype=torch.bool, device=outputs.device)
        ssim_decrypted = key_ssim.detach() if key_ssim is not None else self.key_ssim(decrypted.clamp(0, 1), active)
        distance, same_class, start_side = _target_figures(outputs, reference, reference_class, toward_start)
        return self.settings.stop.accepts(distance, torch.zeros_like(ssim_decrypted), ssim_decrypted, same_class,
                                          None, start_side)

    @torch.no_grad()
    def measure(self, encrypted8, originals, reference, reference_class, toward_start=None) -> Measured:
        """The figures of 8-bit ciphertexts.

        Always in full precision, also when the optimization runs under autocast: every stop
        decision is taken on the figures a user will see.
        """
        outputs = self.target(encrypted8).float()
        decrypted8 = quantize(self.key(encrypted8).float())
        distance, same_class, start_side = _target_figures(outputs, reference, reference_class, toward_start)
        cosine = cosine_similarity(outputs, reference)
        return Measured(distance, cosine, ssim(encrypted8, originals), ssim(decrypted8, originals), same_class,
                        lowpass_correlation(encrypted8, originals), start_side)

    def meets(self, measured: Measured) -> torch.Tensor:
        return (self.settings.stop or StopCriteria()).accepts(measured.distance, measured.ssim_encrypted,
                                                              measured.ssim_decrypted, measured.same_class,
                                                              measured.lowpass, measured.start_side)

    def only_short_of_key(self, measured: Measured) -> torch.Tensor:
        """Images that meet every bar but SSIM_d: candidates for the best state kept of an image."""
        stop = self.settings.stop or StopCriteria()
        unbounded = torch.full_like(measured.ssim_decrypted, float("inf"))
        return stop.accepts(measured.distance, measured.ssim_encrypted, unbounded, measured.same_class,
                            measured.lowpass, measured.start_side) & (measured.ssim_decrypted < stop.min_ssim_decrypted)

    def feature_ok(self, measured: Measured) -> torch.Tensor:
        return (self.settings.stop or StopCriteria()).feature_ok(measured.distance, measured.same_class)
