"""benchmarks/privacy_doc.py: the hand-written part survives a regeneration, and the prose's figures and
verdicts come from the numbers (tiny made-up inputs: no data, no models)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from avpcli.engine import StopCriteria
from avpcli.evaluate import chance_ranks
from benchmarks import privacy_doc
from benchmarks.encrypt_faces import FacesRun, OtherKeyDecryption
from benchmarks.mtcnn_hits import FilterHits, Hit

REPO = Path(__file__).resolve().parents[1]


def test_a_regeneration_keeps_the_hand_written_part(tmp_path):
    doc = tmp_path / "PRIVACY.md"
    hand = "\n\n## What this means for users\n\nWritten by a person.\n"
    doc.write_text("# Old figures 0.123\n\n" + privacy_doc.HAND_WRITTEN + hand)
    privacy_doc.write_doc(doc, "# New figures 0.456\n")
    privacy_doc.write_doc(doc, "# New figures 0.456\n")  # a rerun changes nothing more
    assert doc.read_text() == "# New figures 0.456\n\n" + privacy_doc.HAND_WRITTEN + hand


def test_a_doc_without_the_marker_is_not_overwritten(tmp_path):
    doc = tmp_path / "PRIVACY.md"
    doc.write_text("# All by hand\n")
    with pytest.raises(SystemExit, match="hand-written"):
        privacy_doc.write_doc(doc, "# New\n")
    assert doc.read_text() == "# All by hand\n"


def test_a_new_doc_gets_the_marker(tmp_path):
    doc = tmp_path / "new" / "PRIVACY.md"
    privacy_doc.write_doc(doc, "# New\n")
    assert doc.read_text() == "# New\n\n" + privacy_doc.HAND_WRITTEN + "\n"


def test_the_committed_doc_keeps_its_history_and_advice_below_the_marker():
    text = (REPO / "docs" / "PRIVACY.md").read_text()
    assert text.count(privacy_doc.HAND_WRITTEN) == 1
    hand_written = text.partition(privacy_doc.HAND_WRITTEN)[2]
    for heading in ("## Before the scramble: three objectives with the plain key (2026-11-26)",
                    "## What this means for users"):
        assert heading in hand_written


def faces_run(colour: float) -> FacesRun:
    rows = [{"file": "A_0001.jpg", "feature_distance": 0.05, "ssim_encrypted": 0.01, "ssim_decrypted": 0.96,
             "iterations": 30},
            {"file": "B_0001.jpg", "feature_distance": 0.006, "ssim_encrypted": 0.0206, "ssim_decrypted": 0.997,
             "iterations": 800}]
    return FacesRun(rows, StopCriteria(0.1, 0.02, 0.95), 21,
                    {"low-pass": (0.005, 0.027), "band-pass": (0.003, 0.014), "edge": (-0.04, 0.008)}, colour,
                    OtherKeyDecryption(2, 0.0947, 0.1567, 0.0874, 0.1449), ["faces meeting every bar: 1/2"])


def test_the_defaults_section_judges_each_leak_against_its_bar_and_names_the_faces_that_missed_one():
    text = privacy_doc.defaults_section(faces_run(colour=0.026), "python -m benchmarks.encrypt_faces --faces 2",
                                        "pictures/sheet.png")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert "0.005 (max 0.027) | met" in rows["low-pass \\|r\\| mean"]
    assert "-0.040 (max +0.008) | NOT met" in rows["edge r mean"]  # |mean| 0.04 is over the bar 0.03
    assert "+0.026 | met" in rows["colour-mean r across images (per channel, averaged)"]
    assert "1 of the 2 faces did not meet every bar" in text
    assert "B_0001.jpg: distance 0.0060 (bar ≤ 0.1), SSIM_e 0.0206 (≤ 0.02)" in text
    assert "LFW faces 21–22" in text and "faces meeting every bar: 1/2" in text
    assert "![avp's defaults with a scrambling key](pictures/sheet.png)" in text


def test_the_keys_of_other_seeds_are_formatted_from_the_measured_ssim():
    text = privacy_doc.other_keys_section(faces_run(colour=0.5), [])
    assert "decrypts to SSIM 0.095 (mean; max 0.157)" in text
    assert "scramble to 0.087 (mean; max 0.145)" in text


def observer_summary(top10: float, queries: int = 50) -> dict:
    return {"queries": queries, "unranked": 0, "top1": 0.0, "top10": top10, "median_rank": 600.0}


def privacy_target(over_chance: bool) -> privacy_doc.TargetRun:
    """Two filters on 50 faces; under the blur, 2 ciphertexts in the observer's top 10 (4 %) if `over_chance`."""
    filters = {
        "none": {"description": "the image as it is", "detection_encrypted": 0.0, "detection_original": 1.0,
                 "detection_noise": 0.0, "observer_encrypted": observer_summary(0.0),
                 "observer_original": observer_summary(0.96), "observer_noise": observer_summary(0.0)},
        "blur5-colour": {"description": "a blur", "detection_encrypted": 0.04, "detection_original": 0.96,
                         "detection_noise": 0.02, "observer_encrypted": observer_summary(0.04 if over_chance else 0.0),
                         "observer_original": observer_summary(0.24), "observer_noise": observer_summary(0.02)},
    }
    names = [f"Person_{index}" for index in range(50)]
    ranks = {name: {"encrypted": [500] * 50} for name in filters}
    ranks["blur5-colour"]["encrypted"][1] = 7  # a hit the observer also ranks in its top 10
    data = {"images": 50, "filters": filters, "leak_summary": {}, "colour_mean_correlation": 0.0,
            "observer": {"name": "observer-net", "identities": 1250, "gallery_images": 1250,
                         "chance": chance_ranks(1250)},
            "per_image": {"ranks": ranks}}
    hits = [FilterHits("none", {"ciphertexts": 0, "preimages": 0, "uniform noise": 0}, 50, [],
                       {"ciphertexts": 0, "preimages": 0, "uniform noise": 0}),
            FilterHits("blur5-colour", {"ciphertexts": 2, "preimages": 1, "uniform noise": 1}, 50,
                       [Hit("Person_1", [67, 38, 124, 104], 0.704, [9, -11, 119, 137], 0.18),
                        Hit("Person_2", [-13, 20, 47, 95], 0.865, [-14, -39, 127, 136], 0.21)],
                       {"ciphertexts": 0, "preimages": 0, "uniform noise": 1})]
    run = SimpleNamespace(privacy=SimpleNamespace(data=data),
                          pairs=SimpleNamespace(sources=[f"{name}/{name}_0001.jpg" for name in names]))
    return privacy_doc.TargetRun("dlib", "python -m benchmarks.privacy --target dlib", run, hits)


def test_the_observer_bar_is_judged_against_twice_chance():
    assert "at most 2× chance (1.6 %): **met**; at 50 images one image (2 %) is already over it." in privacy_doc.observer_findings(
        privacy_target(over_chance=False).run.privacy.data)
    text = privacy_doc.observer_findings(privacy_target(over_chance=True).run.privacy.data)
    assert "**NOT met** (over it: blur5-colour (4 %)); at 50 images one image (2 %) is already over it." in text
    assert "top-10 on the ciphertexts 0–4 %" in text and "on the originals 24–96 %" in text


def test_mtcnn_counts_hits_and_shows_where_they_lie():
    text = privacy_doc.mtcnn_findings(privacy_target(over_chance=False))
    assert "in 2 of 100 filtered ciphertexts, in 1 of 100 filtered uniform-noise images and in 1 of 100" in text
    assert "no face under any filter: **NOT met**" in text
    assert "    Person_1: box [67, 38, 124, 104], p 0.704 (on the original chip: [9, -11, 119, 137]; IoU 0.18)" in text
    assert "blur5-colour: ciphertexts 2/50 (0 at the face), preimages 1/50 (0 at the face), uniform noise 1/50 (1 at the face)" in text
    assert "ciphertexts 0 of 100, uniform noise 1, preimages 0. No face found where the face is: **met**." in text
    assert "The hits' boxes are 57–60 px wide" in text and "MTCNN's box is 110–141 px wide" in text
    assert "ranked 1 of these 2 in its top 10" in text


def test_the_filter_table_counts_images_and_ends_with_chance():
    table = privacy_doc.filter_table(privacy_target(over_chance=True).run.privacy.data)
    assert "| blur5-colour: a blur | 4 % (2 of 50) | 96 % (48 of 50) | 2 % (1 of 50) | 4 % (2 of 50) |" in table
    assert table.splitlines()[-1] == "| chance (a guess) |  |  |  | 0.8 % | 0.8 % | 0.8 % | 626 |"


def write_attack(results_work: Path, pairs: int, held_out: float, other: float) -> None:
    names = privacy_doc.ATTACK_ROWS
    means = {"training": 0.48, "held_out": held_out, "held_out_control": 0.50, "other_key": other,
             "other_key_control": 0.53}
    summary = {names[row]: {"count": 268 if "held_out" in row else 7, "mean": mean} for row, mean in means.items()}
    folder = results_work / "dlib" / "reports" / f"attack-{pairs}"
    folder.mkdir(parents=True)
    (folder / "attack.json").write_text(json.dumps({"steps": 300, "training_pairs": pairs, "summary": summary}))


# RESULTS.md of runs before the benchmarks became modules says `python benchmarks/results.py`.
@pytest.mark.parametrize("script", ["python -m benchmarks.results", "python benchmarks/results.py"])
def test_the_paired_attacker_is_quoted_from_results_work_with_the_run_that_made_it(tmp_path, script):
    results_work = tmp_path / "results-work"
    write_attack(results_work, 20, held_out=0.471, other=0.464)
    write_attack(results_work, 200, held_out=0.474, other=0.467)
    results_doc = tmp_path / "RESULTS.md"
    command = (f"{script} --key /keys/default-1.safetensors --other-key /keys/default-2.safetensors "
               f"--work {results_work}")
    results_doc.write_text(f"# Results\n\nGenerated by `{command}` on 2026-11-30 (CPU).\n")
    text = privacy_doc.attacker_section(results_work, results_doc)
    assert f"`{command}` (docs/RESULTS.md, run of 2026-11-30; keys: A — default-1.safetensors; " in text
    assert "| 200 | 0.480 | 0.474 | 0.500 | 0.467 | 0.530 |" in text
    assert "- 20 pairs: held-out key A 0.471, below the control's 0.500" in text
    assert "held-out key-A SSIM ≤ 0.5: **met** (0.474); another key ≤ 0.2: **NOT met** (0.467)" in text


def test_without_results_the_doc_says_where_the_attacker_table_is(tmp_path):
    text = privacy_doc.attacker_section(tmp_path / "nothing-here", tmp_path / "RESULTS.md")
    assert "[docs/RESULTS.md](RESULTS.md)" in text and "|" not in text


def test_binomial_tail_against_hand_computed_values():
    assert privacy_doc.binomial_tail(10, 0.5, 6) == pytest.approx(386 / 1024)  # (210 + 120 + 45 + 10 + 1) / 2¹⁰
    assert privacy_doc.binomial_tail(50, 0.008, 1) == pytest.approx(1 - 0.992 ** 50)
    assert privacy_doc.binomial_tail(5, 0.3, 0) == 1.0
    assert privacy_doc.binomial_tail(5, 0.3, 6) == pytest.approx(0.0)


def test_wilson_interval_against_published_values():
    low, high = privacy_doc.wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = privacy_doc.wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))


def test_with_enough_images_the_observer_bar_says_how_often_a_guess_breaks_it():
    target = privacy_target(over_chance=False)
    data = target.run.privacy.data
    data["observer"] = {**data["observer"], "identities": 300, "chance": chance_ranks(300)}
    for row in data["filters"].values():
        for side in ("encrypted", "original", "noise"):
            row[f"observer_{side}"] = {**row[f"observer_{side}"], "queries": 193}
    text = privacy_doc.observer_findings(data)
    # 2 × 10/300 of 193 images is 12.9: 13 in the top 10 break the bar.
    tail = privacy_doc.binomial_tail(193, 10 / 300, 13)
    assert f"at 193 images, 13 in the top 10 are over it, which a guess reaches under a given filter with probability {tail:.1%}" in text
    assert "test of luck" not in text


def recovery_target(per_image: bool) -> privacy_doc.TargetRun:
    """A key-recovery run: 20 pairs recover nothing of a per-image key, 1.8 % of a per-size key."""
    lowpass = 0.02 if per_image else 0.917
    curve = [{"pairs": 20, "rule": "distance", "source": 0.0, "recovered": 0.0 if per_image else 0.018,
              "ssim_unscrambled": 0.01, "lowpass_unscrambled": lowpass, "ssim_decrypted": 0.09}]
    reference = {"ssim_encrypted": {"mean": 0.009}, "ssim_mean_face": 0.504, "lowpass_mean_face": 0.441,
                 "lowpass_perfect_guess": 0.998}
    data = {"curve": curve, "reference": reference, "held_out": ["a"] * 173, "training_pairs": 20,
            "scramble_per_image": per_image}
    run = SimpleNamespace(recovery=SimpleNamespace(data=data))
    return privacy_doc.TargetRun("dlib", "python -m benchmarks.privacy", run, [])


def test_the_key_recovery_section_names_the_keys_scheme_and_what_the_guess_shows():
    per_image = privacy_doc.key_recovery_section([recovery_target(per_image=True)])
    assert "173 held-out ciphertexts (the key scrambles every image with its own plan" in per_image
    assert "No pair count measured lifts the guess's low-pass |r| above an average face's 0.441" in per_image
    per_size = privacy_doc.key_recovery_section([recovery_target(per_image=False)])
    assert "(the key has one scramble per image size, as avp 0.1's keys had)" in per_size
    assert "With 20 pairs the guess's low-pass |r| is already 0.917, above the 0.441 of an average face" in per_size
