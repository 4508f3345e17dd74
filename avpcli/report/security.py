"""Security analyses: decryption with keys of other seeds (Fig. 5), the paired-data attack (Fig. 6) and
a method-aware attacker who recovers the key's scramble from (ciphertext, original) pairs."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from avpcli import evaluate
from avpcli.engine import decrypt_batch, quantize
from avpcli.metrics import lowpass_correlation, ssim
from avpcli.report.pairs import PairedImages
from avpcli.report.render import Report, markdown_table, number, percent, sheet_picture


def cross_key_report(pairs: PairedImages, key: nn.Module, other_keys: dict[str, nn.Module],
                     sheet_rows: int = 6) -> Report:
    """Fig. 5: SSIM(G'(x'), x) for keys of other seeds (should be low) beside the right key's (high)."""
    results = {"right key": evaluate.decryption_ssim(pairs.encrypted, pairs.originals, key)}
    for name, other in other_keys.items():
        results[name] = evaluate.decryption_ssim(pairs.encrypted, pairs.originals, other)
    summaries = {name: evaluate.summarize(values) for name, values in results.items()}
    markdown = (f"# Decryption with keys of other seeds ({len(pairs.names)} ciphertexts)\n\n"
                + markdown_table(["key", "SSIM_d mean", "min", "max"],
                                 [[name, s["mean"], s["min"], s["max"]] for name, s in summaries.items()]))
    shown = min(sheet_rows, len(pairs.names))
    keys = [key, *other_keys.values()]
    sheet = sheet_picture([[pairs.originals[i], pairs.encrypted[i]]
                           + [decrypt_batch(pairs.encrypted[i:i + 1], k)[0].cpu() for k in keys] for i in range(shown)])
    markdown += "\nContact sheet: original | encrypted | right key | " + " | ".join(other_keys) + ".\n"
    return Report("cross-key", {"ssim_decrypted": results, "summary": summaries, "names": pairs.names}, markdown,
                  {"contact-sheet": sheet})


def attack_report(training: PairedImages, held_out: PairedImages, other_key_pairs: PairedImages, key: nn.Module,
                  steps: int = 200, seed: int = 0, progress=None) -> Report:
    """Fig. 6: an attacker trained on key-A pairs, applied to held-out key-A and to key-B ciphertexts."""
    attacker = evaluate.train_attacker(training.encrypted, training.originals, key, steps=steps, seed=seed,
                                       progress=progress)
    same = evaluate.decryption_ssim(held_out.encrypted, held_out.originals, attacker)
    other = evaluate.decryption_ssim(other_key_pairs.encrypted, other_key_pairs.originals, attacker)
    on_training = evaluate.decryption_ssim(training.encrypted, training.originals, attacker)
    # What an attacker scores without looking at the ciphertext: the mean of its training originals
    # (an average face) against each held-out original. Above this, the ciphertext told it something.
    average = training.originals.float().mean(dim=0, keepdim=True)

    def against_average(originals: torch.Tensor) -> list[float]:
        return ssim(average.expand_as(originals), originals.float()).tolist()

    guess, guess_other = against_average(held_out.originals), against_average(other_key_pairs.originals)
    summaries = {"training pairs (key A)": evaluate.summarize(on_training),
                 "held-out (key A)": evaluate.summarize(same),
                 "other key (key B)": evaluate.summarize(other),
                 "no ciphertext: the training originals' mean vs the held-out originals": evaluate.summarize(guess),
                 "no ciphertext: the same mean vs key B's originals": evaluate.summarize(guess_other)}
    markdown = (f"# Paired-data attack: a generator trained on {len(training.names)} key-A pairs, {steps} steps\n\n"
                + markdown_table(["ciphertexts", "images", "SSIM(attacker(x'), x) mean", "min", "max"],
                                 [[name, s["count"], s["mean"], s["min"], s["max"]] for name, s in summaries.items()])
                + "\nThe last rows are the control: what a guess that ignores the ciphertext scores. An attacker "
                "learns something from ciphertexts only where it beats them.\n")
    shown = min(4, len(held_out.names), len(other_key_pairs.names))
    rows = []
    for i in range(shown):
        rows.append([held_out.originals[i], held_out.encrypted[i], decrypt_batch(held_out.encrypted[i:i + 1], attacker)[0].cpu(),
                     other_key_pairs.originals[i], other_key_pairs.encrypted[i],
                     decrypt_batch(other_key_pairs.encrypted[i:i + 1], attacker)[0].cpu()])
    pictures = {"contact-sheet": sheet_picture(rows)} if rows else {}
    markdown += ("\nContact sheet: key-A original | ciphertext | attacker's output, then the same for key B.\n"
                 if rows else "")
    data = {"steps": steps, "training_pairs": len(training.names), "summary": summaries,
            "held_out": dict(zip(held_out.names, same)), "other_key": dict(zip(other_key_pairs.names, other)),
            "mean_original_guess": {"held_out": dict(zip(held_out.names, guess)),
                                    "other_key": dict(zip(other_key_pairs.names, guess_other))}}
    return Report("attack", data, markdown, pictures)


def key_recovery_report(training: PairedImages, held_out: PairedImages, key: nn.Module, pair_counts: Sequence[int],
                        rules: Sequence[str] = evaluate.RECOVERY_RULES, sheet_rows: int = 4) -> Report:
    """The curve pairs → share of the scramble recovered → SSIM of the attacker's held-out reconstructions."""
    curve = evaluate.key_recovery_curve(training.encrypted, training.originals, held_out.encrypted,
                                        held_out.originals, key, pair_counts, rules)
    height, width = training.encrypted.shape[-2:]
    per_image = bool(getattr(getattr(key, "scramble", None), "per_image", False))
    baseline = evaluate.summarize(evaluate.decryption_ssim(held_out.encrypted, held_out.originals, nn.Identity()))
    right_key = evaluate.summarize(evaluate.decryption_ssim(held_out.encrypted, held_out.originals, key))
    rows = [[result.pairs, result.rule, percent(result.recovered) + " %", percent(result.source) + " %",
             result.ssim_unscrambled, result.lowpass_unscrambled, result.ssim_decrypted] for result in curve]
    truth = evaluate.key_plan(key, height, width, held_out.encrypted)
    perfect = quantize(truth.apply(held_out.encrypted.float()))
    perfect_ssim = float(ssim(perfect, held_out.originals.float()).mean())
    perfect_lowpass = float(lowpass_correlation(perfect, held_out.originals.float()).abs().mean())
    # What knowing faces alone gives: the attacker's training originals averaged, as a guess for every one.
    mean_face = training.originals[:max(pair_counts)].float().mean(dim=0, keepdim=True).expand_as(held_out.originals)
    mean_ssim = float(ssim(quantize(mean_face), held_out.originals.float()).mean())
    mean_lowpass = float(lowpass_correlation(mean_face, held_out.originals.float()).abs().mean())
    markdown = (f"# Key recovery from (ciphertext, original) pairs ({height}×{width}, "
                f"{len(held_out.names)} held-out ciphertexts)\n\n"
                "An attacker who knows avp's method and holds N pairs of one key guesses the key's scramble S: "
                "for every original value, the ciphertext value that matches it best over the N pairs "
                "(rule 'correlation': largest |Pearson r|, from 3 pairs on; 'distance': nearest in value, or in "
                "1 − value). Recovered: the share of the 3·H·W values whose source position and inversion are "
                f"both right (a guess: 1 in {6 * height * width:,}). The attacker then applies the guessed S to "
                "ciphertexts it has not seen.\n\n"
                + ("**This key scrambles every image with its own plan** (a nonce in the ciphertext picks it, "
                   "docs/KEY.md): 'recovered' is the agreement with each held-out ciphertext's own plan, which "
                   "no pair of another image shows.\n\n" if per_image else "")
                + markdown_table(["pairs N", "rule", "recovered", "source right", "SSIM(guessed S(x′), x)",
                                  "low-pass abs. r", "SSIM(G(guessed S(x′)), x), attacker holding G too"], rows)
                + f"\nFor scale, on the same held-out ciphertexts: no attack, SSIM(x′, x) {number(baseline['mean'])}; "
                f"a perfect guess (the key's own S), SSIM(S(x′), x) {number(perfect_ssim)} with low-pass abs. r "
                f"{number(perfect_lowpass)} (S(x′) is the original under the noise that G removes); the mean of the "
                f"attacker's {max(pair_counts)} training originals as the guess for every face (what knowing that "
                f"they are aligned faces gives), SSIM {number(mean_ssim)} with low-pass abs. r {number(mean_lowpass)}; "
                f"the key itself, SSIM {number(right_key['mean'])}.\n")
    best = {count: max((result for result in curve if result.pairs == count), key=lambda result: result.recovered)
            for count in pair_counts}
    shown = min(sheet_rows, len(held_out.names))
    columns = [held_out.originals[:shown], held_out.encrypted[:shown]]
    columns += [quantize(result.plan.apply(held_out.encrypted[:shown].float())) for result in best.values()]
    columns += [perfect[:shown], decrypt_batch(held_out.encrypted[:shown], key).cpu()]
    sheet = sheet_picture([[column[i] for column in columns] for i in range(shown)])
    markdown += ("\nContact sheet: original | ciphertext | the attacker's S(x′) with "
                 + ", ".join(f"{count} pair{'s' if count > 1 else ''} ({result.rule})" for count, result in best.items())
                 + " | S(x′) with the key's own S | decrypted with the key.\n")
    data = {"size": [height, width], "training_pairs": len(training.names), "held_out": held_out.names,
            "scramble_per_image": per_image,
            "curve": [result.to_dict() for result in curve],
            "reference": {"ssim_encrypted": baseline, "ssim_right_key": right_key, "ssim_perfect_guess": perfect_ssim,
                          "lowpass_perfect_guess": perfect_lowpass, "ssim_mean_face": mean_ssim,
                          "lowpass_mean_face": mean_lowpass}}
    return Report("key-recovery", data, markdown, {"contact-sheet": sheet})
