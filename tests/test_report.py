"""Report writing and `avp evaluate` end to end on the tiny test targets (--iterations 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from avpcli import evaluate, report
from avpcli.align import resize_transform
from avpcli.targets import get_spec
from avpcli.cli import app
from avpcli.images import save_png


def _pictures(folder: Path, names: list[str], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for index, name in enumerate(names):
        # Smooth images (a colour ramp plus a little noise) so that originals look like photographs.
        ramp = torch.linspace(0, 1, 32).view(1, 1, 32).expand(3, 32, 32)
        colour = torch.rand(3, 1, 1, generator=generator)
        image = (0.6 * ramp * colour + 0.3 * colour + 0.05 * torch.rand(3, 32, 32, generator=generator)).clamp(0, 1)
        save_png(image, folder / name)


def _run(*arguments: str) -> str:
    result = CliRunner().invoke(app, list(arguments), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def test_markdown_table_writes_undefined_for_missing_numbers():
    table = report.markdown_table(["a", "b"], [["x", float("nan")], ["y", 0.12345]])
    assert "| x | undefined |" in table and "| y | 0.123 |" in table


def test_report_writes_json_markdown_and_pictures(tmp_path):
    written = report.Report("thing", {"value": float("nan"), "path": tmp_path}, "# Thing\n",
                            {"picture": Image.new("RGB", (4, 4))}).write(tmp_path / "out")
    assert written == tmp_path / "out" / "thing.md"
    assert json.loads((tmp_path / "out" / "thing.json").read_text())["value"] is None
    assert "![picture](thing-picture.png)" in written.read_text()
    assert Image.open(tmp_path / "out" / "thing-picture.png").size == (4, 4)


def test_pictures_have_their_documented_sizes():
    counts = torch.arange(256)
    assert report.histogram_picture({"a": counts, "b": counts}).size == (256 * 2 + 32, 2 * (140 + 32))
    assert report.scatter_picture(torch.tensor([0.0, 255.0]), torch.tensor([0.0, 255.0]), "r").size == (288, 288)


def test_statistics_report_on_noise_and_smooth_images():
    smooth = torch.linspace(0, 1, 32).view(1, 1, 32).expand(2, 3, 32, 32).clone()
    noise = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pairs = report.PairedImages(["a", "b"], smooth, noise)
    result = report.statistics_report(pairs, pairs_per_image=500, detect=False)
    assert result.data["correlation"]["original"]["horizontal"]["mean"] == pytest.approx(1.0, abs=1e-3)
    # Rows are constant in a horizontal ramp: vertical neighbours are equal but pairs still vary.
    assert abs(result.data["correlation"]["encrypted"]["horizontal"]["mean"]) < 0.15
    assert set(result.pictures) == {"histograms", "correlation"}


def test_evaluate_end_to_end_on_tiny_embedding(tmp_path, tiny_key_file, other_tiny_key_file):
    people = tmp_path / "people"
    for person, count in (("alice", 3), ("bob", 3), ("carol", 1), ("dave", 2)):
        _pictures(people / person, [f"{person}_{i}.png" for i in range(count)], seed=len(person) * 7 + count)
    common = ["--target", "tiny-embedding", "--key", str(tiny_key_file), "--device", "cpu"]

    identification = tmp_path / "identification"
    printed = _run("evaluate", "identification", str(people), *common, "--min-images", "2", "--iterations", "2",
                   "--out", str(identification))
    assert printed.strip() == str(identification / "identification.md")
    data = json.loads((identification / "identification.json").read_text())
    assert data["sizes"] == {"probe_identities": 2, "probe_images": 6, "turns": 6, "gallery": 3, "encrypted": 9,
                             "gallery_left_plain": 0}
    assert set(data["accuracy"]) == {"original_all_turns", "original", "avp_one", "avp_all"}
    assert data["accuracy"]["original"]["total"] == 2 * 3 * 2
    assert "AVP-ONE" in (identification / "identification.md").read_text()

    limited = tmp_path / "identification-limited"
    _run("evaluate", "identification", str(people), *common, "--min-images", "2", "--iterations", "2",
         "--gallery", "2", "--gallery-plain", "--out", str(limited))
    limited_sizes = json.loads((limited / "identification.json").read_text())["sizes"]
    assert limited_sizes["gallery"] == 2 and limited_sizes["probe_identities"] == 2

    # The same ciphertexts feed the other analyses: originals come from the folder that was encrypted.
    originals, encrypted = str(identification / "selection"), str(identification / "encrypted")
    quality = tmp_path / "quality"
    _run("evaluate", "quality", originals, encrypted, *common, "--wrong-key", str(other_tiny_key_file),
         "--out", str(quality))
    quality_data = json.loads((quality / "quality.json").read_text())
    assert quality_data["images"] == 9 and len(quality_data["per_image"]["ssim_encrypted"]) == 9
    sheet = Image.open(quality / "quality-contact-sheet.png")
    # original | encrypted | blurred | decrypted | wrong key: 5 columns, 8 rows of 32-pixel images, 4-pixel gaps
    assert sheet.size == (5 * 36 + 4, 8 * 36 + 4)

    cross = tmp_path / "cross"
    _run("evaluate", "cross-key", originals, encrypted, "--target", "tiny-embedding", "--key", str(tiny_key_file),
         "--other-key", str(other_tiny_key_file), "--device", "cpu", "--out", str(cross))
    assert set(json.loads((cross / "cross-key.json").read_text())["summary"]) == {"right key", "tiny-other"}

    attack = tmp_path / "attack"
    _run("evaluate", "attack", originals, encrypted, *common, "--other-key", str(other_tiny_key_file),
         "--held-out", "2", "--steps", "2", "--iterations", "2", "--out", str(attack))
    attack_data = json.loads((attack / "attack.json").read_text())
    assert attack_data["training_pairs"] == 7 and len(attack_data["other_key"]) == 2
    # --pairs N: the attacker trains on the first N pairs only (the held-out ones stay the same).
    _run("evaluate", "attack", originals, encrypted, *common, "--other-key", str(other_tiny_key_file),
         "--held-out", "2", "--pairs", "3", "--steps", "2", "--iterations", "2", "--out", str(attack))
    attack_data = json.loads((attack / "attack.json").read_text())
    assert attack_data["training_pairs"] == 3 and len(attack_data["held_out"]) == 2

    statistics = tmp_path / "statistics"
    _run("evaluate", "statistics", originals, encrypted, "--target", "tiny-embedding", "--pairs", "300",
         "--no-detect", "--out", str(statistics))
    statistics_data = json.loads((statistics / "statistics.json").read_text())
    assert statistics_data["face_detection_rate"] == {}
    assert len(statistics_data["histogram"]["encrypted"]) == 256
    assert (statistics / "statistics-histograms.png").is_file()


def test_evaluate_classification_end_to_end_on_tiny_classifier(tmp_path, tiny_key_file):
    dataset = tmp_path / "classes"
    for label in ("cat", "dog"):
        _pictures(dataset / label, [f"{label}_{i}.png" for i in range(3)], seed=len(label))
    out = tmp_path / "report"
    printed = _run("evaluate", "classification", str(dataset), "--target", "tiny-classifier", "--key",
                   str(tiny_key_file), "--per-class", "2", "--iterations", "2", "--device", "cpu", "--out", str(out))
    assert printed.strip() == str(out / "classification.md")
    data = json.loads((out / "classification.json").read_text())
    assert data["classes"] == ["cat", "dog"] and data["images"] == 4
    assert 0.0 <= data["accuracy"]["original"] <= 1.0 and 0.0 <= data["accuracy"]["encrypted"] <= 1.0
    # Another report over the same --work reuses its ciphertexts: nothing is encrypted again.
    stamps = {path: path.stat().st_mtime_ns for path in (out / "encrypted").rglob("*.png")}
    again = tmp_path / "again"
    _run("evaluate", "classification", str(dataset), "--target", "tiny-classifier", "--key", str(tiny_key_file),
         "--per-class", "2", "--iterations", "2", "--device", "cpu", "--work", str(out), "--out", str(again))
    assert json.loads((again / "classification.json").read_text())["accuracy"] == data["accuracy"]
    assert {path: path.stat().st_mtime_ns for path in (out / "encrypted").rglob("*.png")} == stamps
    assert not (again / "encrypted").exists()


def test_evaluate_reports_a_folder_without_probe_identities_as_a_usage_error(tmp_path, tiny_key_file):
    _pictures(tmp_path / "people" / "solo", ["a.png"], seed=1)
    result = CliRunner().invoke(app, ["evaluate", "identification", str(tmp_path / "people"), "--target",
                                      "tiny-embedding", "--key", str(tiny_key_file), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "more than 12 images" in " ".join(result.output.split())


@pytest.mark.parametrize("command", ["classification", "identification", "attack"])
@pytest.mark.parametrize(("option", "value"), [("precision", "fp32"), ("precision", "bf16"), ("recipe", "research"),
                                               ("recipe", None)])
def test_evaluate_commands_that_encrypt_take_precision_and_recipe(tmp_path, tiny_key_file, other_tiny_key_file,
                                                                  monkeypatch, command, option, value):
    seen = []

    class Stop(Exception):
        pass

    def capture(*arguments, **fields):
        seen.append(fields[option])
        raise Stop

    monkeypatch.setattr("avpcli.report.evaluations.Encryptor", capture)  # the one builder, where the analyses call it
    folder = tmp_path / "people"
    for person in ("ann", "bob"):
        _pictures(folder / person, [f"{person}_{i}.png" for i in range(3)], seed=len(person))
    target = "tiny-classifier" if command == "classification" else "tiny-embedding"
    arguments = {"classification": [str(folder)], "identification": [str(folder), "--min-images", "2"],
                 "attack": [str(folder), str(tmp_path / "encrypted"), "--other-key", str(other_tiny_key_file)]}[command]
    chosen = [f"--{option}", value] if value else []
    result = CliRunner().invoke(app, ["evaluate", command, *arguments, "--target", target, "--key", str(tiny_key_file),
                                      "--device", "cpu", *chosen, "--out", str(tmp_path / "r")])
    assert isinstance(result.exception, Stop), result.output
    assert seen == [value or "tuned"]  # without --recipe, avp encrypt's default


def test_evaluate_refuses_fp16_on_a_cpu(tmp_path, tiny_key_file):
    _pictures(tmp_path / "classes" / "cat", ["a.png"], seed=1)
    result = CliRunner().invoke(app, ["evaluate", "classification", str(tmp_path / "classes"), "--target",
                                      "tiny-classifier", "--key", str(tiny_key_file), "--device", "cpu",
                                      "--precision", "fp16", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "needs a CUDA device" in " ".join(result.output.split())


# ------------------------------------------------------------------------------------------------
# Privacy and key recovery


@pytest.mark.parametrize(("name", "identity"), [("lfw/Ann_Smith/Ann_Smith_0003.jpg", "Ann_Smith"),
                                                ("Ann_Smith_0003.png", "Ann_Smith"), ("alice/photo.png", "alice"),
                                                ("photo.png", None)])
def test_identity_comes_from_an_lfw_file_name_or_the_folder(name, identity):
    assert report.identity_of(name) == identity


class _MeanColour(torch.nn.Module):
    """A fake observer: an image's feature is its mean colour."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def test_privacy_report_ranks_filtered_images_and_leaves_the_same_photo_out():
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9]])
    originals = colours.view(3, 3, 1, 1).expand(3, 3, 32, 32).clone()
    encrypted = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    pairs = report.PairedImages(["a.png", "b.png", "c.png"], originals, encrypted,
                                ["red/red_0001.png", "green/green_0001.png", "blue/blue_0001.png"])
    # The gallery holds each original's very photo (left out) and a second, slightly darker photo.
    gallery = report.Gallery(torch.cat([colours, 0.8 * colours]), ["red", "green", "blue"] * 2,
                             ["red_0001", "green_0001", "blue_0001", "red_0002", "green_0002", "blue_0002"])
    observer = report.Observer(get_spec("tiny-embedding"), _MeanColour(), gallery,
                               resize_transform((32, 32), (32, 32)))
    result = report.privacy_report(pairs, get_spec("tiny-embedding"), torch.nn.Identity(), observer,
                                   detect=False)
    filters = result.data["filters"]
    assert [reveal.name for reveal in evaluate.REVEAL_FILTERS] == list(filters)
    # Plain originals are identified; the very same photo would have been at distance 0 for them all.
    assert filters["none"]["observer_original"] == {"queries": 3, "unranked": 0, "top1": 1.0, "top10": 1.0,
                                                    "median_rank": 1.0}
    assert result.data["observer"]["chance"] == {"top1": 1 / 3, "top10": 1.0, "median_rank": 2.0}
    assert len(result.data["per_image"]["best_filter"]) == 3
    assert all(rank in (1, 2, 3) for rank in result.data["per_image"]["best_rank"])
    assert "detection_encrypted" not in filters["none"]
    assert "fewer than 300" in result.markdown and "chance" in result.markdown
    # The control: uniform noise given the same identities, ranked like the ciphertexts.
    assert filters["none"]["observer_noise"]["queries"] == 3 and "noise (control)" in result.markdown
    # original | ciphertext | best filter | decrypted, 3 rows of 32-pixel images with 4-pixel gaps.
    assert result.pictures["contact-sheet"].size == (4 * 36 + 4, 3 * 36 + 4)
    # Without a gallery: the leak correlations and the sheet (with the classic blur), no observer.
    plain = report.privacy_report(pairs, get_spec("tiny-embedding"), torch.nn.Identity(), detect=False)
    assert plain.data["observer"] is None and plain.data["filters"]["none"] == {"description": "the image as it is"}
    assert plain.data["per_image"]["best_filter"] == ["blur3-grey"] * 3 and "Filters a person" not in plain.markdown
    assert plain.pictures["contact-sheet"].size == (4 * 36 + 4, 3 * 36 + 4)


def _encrypted_people(tmp_path: Path, key: Path, photos: int, iterations: int) -> tuple[Path, Path]:
    """Two LFW-style identities of `photos` photos each, and the folder `avp encrypt` made of them."""
    people = tmp_path / "people"
    for person in ("Ann_Lee", "Bo_Chan"):
        _pictures(people / person, [f"{person}_{i:04d}.png" for i in range(1, photos + 1)], seed=len(person))
    encrypted = tmp_path / "encrypted"
    _run("encrypt", str(people), "--target", "tiny-embedding", "--key", str(key), "--out", str(encrypted),
         "--iterations", str(iterations), "--device", "cpu", "--seed", "1")
    return people, encrypted


def test_privacy_and_key_recovery_end_to_end_on_tiny_embedding(tmp_path, tiny_key_file):
    people, encrypted = _encrypted_people(tmp_path, tiny_key_file, photos=3, iterations=2)
    common = ["--target", "tiny-embedding", "--key", str(tiny_key_file), "--device", "cpu"]

    privacy = tmp_path / "privacy"
    printed = _run("evaluate", "privacy", str(people), str(encrypted), *common, "--gallery", str(people),
                   "--observer", "tiny-classifier", "--max-images", "5", "--out", str(privacy))
    assert printed.strip() == str(privacy / "privacy.md")
    data = json.loads((privacy / "privacy.json").read_text())
    assert data["images"] == 5 and data["observer"]["identities"] == 2 and data["observer"]["gallery_images"] == 6
    # Every original's identity has two other photos in the gallery: all are ranked, among 2 identities.
    assert data["filters"]["none"]["observer_original"]["queries"] == 5
    assert 0.0 <= data["filters"]["blur3-grey"]["detection_encrypted"] <= 1.0
    assert 0.0 <= data["filters"]["blur3-grey"]["detection_noise"] <= 1.0
    assert data["per_image"]["identities"] == ["Ann_Lee"] * 3 + ["Bo_Chan"] * 2
    assert (privacy / "privacy-contact-sheet.png").is_file()

    recovery = tmp_path / "recovery"
    _run("evaluate", "key-recovery", str(people), str(encrypted), *common, "--pairs", "1,3", "--held-out", "2",
         "--out", str(recovery))
    recovered = json.loads((recovery / "key-recovery.json").read_text())
    curve = recovered["curve"]
    # Keys are made with one scramble per image: the report says what "recovered" is measured against.
    assert recovered["scramble_per_image"] is True
    assert "scrambles every image with its own plan" in (recovery / "key-recovery.md").read_text()
    # The correlation rule needs 3 pairs: it has no point at 1.
    assert [(point["pairs"], point["rule"]) for point in curve] == [(1, "distance"), (3, "correlation"),
                                                                   (3, "distance")]
    assert all(0.0 <= point["recovered"] <= point["source"] <= 1.0 for point in curve)


def test_an_analysis_is_one_call_that_tells_its_stages_and_warnings_and_writes_nothing(tmp_path, tiny_key_file):
    people, encrypted = _encrypted_people(tmp_path, tiny_key_file, photos=2, iterations=1)
    before = sorted(tmp_path.rglob("*"))
    events = []
    result = report.privacy_evaluation(people, encrypted, "tiny-embedding", tiny_key_file, gallery=people,
                                       observer="tiny-classifier", detect=False, device="cpu", on_event=events.append)
    assert isinstance(result, report.Report) and result.data["observer"]["gallery_images"] == 4
    assert [event.kind for event in events] == ["stage"] + ["progress"] * 4 + ["warning"]
    assert events[0].source == "gallery for tiny-classifier" and "fewer than 300" in events[-1].reason
    assert sorted(tmp_path.rglob("*")) == before  # the caller writes the report


@pytest.mark.parametrize(("arguments", "message"), [
    (["key-recovery", "--pairs", "10"], "cannot give 10 to the attacker"),
    (["key-recovery", "--pairs", "0,2"], "--pairs takes pair counts"),
    (["key-recovery", "--rules", "guess"], "--rules takes"),
    (["privacy", "--observer", "tiny-embedding", "--gallery", "."], "another model than --target"),
])
def test_privacy_and_key_recovery_usage_errors_are_one_line(tmp_path, tiny_key_file, arguments, message):
    people = tmp_path / "people"
    _pictures(people / "Ann", [f"Ann_{i:04d}.png" for i in range(1, 4)], seed=3)
    _run("encrypt", str(people), "--target", "tiny-embedding", "--key", str(tiny_key_file), "--out",
         str(tmp_path / "encrypted"), "--iterations", "1", "--device", "cpu", "--seed", "1")
    command, *options = arguments
    result = CliRunner().invoke(app, ["evaluate", command, str(people), str(tmp_path / "encrypted"), "--target",
                                      "tiny-embedding", "--key", str(tiny_key_file), "--device", "cpu",
                                      "--out", str(tmp_path / "r"), *options])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and result.stdout == ""


def test_observer_transform_fitted_on_lfw_photos_lines_a_dlib_chip_up_with_an_arcface_chip(data_root):
    from avpcli.metrics import ssim

    photos = [data_root / "lfw" / name / f"{name}_0001.jpg" for name in ("Adrien_Brody", "Al_Sharpton", "Alan_Greenspan")]
    dlib, arcface = get_spec("dlib"), get_spec("mobilefacenet-foamliu")
    matrix, fitted = report.fit_observer_transform(photos, dlib, arcface)
    assert fitted == 3
    chips = torch.stack([report.prepare_original(photo, dlib)[0] for photo in photos])
    direct = torch.stack([report.prepare_original(photo, arcface)[0] for photo in photos])
    moved = report.warp_chips(chips, matrix, arcface.input_size)
    # The same face, resampled once more: close to the chip cut from the photo, far from another face's.
    assert ssim(moved, direct).min() > 0.6
    assert ssim(moved, direct.roll(1, dims=0)).max() < 0.4


def test_pairs_split_into_the_attackers_and_the_held_out():
    from avpcli.errors import UsageError
    from avpcli.report import PairedImages

    images = torch.rand(6, 3, 4, 4)
    pairs = PairedImages([f"p{i}" for i in range(6)], images, images.flip(0), [f"s{i}" for i in range(6)])
    training, testing = pairs.split(held_out=2)
    assert training.names == ["p0", "p1", "p2", "p3"] and testing.names == ["p4", "p5"]
    training, testing = pairs.split(held_out=2, training=3)
    assert training.names == ["p0", "p1", "p2"] and testing.names == ["p4", "p5"]
    training, testing = pairs.split(held_out=None, training=4)
    assert training.names == ["p0", "p1", "p2", "p3"] and testing.names == ["p4", "p5"]
    assert torch.equal(testing.encrypted, images.flip(0)[4:])
    for held_out, count in ((0, None), (6, None), (2, 5), (None, 6), (2, 0)):
        with pytest.raises(UsageError):
            pairs.split(held_out, count)


def test_the_attack_report_scores_a_guess_that_ignores_the_ciphertext(tiny_key_file):
    from avpcli.key import load_key
    from avpcli.report import PairedImages, attack_report

    face = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(3)).expand(4, 3, 32, 32).clone()
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    pairs = PairedImages([f"p{i}" for i in range(4)], face, noise)
    result = attack_report(pairs.subset([0, 1]), pairs.subset([2, 3]), pairs.subset([2]),
                           load_key(tiny_key_file).model, steps=1)
    # Every original is the same face: their mean is that face, and the guess scores SSIM 1.
    guessed = result.data["mean_original_guess"]
    assert list(guessed["held_out"].values()) == pytest.approx([1.0, 1.0], abs=1e-5)
    assert "no ciphertext" in result.markdown and len(guessed["other_key"]) == 1
