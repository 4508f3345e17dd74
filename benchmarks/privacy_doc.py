"""Regenerate docs/PRIVACY.md: every figure measured in one run, the hand-written part kept.

Runs, as functions, benchmarks/encrypt_faces.py (avp's defaults on --faces LFW faces after the first
--skip: leak correlations, colour, keys of other seeds, the contact sheet), benchmarks/privacy.py
(for each of --targets: the filter suite, MTCNN, the observer, the controls, key recovery; its own
reports go to privacy/ beside the doc) and benchmarks/mtcnn_hits.py (where MTCNN's hits on the
filtered ciphertexts lie, on privacy.py's ciphertexts); reads the paired-data attacker from
benchmarks/results.py's reports under --results-work (results.py is not run here: it takes an hour).

The doc's part above the marker HAND_WRITTEN is written from the measured numbers, prose included;
what stands below the marker is kept as it is. Ciphertexts of privacy.py live under --work and a
rerun reuses them (after an engine change, give a fresh --work); encrypt_faces.py encrypts its faces
again on every run, since its timings are part of what it reports.

Run: python -m benchmarks.privacy_doc --key KEY --other-key KEY2 [--faces 50] [--skip 20]
     [--targets dlib,mobilefacenet] [--work DIR] [--results-work DIR] [--doc docs/PRIVACY.md]
     [--threads 2] [--gallery-size N] [--iterations N] [--device cpu]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from avpcli.evaluate import AT_FACE_IOU
from avpcli.report import identity_of, markdown_table, percent
from benchmarks import encrypt_faces, privacy
from benchmarks.common import REPO, add_settings_options, data_folder, log, write_generated_doc
from benchmarks.mtcnn_hits import SETS, FilterHits, mtcnn_hits

HAND_WRITTEN = "<!-- hand-written below: kept by benchmarks/privacy_doc.py -->"
SHEET_ROWS = 8  # faces on the defaults' contact sheet

# Issue #13's bars on what a filter shows (luma, ciphertext vs original): the mean over the faces.
LEAK_BARS = {"low-pass": 0.08, "band-pass": 0.02, "edge": 0.03, "colour": 0.3}
# Issue #14's bars: the observer's top-10 rate at most this many times chance; MTCNN finds no face under
# any filter; a network trained on pairs reconstructs held-out ciphertexts of its key, and another key's, to
# at most these SSIMs.
OBSERVER_BAR_TIMES_CHANCE = 2
ATTACK_HELD_OUT_BAR, ATTACK_OTHER_KEY_BAR = 0.5, 0.2
# History, not remeasured: the leaks of avp's defaults of 2026-11-28 with the plain key (docs/BENCHMARKS.md).
PLAIN_KEY_LEAKS = {"low-pass": "0.19 (max 0.42)", "band-pass": "0.14 (on 10 other faces, issue #13)",
                   "edge": "0.15 (idem)", "colour": "0.94 (idem)"}
# The names of attack_report's rows (avpcli/report.py).
ATTACK_ROWS = {"training": "training pairs (key A)", "held_out": "held-out (key A)", "other_key": "other key (key B)",
               "held_out_control": "no ciphertext: the training originals' mean vs the held-out originals",
               "other_key_control": "no ciphertext: the same mean vs key B's originals"}

INTRODUCTION = """\
avp's promise is that people cannot see what an encrypted image shows. The paper (and avp's issue
bars) measure that with SSIM_e = SSIM(x', x). **SSIM_e is not a privacy measure**: it compares local
structure at full resolution, which strong noise drives to zero, while a copy of the face at a
twentieth of its contrast can survive underneath. With the paper's plain key, the simplest attack
there is — blur the ciphertext and stretch its contrast — showed every face (section "Before the
scramble"). This page measures what a person with an image editor, a second face recognizer and an
attacker with (ciphertext, original) pairs can get out of avp's ciphertexts now, with the secret
scramble in the key (docs/KEY.md).

Everything above the hand-written part is written by `benchmarks/privacy_doc.py` from the numbers it
measures; each section names the script and options that measured it."""

MEASURES = """\
## The measures (`avpcli/metrics.py`, reported by `avp evaluate privacy`)

On luma (BT.601) of the ciphertext x′ and its original x, as Pearson's r per image:
- **low-pass** |r|: Gaussian blur σ 3 px (on a 150×150 chip) — the coarse layout a blur shows;
- **band-pass** |r|: difference of Gaussians σ 1 − σ 4 — the scale of eyes, mouth and glasses;
- **edge** r: Sobel magnitude of a σ 2 blur — the outlines;
- **colour-mean** r, across a set: per-image mean R, G, B of the ciphertexts against the originals'
  (skin tone, background colour).

0 means that view of x′ shows nothing of x; ±1 means it shows x (a negative shows it as well).
`avpcli.evaluate.blur_reveal` draws the blur with its 1st–99th percentiles stretched to black and
white: the third column of the contact sheets below, of `avp evaluate quality` and of `avp demo`.
Every manifest entry records the low-pass r (`lowpass_correlation`).
"""


# ------------------------------------------------------------------------------------------------
# Formatting


def percent_number(fraction: float) -> str:
    """A rate in percent as '0.8' or '96' (one decimal, dropped when it is 0)."""
    return percent(fraction).removesuffix(".0")


def percent_text(fraction: float) -> str:
    return percent_number(fraction) + " %"


def share(count: int, total: int) -> str:
    """'0 %' or '2 % (1 of 50)': a rate with the count behind it where there is one."""
    return percent_text(count / total) + (f" ({count} of {total})" if count else "")


def met(flag: bool) -> str:
    return f"**{encrypt_faces.verdict(flag)}**"


def binomial_tail(trials: int, probability: float, at_least: int) -> float:
    """P(X ≥ at_least) for X ~ Binomial(trials, probability), summed exactly."""
    if at_least <= 0:
        return 1.0
    below = sum(math.comb(trials, count) * probability ** count * (1 - probability) ** (trials - count)
                for count in range(min(at_least, trials + 1)))
    return max(0.0, 1.0 - below)


def wilson_interval(count: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a rate count/total (95 % for z 1.96)."""
    rate = count / total
    centre = (rate + z * z / (2 * total)) / (1 + z * z / total)
    half = z / (1 + z * z / total) * math.sqrt(rate * (1 - rate) / total + z * z / (4 * total * total))
    return max(0.0, centre - half), min(1.0, centre + half)


def value_range(values: Sequence[float], form: Callable[[float], str] = "{:.0f}".format) -> str:
    """'477–657', or one value where all are equal."""
    low, high = form(min(values)), form(max(values))
    return low if low == high else f"{low}–{high}"


def command_line(module: str, argv: Sequence[str]) -> str:
    """How the doc shows a run: `python -m benchmarks.<module>` and its arguments."""
    return f"python -m benchmarks.{module} " + shlex.join(argv)


def shown_path(path: Path) -> str:
    """A path as the doc names it: relative to the repository where it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


# ------------------------------------------------------------------------------------------------
# The doc's sections, each from what one script measured


def defaults_section(run: encrypt_faces.FacesRun, command: str, sheet: str) -> str:
    """avp's defaults on LFW faces (encrypt_faces.py): bars, leaks against issue #13, the contact sheet."""
    count = len(run.rows)
    leaks = {**run.leaks, "colour": (run.colour, None)}
    labels = {"low-pass": "low-pass \\|r\\| mean", "band-pass": "band-pass \\|r\\| mean", "edge": "edge r mean",
              "colour": "colour-mean r across images (per channel, averaged)"}
    rows = []
    for name, label in labels.items():
        mean, worst = leaks[name]
        if mean is None:  # one face has no colour correlation across faces
            continue
        form = "{:+.3f}" if name in ("edge", "colour") else "{:.3f}"
        measured = form.format(mean) + (f" (max {form.format(worst)})" if worst is not None else "")
        rows.append([label, f"≤ {LEAK_BARS[name]}", measured, encrypt_faces.verdict(abs(mean) <= LEAK_BARS[name]),
                     PLAIN_KEY_LEAKS[name]])
    missed = [row for row in run.rows if not run.bars.accepts(row["feature_distance"], row["ssim_encrypted"],
                                                              row["ssim_decrypted"])]
    text = (f"## avp's defaults: {count} faces, dlib target (issue #13)\n\n"
            f"`{command}` on LFW faces {run.first_identity}–{run.first_identity + count - 1} of lfw.csv's `multi` "
            "identities:\n\n```\n" + "\n".join(run.summary) + "\n```\n\n"
            + markdown_table(["leak (luma, ciphertext vs original)", "bar (issue #13)", f"measured, {count} faces",
                              "verdict", "the plain key's defaults of 2026-11-28 (20 faces)"], rows)
            + f"\n![avp's defaults with a scrambling key]({sheet})\n\n"
            f"(Original | ciphertext | ciphertext blurred σ 3 and contrast-stretched | decrypted; the first "
            f"{min(SHEET_ROWS, count)} of the {count} faces.)\n")
    if missed:
        bars = run.bars
        text += f"\n{len(missed)} of the {count} faces did not meet every bar:\n"
        for row in missed:
            text += (f"- {row['file']}: distance {row['feature_distance']:.4f} (bar ≤ {bars.max_feature_distance}), "
                     f"SSIM_e {row['ssim_encrypted']:.4f} (≤ {bars.max_ssim_encrypted}), SSIM_d "
                     f"{row['ssim_decrypted']:.4f} (≥ {bars.min_ssim_decrypted}), {row['iterations']} iterations\n")
    return text


@dataclass
class TargetRun:
    """One target's privacy.py run, the command that makes it, and MTCNN's hits on its ciphertexts."""

    target: str
    command: str
    run: privacy.PrivacyRun
    hits: list[FilterHits]


# The image sets of `avp evaluate privacy`'s filter table: ciphertexts, their originals, the noise control.
SIDES = ("encrypted", "original", "noise")


def filter_table(data: dict[str, Any]) -> str:
    """The filter suite: MTCNN and the observer's top-10 on ciphertexts, originals and the noise control."""
    images = data["images"]
    rows = []
    for name, row in data["filters"].items():
        rows.append([f"{name}: {row['description']}"]
                    + [share(round(row[f"detection_{side}"] * images), images) for side in SIDES]
                    + [share(round(row[f"observer_{side}"]["top10"] * row[f"observer_{side}"]["queries"]),
                             row[f"observer_{side}"]["queries"]) for side in SIDES]
                    + [f"{row['observer_encrypted']['median_rank']:.0f}"])
    chance = data["observer"]["chance"]
    rows.append(["chance (a guess)", "", "", "", *[percent_text(chance["top10"])] * 3, f"{chance['median_rank']:.0f}"])
    return markdown_table(["filter", "MTCNN finds a face: ciphertexts", "originals", "noise",
                           "observer top-10: ciphertexts", "originals", "noise", "median rank: ciphertexts"], rows)


def observer_findings(data: dict[str, Any]) -> str:
    """The observer against issue #14's bar, and beside the originals and the noise control."""
    filters, observer = data["filters"], data["observer"]
    limit = OBSERVER_BAR_TIMES_CHANCE * observer["chance"]["top10"]
    over = [f"{name} ({percent_text(row['observer_encrypted']['top10'])})" for name, row in filters.items()
            if row["observer_encrypted"]["top10"] > limit]
    queries = filters["none"]["observer_encrypted"]["queries"]
    # The fewest images in the top 10 that break the bar, and how often a guess alone gets there.
    over_at = math.floor(limit * queries + 1e-9) + 1
    by_luck = binomial_tail(queries, observer["chance"]["top10"], over_at)

    def top10(side: str) -> str:
        return value_range([row[f"observer_{side}"]["top10"] for row in filters.values()], percent_number) + " %"

    def median_ranks(side: str) -> list[float]:
        return [row[f"observer_{side}"]["median_rank"] for row in filters.values()]

    return (f"- Observer {observer['name']}: top-10 on the ciphertexts {top10('encrypted')} across the "
            f"{len(filters)} filters, on the noise {top10('noise')}, on the originals {top10('original')}. "
            "Issue #14's bar, at most "
            f"{OBSERVER_BAR_TIMES_CHANCE}× chance ({percent_text(limit)}): {met(not over)}"
            + (f" (over it: {', '.join(over)})" if over else "")
            + (f"; at {queries} images one image ({percent_text(1 / queries)}) is already over it" if 1 / queries > limit
               else f"; at {queries} images, {over_at} in the top 10 are over it, which a guess reaches under a "
                    f"given filter with probability {by_luck:.1%}") + ". " + pooled_observer(filters, observer["chance"]["top10"], queries) + " Median ranks of the ciphertexts "
            f"{value_range(median_ranks('encrypted'))} of {observer['identities']:,} identities (the noise's: "
            f"{value_range(median_ranks('noise'))}; a guess's: {observer['chance']['median_rank']:.0f}).\n")


def pooled_observer(filters: dict[str, Any], chance: float, queries: int) -> str:
    """The observer's top-10 over every filter at once, and how often a guess alone gets an image there."""
    sides = {side: round(sum(row[f"observer_{side}"]["top10"] for row in filters.values()) * queries)
             for side in ("encrypted", "noise")}
    total = queries * len(filters)
    by_chance = 1 - (1 - chance) ** queries
    low, high = wilson_interval(sides["encrypted"], total)
    text = (f"Pooled over the {len(filters)} filters: ciphertexts {sides['encrypted']} of {total} "
            f"({percent_text(sides['encrypted'] / total)}; 95 % interval {percent_text(low)}–{percent_text(high)}), "
            f"noise {sides['noise']} of {total}, chance {percent_text(chance)}.")
    if 1 / queries > OBSERVER_BAR_TIMES_CHANCE * chance:
        text += (f" A guess would put at least one of {queries} images in the top 10 under a given filter with "
                 f"probability {by_chance:.0%}, so under the worst of {len(filters)} filters the bar is a test of "
                 "luck at this size; the pooled rate is the steadier figure.")
    return text


def mtcnn_findings(target: TargetRun) -> str:
    """MTCNN against issue #14's bar, beside its rate on noise and on the key's preimages, and where its hits lie."""
    data = target.run.privacy.data
    images, filters = data["images"], data["filters"]
    total = images * len(filters)
    found = {name: sum(result.found[name] for result in target.hits) for name in SETS}
    at_face = {name: sum(result.at_face.get(name, 0) for result in target.hits) for name in SETS}
    on_originals = value_range([row["detection_original"] for row in filters.values()], percent_number)
    text = (f"- MTCNN found a \"face\" in {found['ciphertexts']} of {total} filtered ciphertexts, in "
            f"{found['uniform noise']} of {total} filtered uniform-noise images and in {found['preimages']} of "
            f"{total} filtered preimages S⁻¹(x) of the same faces (x's pixels in secret places); in the "
            f"originals under the same filters, {on_originals} %. "
            f"Issue #14's bar, no face under any filter: {met(found['ciphertexts'] == 0)}.\n"
            f"- Of those, a box on the face itself (IoU ≥ {AT_FACE_IOU} with MTCNN's box on the same face's "
            f"original chip, PASCAL VOC's criterion of a correct detection): ciphertexts {at_face['ciphertexts']} "
            f"of {total}, uniform noise {at_face['uniform noise']}, preimages {at_face['preimages']}. "
            f"No face found where the face is: {met(at_face['ciphertexts'] == 0)}. This is not the issue's bar, "
            "which counts every box; it is the part of MTCNN's hits that could come from the face.\n")
    with_hits = [result for result in target.hits if result.hits]
    if not with_hits:
        return text
    ranks = data["per_image"]["ranks"]
    identities = [identity_of(source) or source for source in target.run.pairs.sources]
    observed = [ranks[result.filter]["encrypted"][identities.index(hit.name)] for result in with_hits
                for hit in result.hits]
    hits = [hit for result in with_hits for hit in result.hits]
    widths = [hit.box[2] - hit.box[0] for hit in hits]
    original_widths = [hit.original_box[2] - hit.original_box[0] for hit in hits if hit.original_box]
    text += ("\n  Where the hits lie (`benchmarks/mtcnn_hits.py`'s lines, on these ciphertexts; boxes x0, y0, x1, "
             "y1 on the chip):\n\n  ```\n"
             + "\n".join("  " + line for result in with_hits for line in str(result).splitlines()) + "\n  ```\n\n"
             f"  The hits' boxes are {value_range(widths)} px wide; on the same faces' originals MTCNN's box is "
             f"{value_range(original_widths) if original_widths else 'not found'} px wide. The observer ranked "
             f"{sum(rank is not None and rank <= 10 for rank in observed)} of these {len(hits)} in its top 10.\n")
    return text


def privacy_section(targets: list[TargetRun], work: str) -> str:
    """`avp evaluate privacy` for each target: leaks, the filter table, the observer, MTCNN."""
    first = targets[0].run.privacy.data
    observer = first["observer"]
    text = ("## `avp evaluate privacy`: filters, MTCNN and a second recognizer (issue #14)\n\n"
            + "".join(f"`{target.command}` writes [{shown_path(target.run.summary)}](privacy/"
                      f"{target.run.summary.name}) with every table and picture (observer: "
                      f"{target.run.privacy.data['observer']['name']}).\n" for target in targets)
            + f"The ciphertexts stay in `{work}`, not in docs/. The faces are LFW's first {first['images']} `multi` "
            f"identities; the observer's gallery holds {observer['gallery_images']:,} photos of "
            f"{observer['identities']:,} identities, one other photo of each face's identity among them (chance "
            f"top-10 {percent_text(observer['chance']['top10'])}). MTCNN's hits on the ciphertexts are located "
            "by `benchmarks/mtcnn_hits.py`'s code on the same ciphertexts.\n\n"
            "Every filter is also applied to a **control**: as many images of uniform noise of the same size, "
            "given the same identities. Whatever MTCNN or the observer scores on the noise it scores by chance "
            "alone; a ciphertext leaks only where it scores above it.\n")
    for target in targets:
        data = target.run.privacy.data
        leaks = data["leak_summary"]
        text += (f"\n### {target.target} target, observer {data['observer']['name']}\n\n"
                 f"Leak correlations of these {data['images']} ciphertexts (means): low-pass "
                 f"{leaks['lowpass_abs']['mean']:.3f}, band-pass {leaks['bandpass_abs']['mean']:.3f}, edge "
                 f"{leaks['edge']['mean']:+.3f}, colour {data['colour_mean_correlation']:+.3f}. Each filtered image "
                 "is mapped to the observer's template by one fixed transform fitted on the originals.\n\n"
                 + filter_table(data) + "\n" + observer_findings(data) + mtcnn_findings(target))
    return text


def key_recovery_section(targets: list[TargetRun]) -> str:
    """How much of the scramble N pairs give away, on the first target; one line for each other target."""
    with_curve = [target for target in targets if target.run.recovery is not None]
    text = ("### What a method-aware attacker recovers of the scramble\n\n"
            "`avp evaluate key-recovery` (in the same runs): an attacker who knows avp's method and holds N "
            "(ciphertext, original) pairs of one key guesses the scramble value by value — for each original "
            "value, the ciphertext value that matches it best over the N pairs (largest |r| from 3 pairs on, or "
            "nearest in value or in 1 − value) — and applies the guess to ciphertexts of the same key it has not "
            "seen.\n")
    if not with_curve:
        return text + "\nNot measured in this run: too few faces for any pair count.\n"
    first = with_curve[0]
    data = first.run.recovery.data
    reference = data["reference"]
    curve = data["curve"]
    text += (f"\n{first.target}, {len(data['held_out'])} held-out ciphertexts"
             + (" (the key scrambles every image with its own plan: \"recovered\" is the share of each held-out "
                "ciphertext's own plan that the guess gets right)" if data.get("scramble_per_image") else
                " (the key has one scramble per image size, as avp 0.1's keys had)")
             + ":\n\n"
             + markdown_table(["pairs N", "rule", "scramble recovered", "SSIM(guess, x)", "low-pass \\|r\\| of the guess",
                               "SSIM with G applied too"],
                              [[point["pairs"], point["rule"], percent(point["recovered"]) + " %", point["ssim_unscrambled"],
                                point["lowpass_unscrambled"], point["ssim_decrypted"]] for point in curve])
             + f"\nFor scale: the ciphertext itself {reference['ssim_encrypted']['mean']:.3f}; the average of the "
             f"attacker's {data['training_pairs']} training faces as a guess for every face (all faces are aligned "
             f"alike) SSIM {reference['ssim_mean_face']:.3f} with low-pass |r| {reference['lowpass_mean_face']:.3f}; "
             f"the key's own scramble, low-pass |r| {reference['lowpass_perfect_guess']:.3f}.\n"
             + sentence(recovery_findings(curve, reference))
             + f"\n![key recovery](privacy/{first.target}/key-recovery-contact-sheet.png)\n\n"
             "(Original | ciphertext | the attacker's guess with each pair count | the key's own S(x′) | decrypted.)\n")
    for other in with_curve[1:]:
        text += f"\n{other.target}: " + recovery_findings(other.run.recovery.data["curve"],
                                                          other.run.recovery.data["reference"])
    return text


def recovery_findings(curve: list[dict[str, Any]], reference: dict[str, Any]) -> str:
    """When the guess's coarse layout beats an average face's, and what the most pairs give (lower case)."""
    average = reference["lowpass_mean_face"]
    most = max(point["pairs"] for point in curve)
    best = max((point for point in curve if point["pairs"] == most), key=lambda point: point["recovered"])
    beyond = [point for point in curve if point["lowpass_unscrambled"] > average]
    if beyond:
        first = min(beyond, key=lambda point: point["pairs"])
        layout = (f"with {first['pairs']} pairs the guess's low-pass |r| is already {first['lowpass_unscrambled']:.3f}, "
                  f"above the {average:.3f} of an average face")
    else:
        layout = f"no pair count measured lifts the guess's low-pass |r| above an average face's {average:.3f}"
    return (f"{layout}; with {most} pairs the attacker gets {percent(best['recovered'])} % of the scramble right "
            f"({best['rule']}), SSIM {best['ssim_unscrambled']:.3f} and low-pass |r| {best['lowpass_unscrambled']:.3f} "
            f"(with G applied: SSIM {best['ssim_decrypted']:.3f}).\n")


def sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def attack_reports(results_work: Path) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """benchmarks/results.py's paired-data attack reports: target → [(attack.json, its data)] by training pairs."""
    import json

    found: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for path in results_work.glob("*/reports/attack-*/attack.json"):
        found.setdefault(path.parts[-4], []).append((path, json.loads(path.read_text())))
    return {target: sorted(reports, key=lambda item: item[1]["training_pairs"]) for target, reports in sorted(found.items())}


def results_provenance(results_work: Path, results_doc: Path) -> str:
    """Which results.py run wrote the reports: its command and date from RESULTS.md when that run used this folder."""
    text = results_doc.read_text() if results_doc.is_file() else ""
    # Runs before benchmarks became modules were written `python benchmarks/results.py ...`.
    match = re.search(r"Generated by `(python (?:-m benchmarks\.results|benchmarks/results\.py)\b[^`]*)` on "
                      r"(\d{4}-\d{2}-\d{2})", text)
    if match:
        argv = shlex.split(match[1])[3 if " -m " in match[1] else 2:]

        def option(name: str) -> str | None:
            return argv[argv.index(name) + 1] if name in argv[:-1] else None

        work = option("--work")
        if work and Path(work).resolve() == results_work.resolve():
            keys = "; ".join(f"{label} — {Path(given).name}" for label, given
                             in (("A", option("--key")), ("B", option("--other-key"))) if given)
            return (f"`{match[1]}` (docs/RESULTS.md, run of {match[2]}" + (f"; keys: {keys}" if keys else "") + ")")
    return f"benchmarks/results.py (the run whose work folder is `{results_work}`; its command is not recorded there)"


def attacker_section(results_work: Path, results_doc: Path) -> str:
    """The network trained on pairs, as benchmarks/results.py measured it, against issue #14's bars and the control."""
    text = "### A network trained on pairs\n\n"
    reports = attack_reports(results_work)
    if not reports:
        return text + (f"benchmarks/results.py's attack reports are not in `{results_work}` "
                       "(`<target>/reports/attack-<pairs>/attack.json`), so this run does not quote them: the "
                       "paired-data attacker's table is in [docs/RESULTS.md](RESULTS.md) (sections \"paired-data "
                       "attack\"), from that run. Give `--results-work` the folder of a results.py run to quote it "
                       "here.\n")
    for target, items in reports.items():
        latest = max(path.stat().st_mtime for path, _ in items)
        summaries = [data["summary"] for _, data in items]
        held_out, other = summaries[-1][ATTACK_ROWS["held_out"]], summaries[-1][ATTACK_ROWS["other_key"]]
        text += (f"{results_provenance(results_work, results_doc)} trains a generator of the key's architecture "
                 f"with L1 on the first {' and the first '.join(str(data['training_pairs']) for _, data in items)} "
                 f"(ciphertext, original) pairs of its {target} gallery encrypted with key A "
                 f"({items[0][1]['steps']} steps), and applies it to {held_out['count']} held-out key-A ciphertexts "
                 f"and to {other['count']} ciphertexts of another key (reports written "
                 f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(latest))}). Beside it, the control that "
                 "`avp evaluate attack` reports: the mean of the attacker's training originals, a guess that ignores "
                 "the ciphertext.\n\n"
                 + markdown_table(["training pairs", "SSIM on its training pairs", "held-out, key A",
                                   "control: mean face vs held-out", "another key (B)", "control: mean face vs key B's"],
                                  [[data["training_pairs"]] + [data["summary"][ATTACK_ROWS[row]]["mean"] for row in
                                   ("training", "held_out", "held_out_control", "other_key", "other_key_control")]
                                   for _, data in items]) + "\n")
        for _, data in items:
            rows = {name: data["summary"][ATTACK_ROWS[name]]["mean"] for name in ATTACK_ROWS}
            text += (f"- {data['training_pairs']} pairs: held-out key A {rows['held_out']:.3f}, "
                     f"{'below' if rows['held_out'] < rows['held_out_control'] else 'above'} the control's "
                     f"{rows['held_out_control']:.3f}; key B {rows['other_key']:.3f}, "
                     f"{'below' if rows['other_key'] < rows['other_key_control'] else 'above'} the control's "
                     f"{rows['other_key_control']:.3f}.\n")
        worst_held_out = max(summary[ATTACK_ROWS["held_out"]]["mean"] for summary in summaries)
        worst_other = max(summary[ATTACK_ROWS["other_key"]]["mean"] for summary in summaries)
        control_other = max(summary[ATTACK_ROWS["other_key_control"]]["mean"] for summary in summaries)
        text += (f"\nAgainst issue #14's bars (the most any pair count reached): held-out key-A SSIM ≤ "
                 f"{ATTACK_HELD_OUT_BAR}: {met(worst_held_out <= ATTACK_HELD_OUT_BAR)} ({worst_held_out:.3f}); "
                 f"another key ≤ {ATTACK_OTHER_KEY_BAR}: {met(worst_other <= ATTACK_OTHER_KEY_BAR)} "
                 f"({worst_other:.3f}), where the control, which never looks at a ciphertext, scores "
                 f"{control_other:.3f}.\n")
    return text


def other_keys_section(faces: encrypt_faces.FacesRun, targets: list[TargetRun]) -> str:
    """Decryption with a key of another seed: on the defaults' faces, and on each target's privacy faces."""
    text = "## Keys of other seeds\n\n"
    other = faces.other_key
    if other is not None:
        text += (f"On the {len(faces.rows)} faces of the defaults' run, a key of another seed decrypts to SSIM "
                 f"{other.ssim_mean:.3f} (mean; max {other.ssim_max:.3f}), and this key's own G behind the other "
                 f"key's scramble to {other.mixed_mean:.3f} (mean; max {other.mixed_max:.3f}).\n")
    for target in targets:
        summary = target.run.cross.data["summary"]
        right, wrong = summary["right key"], summary["key B (other seed)"]
        text += (f"\n{target.target}, the {right['count']} faces of `avp evaluate privacy`: key B {wrong['mean']:.3f} "
                 f"(max {wrong['max']:.3f}), the right key {right['mean']:.3f} (min {right['min']:.3f}).\n")
    return text


# ------------------------------------------------------------------------------------------------
# The doc


def write_doc(doc: Path, generated: str) -> None:
    """The generated part above this script's marker, the hand-written part below it kept."""
    write_generated_doc(doc, generated, HAND_WRITTEN)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", type=Path, required=True, help="key A: every face is encrypted with it")
    parser.add_argument("--other-key", type=Path, required=True, help="key B, another seed")
    parser.add_argument("--faces", type=int, default=50, help="faces of avp's defaults' run (encrypt_faces.py)")
    parser.add_argument("--privacy-faces", type=int,
                        help="faces of each target's privacy.py run (default: --faces; LFW has 193 `multi` identities)")
    parser.add_argument("--skip", type=int, default=20, help="the defaults' run leaves out LFW's first N `multi` identities")
    parser.add_argument("--targets", default="dlib,mobilefacenet", help="privacy.py's targets, comma-separated")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "avp" / "privacy-work",
                        help="privacy.py's ciphertexts and gallery links (a rerun reuses them)")
    parser.add_argument("--results-work", type=Path, default=Path("/tmp/bench/results-work"),
                        help="benchmarks/results.py's --work, whose attack reports are quoted")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "PRIVACY.md",
                        help="the doc to write; its pictures and privacy.py's reports go beside it")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("AVP_THREADS", "2")))
    parser.add_argument("--gallery-size", type=int, help="privacy.py's distractors (default: its own, 1,200)")
    add_settings_options(parser, only=["iterations"])  # passed on to both scripts
    parser.add_argument("--device", default="cpu", help="privacy.py's device (encrypt_faces.py runs on the CPU)")
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if not (data_folder() / "lfw.csv").is_file():
        sys.exit(f"shared data not found at {data_folder()} (set AVP_DATA)")
    # The scripts are run from the repository's root, so that the doc names its own files relative to it.
    key, other_key, work, doc = (path.resolve() for path in (args.key, args.other_key, args.work, args.doc))
    results_work = args.results_work.resolve()
    os.chdir(REPO)
    torch.set_num_threads(args.threads)
    started, timings = time.perf_counter(), []
    steps = ["--iterations", str(args.iterations)] if args.iterations else []

    sheet = doc.parent / "pictures" / "privacy-scrambled-key.png"
    sheet.parent.mkdir(parents=True, exist_ok=True)
    faces_argv = ["--key", shown_path(key), "--faces", str(args.faces), "--skip", str(args.skip), "--threads",
                  str(args.threads), "--naive-faces", "0", "--other-key", shown_path(other_key), "--sheet",
                  shown_path(sheet), "--sheet-rows", str(SHEET_ROWS), *steps]
    log(f"avp's defaults on {args.faces} faces: encrypt_faces.py")
    began = time.perf_counter()
    faces = encrypt_faces.run(encrypt_faces.build_parser().parse_args(faces_argv),
                              emit=lambda line: print(line, file=sys.stderr))
    timings.append(f"avp's defaults {time.perf_counter() - began:.0f} s")

    targets = []
    for target in (name.strip() for name in args.targets.split(",")):
        privacy_argv = ["--key", shown_path(key), "--other-key", shown_path(other_key),
                        "--faces", str(args.privacy_faces or args.faces),
                        "--target", target, "--out", shown_path(doc.parent / "privacy"), "--work", shown_path(work),
                        *steps, *(["--gallery-size", str(args.gallery_size)] if args.gallery_size else []),
                        *(["--device", args.device] if args.device != "cpu" else [])]
        log(f"{target}: privacy.py")
        began = time.perf_counter()
        run = privacy.run(privacy_argv)
        timings.append(f"{target} privacy {time.perf_counter() - began:.0f} s")
        began = time.perf_counter()
        names = [identity_of(source) or source for source in run.pairs.sources]
        hits = list(mtcnn_hits(names, run.pairs.originals, run.pairs.encrypted, run.key.cpu()))
        timings.append(f"{target} MTCNN hits {time.perf_counter() - began:.0f} s")
        targets.append(TargetRun(target, command_line("privacy", privacy_argv), run, hits))

    command = command_line("privacy_doc", sys.argv[1:])
    generated = "\n".join([
        "# What a ciphertext still shows\n",
        INTRODUCTION + "\n",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d')} (device {args.device}, {args.threads} threads, "
        f"{time.perf_counter() - started:.0f} s in all: {'; '.join(timings)}). Keys: A — {key.name}; "
        f"B — {other_key.name}, another seed.\n",
        MEASURES,
        defaults_section(faces, command_line("encrypt_faces", faces_argv), str(sheet.relative_to(doc.parent))),
        privacy_section(targets, shown_path(work)),
        "## Attackers with (ciphertext, original) pairs\n",
        key_recovery_section(targets),
        attacker_section(results_work, REPO / "docs" / "RESULTS.md"),
        other_keys_section(faces, targets),
    ])
    write_doc(doc, generated)
    log(f"wrote {doc}")
    print(doc)


if __name__ == "__main__":
    main()
