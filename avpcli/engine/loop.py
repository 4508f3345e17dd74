"""The optimization loop (paper Algorithm 1): tensors and frozen modules in, ciphertexts and metrics out.

For originals x in [0, 1], a frozen target f and a frozen key K, each image's ciphertext x' descends
the objective (engine.objective) with momentum on per-sample normalized gradients. Every step size
and stop decision is per sample, so an image's result never depends on its batch-mates (a defect of
the research code), and every stop decision is taken on the image rounded to 8 bits, which is what
gets written to disk.

No files, no printing: the caller hands in modules and tensors and gets tensors back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from avpcli.engine.objective import Measured, Objective, autocast_forwards, quantize
from avpcli.engine.settings import AttackSettings, LossKind


@dataclass
class ImageMetrics:
    """What was reached for one image, measured on its 8-bit rounding."""

    feature_distance: float
    cosine: float
    ssim_encrypted: float
    ssim_decrypted: float
    lowpass_correlation: float
    iterations: int
    met_targets: bool
    same_class: bool | None = None  # classifier targets only


@dataclass
class EncryptionResult:
    """Ciphertexts on the 1/255 grid (N, 3, H, W) and one ImageMetrics per image."""

    encrypted: torch.Tensor
    metrics: list[ImageMetrics]


ProgressCallback = Callable[[int, int], None]  # (step, images finished so far)


def _pinned_start(key: nn.Module, images: torch.Tensor,
                  originals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The starts with what the key needs written into them (a per-image scramble's nonce), and a mask
    (1, 1, H, W) of the pixels that must keep their start's values (None: every pixel moves)."""
    pinned = getattr(key, "pinned", None)
    mask = pinned(*images.shape[-2:], images.device) if pinned is not None else None
    if mask is None:
        return images, None
    with torch.no_grad():
        stamped = key.stamp(images, originals)
    return stamped.contiguous(memory_format=torch.channels_last), mask


def _initial_images(originals: torch.Tensor, settings: AttackSettings, noise_seeds: Sequence[int],
                    key: nn.Module) -> torch.Tensor:
    if settings.initialization == "original":
        return originals.clone()
    preimage = getattr(key, "preimage", None)
    if settings.initialization == "preimage" and preimage is not None and getattr(key, "scrambles", True):
        with torch.no_grad():
            return preimage(originals).clamp(0, 1).contiguous(memory_format=torch.channels_last)
    if len(noise_seeds) != originals.shape[0]:
        raise ValueError("one noise seed per image is needed")
    # One generator per image so an image's noise does not depend on its position in the batch.
    noise = [
        torch.randn(originals.shape[1:], generator=torch.Generator().manual_seed(int(seed)))
        for seed in noise_seeds
    ]
    return torch.stack(noise).to(originals.device).clamp(0, 1)


class _StepDecay:
    """Per-image step sizes that shrink by `decay` after `patience` rises of the image's loss."""

    def __init__(self, batch: int, step_size: float, decay: float, patience: int, device):
        self.step = torch.full((batch,), step_size, device=device)
        self.rises = torch.zeros(batch, dtype=torch.long, device=device)
        self.previous_loss = torch.full((batch,), float("inf"), device=device)
        self.decay, self.patience = decay, patience

    def update(self, active: torch.Tensor, loss: torch.Tensor) -> None:
        """Count the rises of the active images' losses (N_active,) and shrink the steps that are due."""
        counts = self.rises[active] + (loss > self.previous_loss[active]).long()
        self.previous_loss[active] = loss
        due = counts >= self.patience
        self.step[active] = torch.where(due, self.step[active] * self.decay, self.step[active])
        self.rises[active] = torch.where(due, torch.zeros_like(counts), counts)


def _repair_feature_match(objective: Objective, encrypted8, originals, reference, reference_class, steps: int,
                          toward_start=None, pinned: torch.Tensor | None = None):
    """Nudge 8-bit images by ±1/255 along the target loss's gradient until the feature bar is met."""
    for _ in range(steps):
        measured = objective.measure(encrypted8, originals, reference, reference_class)
        broken = ~objective.feature_ok(measured)
        if not bool(broken.any()):
            break
        images = encrypted8.clone().requires_grad_(True)
        with autocast_forwards(images, objective.settings.autocast_dtype):
            outputs = objective.target(images).float()
        loss = objective.target_loss(outputs, reference, reference_class, toward_start).sum()
        (gradient,) = torch.autograd.grad(loss, images)
        nudged = quantize(encrypted8 - gradient.sign() / 255)
        if pinned is not None:
            nudged = torch.where(pinned, encrypted8, nudged)
        encrypted8 = torch.where(broken[:, None, None, None], nudged, encrypted8)
    return encrypted8


def encrypt_batch(
    originals: torch.Tensor,
    target: nn.Module,
    key: nn.Module,
    settings: AttackSettings,
    loss_kind: LossKind,
    noise_seeds: Sequence[int] = (),
    progress: ProgressCallback | None = None,
) -> EncryptionResult:
    """Encrypt a batch of images (N, 3, H, W) in [0, 1] against `target` with the key `key`.

    `target` maps [0, 1] images to embeddings or logits and `key` maps [0, 1] images to [0, 1]
    images; both must be frozen and in eval mode (they are put in eval mode here). `noise_seeds`
    gives each image its own initial noise. Returns ciphertexts on the 8-bit grid with their metrics.
    """
    if originals.ndim != 4 or originals.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(originals.shape)}")
    target.eval()
    key.eval()
    originals = originals.detach().float().clamp(0, 1)
    # The fastest convolutions (cuDNN on tensor cores, oneDNN in bf16) take NHWC; the modules are
    # converted by prepare_models.
    originals = originals.contiguous(memory_format=torch.channels_last)
    batch = originals.shape[0]
    device = originals.device

    objective = Objective(originals, target, key, settings, loss_kind)
    reference, reference_class = objective.reference, objective.reference_class

    images, pinned = _pinned_start(key, _initial_images(originals, settings, noise_seeds, key), originals)
    objective.set_start(images)
    start_colour = images.mean(dim=(2, 3), keepdim=True) if settings.hold_colour else None
    velocity = torch.zeros_like(images)
    decay = _StepDecay(batch, settings.step_size, settings.step_decay, settings.decay_patience, device)

    results = quantize(images)
    # The best 8-bit state seen of each image that met every bar but SSIM_d: an image that never
    # meets SSIM_d ends there rather than wherever its last step left it.
    best = results.clone()
    best_ssim_decrypted = torch.full((batch,), -float("inf"), device=device)
    iterations_used = torch.full((batch,), settings.iterations, dtype=torch.long)
    active = torch.arange(batch, device=device)  # indices (into the batch) still iterating
    # The figures of each image that finished, as its check measured them (the stop was decided on
    # them): only the images that never finished are measured again at the end.
    finished_figures: list[tuple[torch.Tensor, Measured]] = []

    def check(checked: torch.Tensor, states: torch.Tensor, steps_taken: int) -> torch.Tensor:
        """Check 8-bit `states` of the images `checked` (indices into the batch): keep each image's best
        state short of SSIM_d, finish those that meet every bar; returns which of them finished."""
        candidate = quantize(states)
        measured = objective.measure(candidate, originals[checked], reference[checked],
                                     reference_class[checked] if reference_class is not None else None,
                                     objective.start_directions(checked))
        finished = objective.meets(measured)
        ssim_decrypted = measured.ssim_decrypted
        improved = objective.only_short_of_key(measured) & (ssim_decrypted > best_ssim_decrypted[checked])
        best[checked[improved]] = candidate[improved]
        best_ssim_decrypted[checked[improved]] = ssim_decrypted[improved]
        done = checked[finished]
        results[done] = candidate[finished]
        finished_figures.append((done, measured.take(finished)))
        iterations_used[done.cpu()] = steps_taken
        return finished

    for iteration in range(1, settings.iterations + 1):
        current = images[active].requires_grad_(True)
        step_loss = objective.loss(current, originals[active], reference[active],
                                   reference_class[active] if reference_class is not None else None, active)
        (gradient,) = torch.autograd.grad(step_loss.value.sum(), current)
        current, loss = current.detach(), step_loss.value.detach()
        if settings.early_checks and settings.stop is not None and bool(step_loss.may_meet.any()):
            # This state's own forwards met the bars on the target and the key in float: check its 8-bit
            # rounding now, before a step moves it (the start side, for one, flickers about its bar).
            hinted = step_loss.may_meet.nonzero().squeeze(1)
            going_on = torch.ones_like(step_loss.may_meet)
            going_on[hinted[check(active[hinted], current[hinted], iteration - 1)]] = False
            if not bool(going_on.all()):
                active, current, gradient, loss = active[going_on], current[going_on], gradient[going_on], loss[going_on]
                if progress is not None:
                    progress(iteration - 1, batch - active.numel())
                if active.numel() == 0:
                    break
        if pinned is not None:
            # Pixels that never move must not weigh in the step's scale below.
            gradient = gradient.masked_fill(pinned, 0)

        # Per-sample normalization by mean |gradient| makes the step size independent of the
        # loss's scale; a zero gradient (a saturated image) must not divide by zero.
        scale = gradient.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
        velocity[active] = settings.momentum * velocity[active] + gradient / scale[:, None, None, None]
        stepped = (current - decay.step[active, None, None, None] * velocity[active]).clamp(0, 1)
        if start_colour is not None:
            # Back to the start's mean colour (a shift the clamp cuts short is finished next step).
            stepped = (stepped - stepped.mean(dim=(2, 3), keepdim=True) + start_colour[active]).clamp(0, 1)
        if pinned is not None:
            stepped = torch.where(pinned, current, stepped)  # the nonce stays as stamped
        images[active] = stepped
        decay.update(active, loss)

        last = iteration == settings.iterations
        if settings.stop is not None and (iteration % settings.check_every == 0 or last):
            finished = check(active, images[active], iteration)
            active = active[~finished]
            if progress is not None:
                progress(iteration, batch - active.numel())
            if active.numel() == 0:
                break
        elif progress is not None and last:
            progress(iteration, batch)

    # Images that never met every bar end on their best state that met all the others, even where
    # their final state has a higher SSIM_d but breaks a bar (a ciphertext never leaves the privacy
    # bars for the sake of SSIM_d); the rest on their final state, whose feature match is made to
    # survive the rounding to 8 bits.
    has_best = torch.isfinite(best_ssim_decrypted[active])
    results[active[has_best]] = best[active[has_best]]
    lacking = active[~has_best]
    if lacking.numel() > 0:
        results[lacking] = _repair_feature_match(
            objective, quantize(images[lacking]), originals[lacking], reference[lacking],
            reference_class[lacking] if reference_class is not None else None, settings.repair_steps,
            objective.start_directions(lacking), pinned,
        )

    if active.numel() > 0:
        finished_figures.append((active, objective.measure(
            results[active], originals[active], reference[active],
            reference_class[active] if reference_class is not None else None, objective.start_directions(active))))
    measured = Measured.assembled(finished_figures, batch)
    met = objective.meets(measured).cpu().tolist()
    metrics = [ImageMetrics(**row, iterations=int(iterations_used[index]), met_targets=bool(met[index]))
               for index, row in enumerate(measured.rows())]
    return EncryptionResult(encrypted=results.detach(), metrics=metrics)


@torch.no_grad()
def measure_images(
    originals: torch.Tensor, encrypted: torch.Tensor, target: nn.Module, key: nn.Module, loss_kind: LossKind
) -> list[dict]:
    """Metrics of given (e.g. read back from disk) ciphertexts against their originals."""
    target.eval()
    key.eval()
    objective = Objective(originals.float(), target, key, AttackSettings(), loss_kind)
    return objective.measure(encrypted.float(), originals.float(), objective.reference,
                             objective.reference_class).rows()
