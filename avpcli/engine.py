"""The AVP attack (paper Eq. 15, Algorithm 1): tensors and frozen modules in, ciphertexts and metrics out.

For originals x in [0, 1], a frozen target f and a frozen key generator G, each image's ciphertext x'
minimizes

    L(x') = L_t(x', x) + λ·L_v(x') + μ·mean((x − G(x'))²)

with momentum on per-sample normalized gradients. Every loss, step size and stop decision is per
sample, so an image's result never depends on its batch-mates (a defect of the research code), and
every stop decision is taken on the image rounded to 8 bits, which is what gets written to disk.

No files, no printing: the caller hands in modules and tensors and gets tensors back.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable, Literal, NamedTuple, Sequence

import torch
from torch import nn

from avpcli.metrics import (LeakFilters, box_filter_sum, cosine_similarity, feature_distance, lowpass_correlation,
                            luminance, ssim)
from avpcli.targets import LossKind

Smoothness = Literal["variance", "distance"]
Initialization = Literal["noise", "original", "preimage"]


@dataclass(frozen=True)
class StopCriteria:
    """When an image is good enough to stop iterating, judged on its 8-bit rounding.

    max_feature_distance: Euclidean distance between the target's outputs for x and x' (embedding
        targets; for L2-normalized embeddings 0.10 means cosine ≥ 0.995). Classifier targets must
        keep their top-1 class instead.
    max_ssim_encrypted: SSIM(x', x) must be at most this (people must not see x in x').
    min_ssim_decrypted: SSIM(G(x'), x) must be at least this (the key must give x back).
    max_lowpass_correlation: |correlation| of the blurred brightness of x' and x must be at most
        this (a blur must not show x in x'; metrics.lowpass_correlation); None: not checked.
    max_start_side: embedding targets: the most f(x') may lie on the start's side of f(x), i.e. the
        component of f(x') − f(x) along the unit vector from f(x) toward f(x'_0); None: not checked.
        Ciphertexts that stop on the way in from a start near a common point (noise, a preimage)
        are all pulled toward it, so each is nearer to every query than its original was: mixed
        among plain images they are found too often (docs/RESULTS.md, Table 2 AVP-ONE).
    """

    max_feature_distance: float = 0.10
    max_ssim_encrypted: float = 0.05
    min_ssim_decrypted: float = 0.90
    max_lowpass_correlation: float | None = None
    max_start_side: float | None = None

    def feature_ok(self, distance, same_class=None):
        """Whether the target still sees the original: same class, or a small enough distance."""
        return same_class if same_class is not None else distance <= self.max_feature_distance

    def accepts(self, distance, ssim_encrypted, ssim_decrypted, same_class=None, lowpass_correlation=None,
                start_side=None):
        """Whether every bar is met (works on floats and on per-sample tensors alike).

        A figure given as None (not measured: the start side of a ciphertext read back from disk)
        is not checked.
        """
        met = (self.feature_ok(distance, same_class) & (ssim_encrypted <= self.max_ssim_encrypted)
               & (ssim_decrypted >= self.min_ssim_decrypted))
        if self.max_lowpass_correlation is not None and lowpass_correlation is not None:
            met = met & (abs(lowpass_correlation) <= self.max_lowpass_correlation)
        if self.max_start_side is not None and start_side is not None:
            met = met & (start_side <= self.max_start_side)
        return met


@dataclass(frozen=True)
class AttackSettings:
    """Hyper-parameters of the attack. Defaults are the research code's face settings (METHOD.md §1).

    iterations: the most optimization steps per image (K).
    step_size: the initial step β applied to the momentum of normalized gradients.
    momentum: α in g ← α·g + ∇L / mean|∇L|.
    step_decay, decay_patience: the step shrinks by step_decay after decay_patience loss rises.
    variance_weight: λ, the weight of the variance-consistency loss L_v (or of L_d).
    key_weight: μ, the weight of the reconstruction loss through the key.
    key_ssim_weight: adds this times (1 − SSIM(G(x'), x)) to the key's squared error (both under μ):
        the stop bar is an SSIM, and optimizing it directly reaches it in far fewer steps.
    leak_weight: ρ·Σ_f r_f², r_f the correlation of the low-pass (σ lowpass_sigma), the band-pass
        (σ 1 − σ 4) and the edge map of x′'s luma with those of x's (metrics: what a blur, a band-pass
        or an edge filter and a contrast stretch show of x in x′). Scale-free: it removes x's layout
        from x′ at those scales without flattening x′ (a flattened x′ still correlates with what is left).
    lowpass_sigma: the σ of the leak term's low-pass.
    hold_colour: after every step, shift each channel of x′ back to its mean at the start. With a
        scrambling key the start S⁻¹(x) is grey on average whatever x's colour, and a uniform colour
        shift of x′ is all but invisible to the key (S inverts half of each channel), so without this
        the target's loss is free to carry x's colour into x′.
    start_side_weight: embedding targets: adds this times the squared component of f(x') − f(x)
        along the direction toward the start's features to the target's squared error, so that x'
        comes to rest beside f(x) rather than short of it on the start's side (StopCriteria.max_start_side).
    classifier_scale: the factor on the top-1 logit for classifier targets (research code: 0.001).
    smoothness: "variance" (L_v, paper Eq. 12–13) or "distance" (L_d = −||x − x'||², the ablation).
    block_size: the box size of L_v.
    initialization: "noise" (x'_0 = N(0, 1), clamped to [0, 1]), "original" (x'_0 = x) or "preimage"
        (x'_0 = key.preimage(x), an input the key maps close to x: S⁻¹(x) for a scrambling key; for
        a key without preimage, noise).
    stop: early-stopping criteria, or None to always run `iterations` steps.
    check_every: how often (in steps) the 8-bit image is checked against `stop`.
    repair_steps: at most this many 1/255 steps that restore the feature match if 8-bit rounding
        broke it at the end.
    autocast_dtype: run the model forwards in this dtype (None: full precision): bf16 or fp16 on
        CUDA, bf16 on CPUs with bf16 instructions. The image, the momentum, the losses and every
        stop decision stay float32.
    """

    iterations: int = 800
    step_size: float = 0.01
    momentum: float = 0.3
    step_decay: float = 0.85
    decay_patience: int = 16
    variance_weight: float = 0.001
    key_weight: float = 0.2
    key_ssim_weight: float = 0.0
    lowpass_sigma: float = 3.0
    leak_weight: float = 0.0
    hold_colour: bool = False
    start_side_weight: float = 0.0
    classifier_scale: float = 0.001
    smoothness: Smoothness = "variance"
    block_size: int = 4
    initialization: Initialization = "noise"
    stop: StopCriteria | None = field(default_factory=StopCriteria)
    check_every: int = 25
    repair_steps: int = 20
    autocast_dtype: torch.dtype | None = None



# The settings below are for keys with a scramble (avpcli/scramble.py; docs/BENCHMARKS.md records the
# search). With a plain near-identity key, G(x′) ≈ x needs x's layout in x′, so the key term and every
# privacy term fight over it; with G∘S the layout goes into S(x′), where no filter of x′ sees it.
# What pays then:
# - starting from the key's preimage S⁻¹(x), which the key already decrypts (SSIM_d ≈ G's own
#   quality) and which looks like noise: only the target's match is left to find (median 30 steps
#   on dlib instead of 50 from noise, at the same bars);
# - the leak term (ρ): the target's own perturbation is face-like (a blur showed it at |r| 0.1–0.2);
#   ρ drives the filters' correlation with x to about 0;
# - the SSIM term in the key loss (without it, twice the steps);
# - holding x′'s mean colour at the start's: otherwise the target's loss shifts it toward x's
#   (the key hardly sees a uniform shift), and the mean colours of 50 ciphertexts correlated 0.25
#   with their originals'; held, 0.00 on 30 faces, at the same steps and SSIM_d.
# What no longer pays and is gone: the block-variance L_v (λ 0), the low-pass variance, and a key
# weight that grew per image (no effect on either target kind). Momentum 0.9 averages the normalized
# gradients (the research code's 0.3 forgets a step's direction within a few steps). An image that
# never meets every bar ends on its best checked state that met all bars but SSIM_d.
FACE_SETTINGS = AttackSettings(initialization="preimage", momentum=0.9, key_weight=0.3, key_ssim_weight=0.2,
                               variance_weight=0.0, leak_weight=0.3, hold_colour=True, check_every=10,
                               stop=StopCriteria(max_ssim_encrypted=0.02, min_ssim_decrypted=0.95))


def stopping_past_the_original(settings: AttackSettings) -> AttackSettings:
    """`settings` with the start-side term and bar: f(x') stops past f(x) on its way from the start.

    Preimages look like noise and their features lie near one another, so ciphertexts that stop as
    soon as they are within the feature bar of f(x) all stopped on that side (on 268 dlib faces the
    residual's cosine with the direction to the start was 0.51). Among plain photos each was then
    nearer to every query than its original: Table 2's AVP-ONE gained 3.2 pt on dlib. Weighing that
    component 31 times the rest and stopping only once it is ≤ 0 took the gain to +0.16 pt on 120
    turns, at a median of 40 steps instead of 30 (weight 10 did as well with a longer tail).
    MobileFaceNet showed no gain without it (+0.04 pt) and took twice the steps with it, so the
    registry turns it on per target (TargetSpec.stop_past_original). docs/BENCHMARKS.md, "The start
    side", has the figures.
    """
    stop = settings.stop and replace(settings.stop, max_start_side=0.0)
    return replace(settings, start_side_weight=30.0, stop=stop)


# Classifier targets: the research code's CIFAR-10 step schedule (step 0.02, ×0.80 after 8 rises;
# METHOD.md §1) with the face settings' start, momentum and leak term. The key weight is larger (10):
# the top-1 logit term is tiny (×0.001), and 32×32 images are at the edge of what the key can
# reproduce, so the key term binds. The bars: SSIM_e ≤ 0.10 and SSIM_d ≥ 0.96 per image, which
# gives a mean SSIM_d above 0.95 where some images cannot get past 0.89–0.95.
CLASSIFIER_SETTINGS = AttackSettings(
    initialization="preimage", momentum=0.9, key_weight=10.0, key_ssim_weight=1.0, variance_weight=0.0,
    leak_weight=0.3, hold_colour=True, step_size=0.02, step_decay=0.80, decay_patience=8, check_every=10,
    stop=StopCriteria(max_ssim_encrypted=0.10, min_ssim_decrypted=0.96),
)


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


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid that a PNG stores, staying in float."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def variance_consistency(images: torch.Tensor, block_size: int) -> torch.Tensor:
    """L_v per sample: the variance of block sums, per channel, added over channels (Eq. 12–13)."""
    block_sums = box_filter_sum(images, block_size).flatten(2)
    return block_sums.var(dim=2, unbiased=True).sum(dim=1)


def _autocast(images: torch.Tensor, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=images.device.type, dtype=dtype)


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

    def rows(self) -> list[dict]:
        """One dict per image with the names the manifest uses."""
        columns = {"feature_distance": self.distance, "cosine": self.cosine, "ssim_encrypted": self.ssim_encrypted,
                   "ssim_decrypted": self.ssim_decrypted, "lowpass_correlation": self.lowpass}
        values = {name: column.float().cpu().tolist() for name, column in columns.items()}
        same_class = self.same_class.cpu().tolist() if self.same_class is not None else None
        return [{**{name: column[index] for name, column in values.items()},
                 **({"same_class": bool(same_class[index])} if same_class is not None else {})}
                for index in range(self.distance.shape[0])]


class _Objective:
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
        loss = (residual ** 2).mean(dim=1)
        if toward_start is not None and self.settings.start_side_weight:
            # In the same units as the mean square: the along-start component weighs (1 + weight)
            # times any other direction of the residual.
            along = (residual * toward_start).sum(dim=1)
            loss = loss + self.settings.start_side_weight * along ** 2 / residual.shape[1]
        return loss

    def start_directions(self, active: torch.Tensor) -> torch.Tensor | None:
        return self.toward_start[active] if self.toward_start is not None else None

    def loss(self, images, originals, reference, reference_class, active):
        """Per-sample loss (N,) of the images being optimized; `active` indexes them in the batch."""
        settings = self.settings
        with _autocast(images, settings.autocast_dtype):
            outputs = self.target(images).float()
            decrypted = self.key(images).float()
        loss = self.target_loss(outputs, reference, reference_class, self.start_directions(active))
        key_error = ((decrypted - originals) ** 2).flatten(1).mean(dim=1)
        if settings.key_ssim_weight:
            key_error = key_error + settings.key_ssim_weight * (1 - ssim(decrypted.clamp(0, 1), originals))
        loss = loss + settings.key_weight * key_error
        if self.leak is not None:
            loss = loss + settings.leak_weight * self.leak.penalty(images, active)
        if settings.smoothness == "variance":
            loss = loss + settings.variance_weight * variance_consistency(images, settings.block_size)
        else:
            loss = loss - settings.variance_weight * ((images - originals) ** 2).flatten(1).sum(dim=1)
        return loss

    @torch.no_grad()
    def measure(self, encrypted8, originals, reference, reference_class, toward_start=None) -> Measured:
        """The figures of 8-bit ciphertexts.

        Always in full precision, also when the optimization runs under autocast: every stop
        decision is taken on the figures a user will see.
        """
        outputs = self.target(encrypted8).float()
        decrypted8 = quantize(self.key(encrypted8).float())
        distance = feature_distance(outputs, reference)
        cosine = cosine_similarity(outputs, reference)
        same_class = outputs.argmax(dim=1) == reference_class if reference_class is not None else None
        start_side = ((outputs - reference) * toward_start).sum(dim=1) if toward_start is not None else None
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


def _repair_feature_match(objective: _Objective, encrypted8, originals, reference, reference_class, steps: int,
                          toward_start=None, pinned: torch.Tensor | None = None):
    """Nudge 8-bit images by ±1/255 along the target loss's gradient until the feature bar is met."""
    for _ in range(steps):
        measured = objective.measure(encrypted8, originals, reference, reference_class)
        broken = ~objective.feature_ok(measured)
        if not bool(broken.any()):
            break
        images = encrypted8.clone().requires_grad_(True)
        with _autocast(images, objective.settings.autocast_dtype):
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

    objective = _Objective(originals, target, key, settings, loss_kind)
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

    for iteration in range(1, settings.iterations + 1):
        current = images[active].requires_grad_(True)
        loss = objective.loss(current, originals[active], reference[active],
                              reference_class[active] if reference_class is not None else None, active)
        (gradient,) = torch.autograd.grad(loss.sum(), current)
        loss = loss.detach()
        if pinned is not None:
            # Pixels that never move must not weigh in the step's scale below.
            gradient = gradient.masked_fill(pinned, 0)

        # Per-sample normalization by mean |gradient| makes the step size independent of the
        # loss's scale; a zero gradient (a saturated image) must not divide by zero.
        scale = gradient.abs().flatten(1).mean(dim=1).clamp_min(1e-12)
        velocity[active] = settings.momentum * velocity[active] + gradient / scale[:, None, None, None]
        stepped = (current.detach() - decay.step[active, None, None, None] * velocity[active]).clamp(0, 1)
        if start_colour is not None:
            # Back to the start's mean colour (a shift the clamp cuts short is finished next step).
            stepped = (stepped - stepped.mean(dim=(2, 3), keepdim=True) + start_colour[active]).clamp(0, 1)
        if pinned is not None:
            stepped = torch.where(pinned, current.detach(), stepped)  # the nonce stays as stamped
        images[active] = stepped
        decay.update(active, loss)

        last = iteration == settings.iterations
        if settings.stop is not None and (iteration % settings.check_every == 0 or last):
            candidate = quantize(images[active])
            measured = objective.measure(candidate, originals[active], reference[active],
                                         reference_class[active] if reference_class is not None else None,
                                         objective.start_directions(active))
            finished = objective.meets(measured)
            ssim_decrypted = measured.ssim_decrypted
            short_of_key = objective.only_short_of_key(measured)
            improved = short_of_key & (ssim_decrypted > best_ssim_decrypted[active])
            best[active[improved]] = candidate[improved]
            best_ssim_decrypted[active[improved]] = ssim_decrypted[improved]
            if bool(finished.any()):
                done = active[finished]
                results[done] = candidate[finished]
                iterations_used[done.cpu()] = iteration
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

    measured = objective.measure(results, originals, reference, reference_class, objective.toward_start)
    met = objective.meets(measured).cpu().tolist()
    metrics = [ImageMetrics(**row, iterations=int(iterations_used[index]), met_targets=bool(met[index]))
               for index, row in enumerate(measured.rows())]
    return EncryptionResult(encrypted=results.detach(), metrics=metrics)


def prepare_models(target: nn.Module, key: nn.Module, device: str | torch.device, compile_models: bool = False):
    """NHWC weights everywhere; on CUDA also cuDNN autotuning and, on request, torch.compile.

    Returns (target, key); the modules are converted in place, and compiled wrappers are new objects.
    """
    target = target.to(memory_format=torch.channels_last)
    key = key.to(memory_format=torch.channels_last)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        if compile_models:
            target = torch.compile(target)
            if isinstance(getattr(key, "scramble", None), nn.Module) and isinstance(getattr(key, "generator", None), nn.Module):
                # Only G: a per-image scramble looks its plans up in Python, once per batch.
                key.generator = torch.compile(key.generator)
            else:
                key = torch.compile(key)
    return target, key


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def autocast_dtype_for(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The forwards' dtype that `--precision` names: 'auto' is default_autocast_dtype(device), 'fp32' None."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision is one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return default_autocast_dtype(device)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def default_autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """bf16 where it pays (CUDA, and CPUs with bf16 instructions), else None (full precision)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if kind == "cpu" and cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX): without them oneDNN emulates bf16
    and autocast does not pay."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False


@torch.no_grad()
def decrypt_batch(encrypted: torch.Tensor, key: nn.Module) -> torch.Tensor:
    """Apply the key in eval mode and round to 8 bits: deterministic for a given key and input."""
    key.eval()
    return quantize(key(encrypted.float()))


def decrypt_grouped(pairs: Sequence[tuple[nn.Module, torch.Tensor]], device: str | torch.device) -> list[torch.Tensor]:
    """decrypt_batch on (key, ciphertext (3, H, W)) pairs of any keys and sizes: those of one key and
    one size go together; each result (on the CPU) stands in its pair's place."""
    groups: dict[tuple[int, tuple[int, ...]], list[int]] = {}
    for index, (key, image) in enumerate(pairs):
        groups.setdefault((id(key), tuple(image.shape)), []).append(index)
    results: list[torch.Tensor] = [torch.empty(0)] * len(pairs)
    for indices in groups.values():
        key = pairs[indices[0]][0]
        decrypted = decrypt_batch(torch.stack([pairs[index][1] for index in indices]).to(device), key).cpu()
        for index, image in zip(indices, decrypted):
            results[index] = image
    return results


@torch.no_grad()
def measure_images(
    originals: torch.Tensor, encrypted: torch.Tensor, target: nn.Module, key: nn.Module, loss_kind: LossKind
) -> list[dict]:
    """Metrics of given (e.g. read back from disk) ciphertexts against their originals."""
    target.eval()
    key.eval()
    objective = _Objective(originals.float(), target, key, AttackSettings(), loss_kind)
    return objective.measure(encrypted.float(), originals.float(), objective.reference,
                             objective.reference_class).rows()
