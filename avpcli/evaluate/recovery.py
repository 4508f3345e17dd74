"""Key recovery: an attacker who knows avp's method and holds (ciphertext, original) pairs of one key guesses S."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence

import torch
from torch import nn

from avpcli.engine import decrypt_batch, quantize
from avpcli.metrics import lowpass_correlation, ssim
from avpcli.scramble import ScramblePlan


RecoveryRule = Literal["correlation", "distance"]
RECOVERY_RULES: tuple[RecoveryRule, ...] = ("correlation", "distance")


def recover_scramble(encrypted: torch.Tensor, originals: torch.Tensor, rule: RecoveryRule = "correlation",
                     block_rows: int = 512) -> ScramblePlan:
    """Guess the key's scramble S from N pairs, by S(x′) ≈ x (what G is trained to undo is small).

    For every value i of the original (flattened (C, H, W)), the ciphertext value j whose N values
    match x_i best across the pairs becomes source[i], inverted when the match is v ↦ 1 − v:
      "correlation": largest |Pearson r| over the pairs, inverted where r < 0; needs N ≥ 3 (with one
          pair no value varies, with two every pair of values correlates ±1);
      "distance": smallest squared distance of x_i to x′_j or to 1 − x′_j (uses that S keeps values,
          not only their order; works from one pair).
    Ties go to the lowest j, and to "not inverted". The (3HW × 3HW) scores are taken `block_rows`
    rows at a time into one reused buffer, so memory stays at block_rows × 3HW numbers.
    """
    if encrypted.shape != originals.shape or encrypted.ndim != 4 or encrypted.shape[0] == 0:
        raise ValueError("key recovery needs (N, C, H, W) ciphertexts and originals of one shape, N ≥ 1")
    if rule not in RECOVERY_RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of: {', '.join(RECOVERY_RULES)}")
    if rule == "correlation" and encrypted.shape[0] < 3:
        raise ValueError("the correlation rule needs at least 3 pairs")
    plain = originals.flatten(1).double()  # (N, V): what S(x′) must give
    cipher = encrypted.flatten(1).double()
    values = plain.shape[1]
    if rule == "correlation":
        def standardized(table: torch.Tensor) -> torch.Tensor:
            centred = table - table.mean(dim=0, keepdim=True)
            spread = centred.norm(dim=0, keepdim=True)
            # A value that does not vary over the pairs correlates with nothing (r = 0).
            return torch.where(spread > 1e-9, centred / spread.clamp_min(1e-12), torch.zeros_like(centred)).float()

        plain, cipher = standardized(plain), standardized(cipher)
    else:
        plain, cipher = plain.float(), cipher.float()
        kept_norm = cipher.pow(2).sum(dim=0)  # ||x′_j||²
        inverted_norm = (1 - cipher).pow(2).sum(dim=0)  # ||1 − x′_j||²
        plain_sum = plain.sum(dim=0)
    source = torch.empty(values, dtype=torch.long)
    inverted = torch.empty(values, dtype=torch.bool)
    buffer = torch.empty(min(block_rows, values), values)
    for start in range(0, values, block_rows):
        rows = slice(start, min(start + block_rows, values))
        scores = buffer[:rows.stop - start]
        if rule == "correlation":
            torch.mm(plain[:, rows].T, cipher, out=scores)  # r of every (i, j)
            high, high_index = scores.max(dim=1)
            low, low_index = scores.min(dim=1)
            flip = -low > high
            source[rows] = torch.where(flip, low_index, high_index)
        else:
            # ||x_i − x′_j||² and ||x_i − (1 − x′_j)||², less ||x_i||², which every j shares.
            torch.addmm(kept_norm, plain[:, rows].T, cipher, alpha=-2, out=scores)
            kept, kept_index = scores.min(dim=1)
            torch.addmm(inverted_norm, plain[:, rows].T, cipher, alpha=2, out=scores)
            flipped, flipped_index = scores.min(dim=1)
            flip = flipped - 2 * plain_sum[rows] < kept
            source[rows] = torch.where(flip, flipped_index, kept_index)
        inverted[rows] = flip
    return ScramblePlan(source, inverted.float())


def key_plan(key: nn.Module, height: int, width: int, images: torch.Tensor | None = None) -> ScramblePlan:
    """The key's true scramble for H×W images (on the CPU); the identity for a key without one.

    A per-image scramble has a plan per ciphertext: `images` (N, 3, H, W) are then required, and the
    plan is (N, 3·H·W), one row each.
    """
    scramble = getattr(key, "scramble", None)
    if scramble is None:
        values = 3 * height * width
        return ScramblePlan(torch.arange(values), torch.zeros(values))
    if getattr(scramble, "per_image", False):
        if images is None:
            raise ValueError("a per-image scramble's plans are those of the ciphertexts: pass them")
        return scramble.plans_of(images.cpu())
    return scramble.plan(height, width, torch.device("cpu"))


def plan_agreement(guess: ScramblePlan, truth: ScramblePlan) -> dict[str, float]:
    """Share of values whose source is right, and whose source and inversion are both right ("recovered");
    against per-image plans (N, 3·H·W), over all their values."""
    right_source = guess.source.cpu() == truth.source.cpu()
    right_sign = guess.inverted.cpu() == truth.inverted.cpu()
    return {"source": float(right_source.float().mean()), "recovered": float((right_source & right_sign).float().mean())}


@dataclass
class RecoveryResult:
    """One point of the key-recovery curve (key_recovery_curve)."""

    pairs: int
    rule: str
    source: float
    recovered: float
    ssim_unscrambled: float
    lowpass_unscrambled: float
    ssim_decrypted: float
    plan: ScramblePlan = field(repr=False)

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in ("pairs", "rule", "source", "recovered", "ssim_unscrambled",
                                                       "lowpass_unscrambled", "ssim_decrypted")}


@torch.no_grad()
def key_recovery_curve(training_encrypted: torch.Tensor, training_originals: torch.Tensor,
                       held_out_encrypted: torch.Tensor, held_out_originals: torch.Tensor, key: nn.Module,
                       pair_counts: Sequence[int], rules: Sequence[RecoveryRule] = RECOVERY_RULES,
                       block_rows: int = 512) -> list[RecoveryResult]:
    """For each pair count N and rule: recover S from the first N training pairs, then measure it
    (the correlation rule only from 3 pairs on).

    Each result: the "source" and "recovered" fractions (plan_agreement against the key's own plan),
    and on the held-out pairs, against the originals: the mean SSIM and mean |low-pass r| of the
    attacker's S(x′) (8-bit, as an image: even the key's own S leaves the noise that G removes, so
    SSIM stays low where a blur shows the face), and the mean SSIM of G(S(x′)) (for an attacker who
    also has G, the key's generator).
    """
    if not pair_counts or min(pair_counts) < 1 or max(pair_counts) > training_encrypted.shape[0]:
        raise ValueError(f"pair counts must be between 1 and the {training_encrypted.shape[0]} training pairs")
    if held_out_encrypted.shape[0] == 0:
        raise ValueError("key recovery needs at least one held-out pair")
    truth = key_plan(key, *training_encrypted.shape[-2:], images=held_out_encrypted)
    generator = getattr(key, "generator", key)
    results = []
    for count in pair_counts:
        for rule in rules:
            if rule == "correlation" and count < 3:
                continue  # meaningless (recover_scramble)
            guess = recover_scramble(training_encrypted[:count], training_originals[:count], rule, block_rows)
            unscrambled = quantize(guess.to(held_out_encrypted.device).apply(held_out_encrypted.float()))
            results.append(RecoveryResult(
                count, rule, **plan_agreement(guess, truth),
                ssim_unscrambled=float(ssim(unscrambled, held_out_originals.float()).mean()),
                lowpass_unscrambled=float(lowpass_correlation(unscrambled, held_out_originals.float()).abs().mean()),
                ssim_decrypted=float(ssim(decrypt_batch(unscrambled, generator), held_out_originals.float()).mean()),
                plan=guess))
    return results
