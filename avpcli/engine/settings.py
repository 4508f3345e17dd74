"""The attack's settings: what the engine optimizes and when an image is done, the recipes' bases, and
the one builder of settings (attack_settings) that the CLI, the reports, the demo and the benchmarks call.

Settings check themselves when they are made (a UsageError names what is wrong), so that settings
built directly are held to the same rules as those the builder makes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from avpcli.errors import UsageError

Smoothness = Literal["variance", "distance"]
Initialization = Literal["noise", "original", "preimage"]
# What the target's output is: an embedding (face recognizers) or class logits (classifiers).
LossKind = Literal["embedding", "classifier"]
RECIPES: tuple[str, ...] = ("tuned", "research")


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

    def __post_init__(self) -> None:
        if self.max_lowpass_correlation is not None and not 0 <= self.max_lowpass_correlation <= 1:
            raise UsageError("the low-pass correlation bar must be between 0 and 1")
        if not self.max_feature_distance >= 0:
            raise UsageError("the feature distance bar must not be negative")

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
    distance_pull: embedding targets: 0 takes the mean square of f(x') − f(x) as the target's loss
        (the research code's); a value d > 0 makes it 2·d·‖f(x') − f(x)‖ / D instead (D the embedding's
        size), the distance itself scaled to pull as hard as the mean square does at distance d. The
        mean square's pull fades as f(x') nears f(x), so the key's and the leak's terms, which do not
        fade, slowed the last stretch to the feature bar.
    classifier_scale: the factor on the top-1 logit for classifier targets (research code: 0.001).
    smoothness: "variance" (L_v, paper Eq. 12–13) or "distance" (L_d = −||x − x'||², the ablation).
    block_size: the box size of L_v.
    initialization: "noise" (x'_0 = N(0, 1), clamped to [0, 1]), "original" (x'_0 = x) or "preimage"
        (x'_0 = key.preimage(x), an input the key maps close to x: S⁻¹(x) for a scrambling key; for
        a key without preimage, noise).
    stop: early-stopping criteria, or None to always run `iterations` steps.
    check_every: how often (in steps) the 8-bit image is checked against `stop`.
    early_checks: also check an image's 8-bit state after any step whose own forwards (in float, at no
        extra cost) already met the bars on the target and the key (engine.objective.StepLoss), so that
        an image stops within a step or two of meeting them instead of at the next multiple of check_every.
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
    distance_pull: float = 0.0
    classifier_scale: float = 0.001
    smoothness: Smoothness = "variance"
    block_size: int = 4
    initialization: Initialization = "noise"
    stop: StopCriteria | None = field(default_factory=StopCriteria)
    check_every: int = 25
    early_checks: bool = False
    repair_steps: int = 20
    autocast_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        if self.smoothness not in ("variance", "distance"):
            raise UsageError("the smoothness is 'variance' or 'distance'")
        if self.initialization not in ("noise", "original", "preimage"):
            raise UsageError("the start (init) is 'preimage', 'noise' or 'original'")
        if self.iterations < 1:
            raise UsageError("iterations must be at least 1")
        if self.check_every < 1 or self.block_size < 1:
            raise UsageError("check_every and block_size must be at least 1")
        if not self.distance_pull >= 0:
            raise UsageError("the distance pull must not be negative")


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
# Issue #26 (docs/BENCHMARKS.md, "One second per face"): early checks (an image stops within a step of
# meeting the bars, not at the next multiple of 10: mean steps 57 → 31 on 12 faces), and the step
# shrinks after 6 loss rises instead of 16 (31.1 → 29.6 and 36.5 → 34.3 mean steps with two keys).
FACE_SETTINGS = AttackSettings(initialization="preimage", momentum=0.9, key_weight=0.3, key_ssim_weight=0.2,
                               variance_weight=0.0, leak_weight=0.3, hold_colour=True, check_every=10,
                               early_checks=True, decay_patience=6, stop=StopCriteria(max_ssim_encrypted=0.02, min_ssim_decrypted=0.95))


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

    The start side slows the last stretch to the feature bar, where the mean square's pull fades while
    the key's and the leak's do not; so these settings also take the target's loss as the distance
    (distance_pull 0.8), with the key weight 0.6 for the balance: on dlib, median steps 33.5 → 26 and
    34.5 → 26.5 on two sets of 16 faces with two keys, none of them the benchmark's (issue #26). On
    MobileFaceNet, which stops near its original, the same took 53 → 92 median steps.
    """
    stop = settings.stop and replace(settings.stop, max_start_side=0.0)
    return replace(settings, start_side_weight=30.0, stop=stop, distance_pull=0.8, key_weight=0.6)


# Classifier targets: the research code's CIFAR-10 step schedule (step 0.02, ×0.80 after 8 rises;
# METHOD.md §1) with the face settings' start, momentum and leak term. The key weight is larger (10):
# the top-1 logit term is tiny (×0.001), and 32×32 images are at the edge of what the key can
# reproduce, so the key term binds. The bars: SSIM_e ≤ 0.10 and SSIM_d ≥ 0.96 per image, which
# gives a mean SSIM_d above 0.95 where some images cannot get past 0.89–0.95. No early checks: on 200
# CIFAR-10 images they saved 6 of 425 mean steps and, stopping each image at its first state with
# SSIM_d ≥ 0.96 rather than at the next multiple of 10, took the mean SSIM_d from 0.9504 to 0.9497.
CLASSIFIER_SETTINGS = AttackSettings(
    initialization="preimage", momentum=0.9, key_weight=10.0, key_ssim_weight=1.0, variance_weight=0.0,
    leak_weight=0.3, hold_colour=True, step_size=0.02, step_decay=0.80, decay_patience=8, check_every=10,
    stop=StopCriteria(max_ssim_encrypted=0.10, min_ssim_decrypted=0.96),
)


def attack_settings(loss: LossKind, recipe: str = "tuned", *, early_stop: bool = True,
                    max_lowpass_correlation: float | None = None, max_feature_distance: float | None = None,
                    stop_past_original: bool = False, **overrides: Any) -> AttackSettings:
    """The attack settings for a kind of target: the recipe's base with overrides.

    loss: the target's ("embedding" or "classifier"). recipe: "tuned" (FACE_SETTINGS for embedding
    targets) or "research" (the AVIH code's settings, AttackSettings()); classifiers always take
    CLASSIFIER_SETTINGS. early_stop=False runs every iteration; max_lowpass_correlation adds that
    bar to the stop, max_feature_distance replaces its feature bar (embedding targets).
    stop_past_original (the target's TargetSpec.stop_past_original): the tuned recipe's embedding
    settings get the start-side term and bar (stopping_past_the_original).
    Overrides name AttackSettings fields; a None value keeps the base's.
    """
    if recipe not in RECIPES:
        raise UsageError(f"the recipe is 'tuned' or 'research', not {recipe!r}")
    if loss == "classifier":
        base = CLASSIFIER_SETTINGS
    elif recipe == "tuned":
        base = stopping_past_the_original(FACE_SETTINGS) if stop_past_original else FACE_SETTINGS
    else:
        base = AttackSettings()
    chosen = {name: value for name, value in overrides.items() if value is not None}
    unknown = set(chosen) - {field.name for field in dataclasses.fields(AttackSettings)}
    if unknown:
        raise UsageError(f"unknown attack setting(s): {', '.join(sorted(unknown))}")
    bars = {name: value for name, value in (("max_lowpass_correlation", max_lowpass_correlation),
                                            ("max_feature_distance", max_feature_distance)) if value is not None}
    if max_feature_distance is not None and not max_feature_distance > 0:
        raise UsageError("the feature distance bar must be above 0")  # 0 would never stop: a user's slip
    if not early_stop:
        chosen["stop"] = None
    elif bars:
        chosen["stop"] = dataclasses.replace(chosen.get("stop", base.stop) or StopCriteria(), **bars)
    return dataclasses.replace(base, **chosen)


def meets_bars(metrics: dict[str, Any], settings: AttackSettings) -> bool:
    """Whether measured figures meet every bar of the settings' stop criteria (the defaults' without one)."""
    stop = settings.stop or StopCriteria()
    return bool(stop.accepts(metrics["feature_distance"], metrics["ssim_encrypted"], metrics["ssim_decrypted"],
                             metrics.get("same_class"), metrics.get("lowpass_correlation")))
