"""Regenerate docs/RESULTS.md: the paper's tables and security analyses measured with avp on shared data.

Faces: LFW from <data>/lfw.csv — the 12 `probe` identities (13–60 images each) are the probe set, the
first --gallery `distractor` images are the gallery (one size for every target, or `dlib=1000,mobilefacenet=300`). The first --turns images of each probe identity
take turns as the (encrypted) inserted image; AVP-ALL encrypts the gallery too. Table 1, the
statistics, the keys of other seeds and the attack all use those same ciphertexts: the attacker trains
on the first N of the gallery's (ciphertext, original) pairs for each N of --attack-pairs, and is tested
on the probe-turn ciphertexts (key A) and on --attack-other of them encrypted again with key B.
CIFAR-10: --cifar-per-class test images per class, with --cifar-key (a `small`-preset key) or key A.

Everything is resumable: ciphertexts and keys live under --work and a rerun reuses them.

Run: python -m benchmarks.results [--key PATH] [--other-key PATH] [--faces-targets dlib,mobilefacenet]
     [--turns 1] [--gallery 20 | dlib=1000,mobilefacenet=300] [--iterations 300] [--attack-pairs 20,200]
     [--cifar-per-class 2] [--cifar-key PATH] [--data PATH]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from avpcli import Encryptor, KEY_PRESETS, load_key, report
from avpcli.images import save_png
from benchmarks.common import (FACE_WEIGHTS, REPO, add_settings_options, cached_key, data_folder, events, lfw_split,
                               log, settings_overrides, write_generated_doc)

DOC = REPO / "docs" / "RESULTS.md"
PICTURES = REPO / "docs" / "results"
CIFAR_TARGET, CIFAR_WEIGHTS = "cifar-resnet20", "weights/cifar10_resnet_akamaster/resnet20-12fca82f.th"

PAPER_TABLE_1 = "AdaFace 0.028 / 0.893 / cos 0.997; ArcFace 0.030 / 0.903 / 0.994; CosFace 0.028 / 0.899 / 0.998; SphereFace 0.029 / 0.906 / 0.996"
PAPER_TABLE_2 = "AdaFace 98.6 / 98.6 / 98.6; ArcFace 96.5 / 96.5 / 96.5; CosFace 89.4 / 89.2 / 89.3; SphereFace 80.3 / 80.0 / 80.6"
PAPER_TABLE_4 = "VGG19 93.95 → 93.95; ResNet50 95.53 → 95.28 (SSIM_e 0.17–0.20, SSIM_d 0.90–0.92, METHOD.md §3)"


HAND_WRITTEN = "<!-- hand-written below: kept by benchmarks/results.py -->"
NOTES = """## How to read these numbers, and what is not measured here

- Correlation is Pearson's r of BT.601 grey levels of 3,000 random adjacent pixel pairs per image,
  averaged over images; a constant image has no defined correlation and is counted as "undefined",
  never as 0. Histogram entropy is in bits (8 = flat).
- The detection rate is MTCNN (facenet-pytorch, avp's aligner) on the 150×150 aligned chips, original
  and encrypted; a chip is "detected" when MTCNN returns any face.
- The paired-data attacker is a generator of the key's architecture trained with L1 on the
  gallery's (ciphertext, original) pairs; it knows neither the seed nor the scramble. A
  method-aware attacker who estimates the scramble from pairs does far better (docs/PRIVACY.md,
  `avp evaluate key-recovery`), and published attacks on AVIH (arXiv 2408.04261, 2407.06570)
  reconstruct ciphertexts too: avp is obfuscation against people, not cryptography.
- The low-pass correlation is Pearson's r of the Gaussian-blurred (σ 3 px) brightness of x' and x: the
  contact sheets' third column shows that blur, contrast-stretched. docs/PRIVACY.md measures the
  band-pass, the edges, the colour, a filter suite and a second recognizer too.
- Not run here: the paper's four face models (no weights in shared data besides dlib and the
  MobileFaceNets: add `--face-targets dlib,mobilefacenet`), ResNet-50 / VGG-19 on CIFAR-10 (no
  weights: cifar-resnet20 stands in), the full LFW protocol (every turn, 12,878 gallery images) and
  16-key cross-decryption. Each needs hours of CPU or a GPU; the script scales with its options.
"""


def data_root(given: str | None) -> Path:
    root = Path(given) if given else data_folder()
    if not (root / "lfw.csv").is_file():
        sys.exit(f"shared data not found at {root} (give --data or set AVP_DATA)")
    return root


def key_file(given: str | None, work: Path, name: str, steps: int | None) -> tuple[Path, str]:
    """A given key, or one trained once (default preset, fresh secret seed) and kept under --work."""
    if given:
        return Path(given), f"given ({Path(given).name})"
    path = work / f"{name}.safetensors"
    trained = cached_key(path, "default", steps=steps, before_training=lambda: log(
        f"training {name} (default preset, {steps or KEY_PRESETS['default'].steps} steps)"))
    if trained is not None:
        log(f"{name} trained in {trained.seconds:.0f} s")
    metadata = load_key(path).metadata
    return path, f"trained here: preset {metadata['preset']}, {metadata['steps']} steps, procedural data"


def gallery_size_by_target(given: str, targets: list[str]) -> dict[str, int]:
    """--gallery as a size per face target: 'N' for all, or 'name=N,name=N' (every target named)."""
    if "=" not in given:
        return {name: int(given) for name in targets}
    sizes = {name.strip(): int(size) for name, size in (part.split("=") for part in given.split(","))}
    missing = [name for name in targets if name not in sizes]
    if missing:
        sys.exit(f"--gallery names no size for {', '.join(missing)}")
    return {name: sizes[name] for name in targets}


def picture_links(written: Path, name: str) -> list[str]:
    """Copy a report's PNGs into docs/results/<name>-… and return markdown image links."""
    PICTURES.mkdir(parents=True, exist_ok=True)
    links = []
    for png in sorted(written.parent.glob(f"{written.stem}-*.png")):
        target = PICTURES / f"{name}-{png.name}"
        shutil.copyfile(png, target)
        links.append(f"![{target.stem}](results/{target.name})")
    return links


def encryptor_for(target: str, key, weights: Path | None, **overrides) -> Encryptor:
    """The Encryptor of these results: the CPU in fp32, batches of 8 (docs/RESULTS.md was made so, and a
    rerun resumes the ciphertexts under --work only with the same settings)."""
    return Encryptor(target, key, weights=weights, device="cpu", precision="fp32", batch_size=8, **overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "avp" / "results-work"))
    parser.add_argument("--key", help="key A (default: train one under --work)")
    parser.add_argument("--other-key", help="key B, another seed (default: train one under --work)")
    parser.add_argument("--key-steps", type=int, help="training steps for keys trained here (default: the preset's)")
    parser.add_argument("--face-targets", default="dlib", help="comma-separated: dlib, mobilefacenet")
    parser.add_argument("--turns", type=int, default=1, help="encrypted inserted-image turns per probe identity")
    parser.add_argument("--gallery", default="20",
                        help="distractor images in the gallery: N for every target, or name=N,name=N")
    # --iterations for every target, --key-weight (μ) for the faces; μ defaults to the face targets' recipe.
    add_settings_options(parser, only=["iterations", "key_weight"], defaults={"iterations": 300})
    parser.add_argument("--attack-other", type=int, default=4, help="probe-turn images encrypted again with key B")
    parser.add_argument("--attack-steps", type=int, default=300)
    parser.add_argument("--attack-pairs", default="20", help="comma-separated training pair counts of the attacker")
    parser.add_argument("--cifar-key", help="key for CIFAR-10 (a `small`-preset key; default: key A)")
    parser.add_argument("--cifar-per-class", type=int, default=2, help="0 skips CIFAR-10")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("AVP_THREADS", "2")))

    started = time.perf_counter()
    data, work = data_root(args.data), Path(args.work)
    key_a, key_a_note = key_file(args.key, work, "key-a", args.key_steps)
    loaded_a = load_key(key_a)
    face_targets = [name.strip() for name in args.face_targets.split(",")]
    gallery_sizes = gallery_size_by_target(args.gallery, face_targets)
    sections: list[str] = []
    timings: list[str] = []

    for index, target_name in enumerate(face_targets):
        probes, gallery = lfw_split(data, gallery_sizes[target_name])
        weights = FACE_WEIGHTS[target_name] and data / FACE_WEIGHTS[target_name]
        encryptor = encryptor_for(target_name, loaded_a, weights, **settings_overrides(args))
        spec, target, settings = encryptor.spec, encryptor.target, encryptor.settings
        if index == 0:
            key_weight = settings.key_weight  # the faces' μ, for the header
        folder = work / target_name
        began = time.perf_counter()
        identification = report.identification_report(probes, gallery, encryptor, folder / "identification",
                                                       args.turns, on_event=events(target_name))
        written = identification.write(folder / "reports")
        seconds = time.perf_counter() - began
        timings.append(f"{target_name} identification (alignment, encryption of {len(gallery)} gallery and "
                       f"{args.turns} turn(s) per probe identity, features): {seconds:.0f} s")
        sections.append(f"## {target_name}: Table 2, identification, gallery of {len(gallery)} distractors\n\n"
                        + identification.markdown.split("\n", 2)[2]
                        + f"\nPaper (Original / AVP-ONE / AVP-ALL, full LFW): {PAPER_TABLE_2}.\n")
        if index == 0:
            # Key B is needed only from here on (it may still be training elsewhere when a run starts).
            key_b, key_b_note = key_file(args.other_key, work, "key-b", args.key_steps)
            loaded_b = load_key(key_b)
        pairs = report.read_pairs(folder / "identification" / "selection", folder / "identification" / "encrypted",
                                  spec, aligned=folder / "identification" / "aligned")
        quality = report.quality_report(pairs, target, spec, encryptor.key, loaded_b.model, sheet_rows=4)
        written = quality.write(folder / "reports")
        summary = quality.data["summary"]
        met = sum(1 for e, d, f in zip(quality.data["per_image"]["ssim_encrypted"],
                                       quality.data["per_image"]["ssim_decrypted"],
                                       quality.data["per_image"]["feature_distance"])
                  if settings.stop.accepts(f, e, d))
        sections.append(
            f"## {target_name}: Table 1, quality of {len(pairs.names)} ciphertexts (read back from PNG)\n\n"
            + report.markdown_table(["metric", "mean", "worst"], [
                ["SSIM_e ↓", summary["ssim_encrypted"]["mean"], summary["ssim_encrypted"]["max"]],
                ["SSIM_d ↑", summary["ssim_decrypted"]["mean"], summary["ssim_decrypted"]["min"]],
                ["feature distance ↓" + (f" (same person < {spec.match_threshold})" if spec.match_threshold else ""),
                 summary["feature_distance"]["mean"], summary["feature_distance"]["max"]],
                ["cosine ↑", summary["cosine"]["mean"], summary["cosine"]["min"]],
                ["low-pass correlation (x', x), absolute ↓", summary["lowpass_correlation_abs"]["mean"],
                 summary["lowpass_correlation_abs"]["max"]]])
            + f"\n{met} of {len(pairs.names)} meet every engine bar (SSIM_e ≤ {settings.stop.max_ssim_encrypted}, "
              f"SSIM_d ≥ {settings.stop.min_ssim_decrypted}, distance ≤ {settings.stop.max_feature_distance})."
            + f"\nPaper (SSIM_e / SSIM_d / cos): {PAPER_TABLE_1}.\n\n"
            + "Original | encrypted | encrypted, blurred (σ 3 px) and contrast-stretched | decrypted | decrypted "
              "with key B:\n\n" + "\n".join(picture_links(written, target_name)) + "\n")
        if index > 0:
            continue

        # Security analyses on the first face target's ciphertexts.
        cross = report.cross_key_report(pairs, encryptor.key, {"key B (other seed)": loaded_b.model},
                                        sheet_rows=4)
        written = cross.write(folder / "reports")
        # Its contact sheet is Table 1's (original | encrypted | key A | key B): not repeated.
        sections.append(f"## {target_name}: keys of other seeds (Fig. 5)\n\n"
                        + cross.markdown.split("\n", 2)[2].split("\nContact sheet")[0]
                        + "\nThe contact sheet under Table 1 shows key B's decryptions in its last column.\n")

        gallery_rows = [i for i, source in enumerate(pairs.sources) if source.startswith("gallery/")]
        probe_rows = [i for i, source in enumerate(pairs.sources) if source.startswith("probe/")]
        training, held_out = pairs.subset(gallery_rows), pairs.subset(probe_rows)
        chosen = held_out.subset(range(min(args.attack_other, len(held_out.names))))
        files = {}
        for name, image in zip(chosen.names, chosen.originals):
            path = folder / "attack" / "held-out-aligned" / name
            save_png(image, path)
            files[name] = path
        began = time.perf_counter()
        encryptor_b = encryptor_for(target_name, loaded_b, weights, **settings_overrides(args))
        other_pairs = report.encrypt_selection(files, folder / "attack" / "key-b", encryptor_b, events("key B"))
        for count in (int(value) for value in args.attack_pairs.split(",")):
            if count > len(training.names):
                log(f"attack: only {len(training.names)} gallery pairs, not {count}; skipped")
                continue
            attack = report.attack_report(training.subset(range(count)), held_out, other_pairs, encryptor.key,
                                          steps=args.attack_steps)
            written = attack.write(folder / "reports" / f"attack-{count}")
            sections.append(f"## {target_name}: paired-data attack (Fig. 6), {count} pairs\n\n"
                            + attack.markdown.split("\n", 2)[2] + "\n"
                            + "\n".join(picture_links(written, f"{target_name}-{count}-pairs")) + "\n")
        timings.append(f"attack (key-B encryption + attacker training): {time.perf_counter() - began:.0f} s")

        statistics = report.statistics_report(pairs)
        written = statistics.write(folder / "reports")
        sections.append(f"## {target_name}: statistics (appendix A.1) and face detection\n\n"
                        + statistics.markdown.split("\n", 2)[2] + "\n" + "\n".join(picture_links(written, target_name)) + "\n")

    if args.cifar_per_class > 0:
        cifar_key = load_key(args.cifar_key) if args.cifar_key else loaded_a
        encryptor = encryptor_for(CIFAR_TARGET, cifar_key, data / CIFAR_WEIGHTS, iterations=args.iterations)
        began = time.perf_counter()
        classification = report.classification_report(data / "cifar10", encryptor, work / CIFAR_TARGET,
                                                       args.cifar_per_class, events(CIFAR_TARGET))
        written = classification.write(work / CIFAR_TARGET / "reports")
        timings.append(f"{CIFAR_TARGET} classification: {time.perf_counter() - began:.0f} s")
        sections.append(f"## {CIFAR_TARGET}: Table 4/5, CIFAR-10 classification\n\n"
                        + classification.markdown.split("\n", 2)[2]
                        + f"\nPaper (original → encrypted top-1 %): {PAPER_TABLE_4}.\n\n"
                        + "\n".join(picture_links(written, CIFAR_TARGET)) + "\n")

    command = "python -m benchmarks.results " + " ".join(sys.argv[1:])
    header = f"""# Results: the paper's tables measured with avp

Generated by `{command.strip()}` on {time.strftime('%Y-%m-%d')} (CPU, {torch.get_num_threads()} threads,
{time.perf_counter() - started:.0f} s in all, on a machine shared with other jobs). Every figure is
measured on the 8-bit PNGs as written and read back.

Sizes (CPU time): probe set = LFW's 12 probe identities (all their images are queries),
{args.turns} encrypted turn(s) per probe identity, a gallery of the first
{', '.join(f'{size} ({name})' for name, size in gallery_sizes.items())} distractor images (the paper:
355 probe images, 12,878 gallery images, every turn). Encryption: at most {args.iterations}
iterations per image, μ = {key_weight}, other settings `avp encrypt`'s defaults for faces
(`FACE_SETTINGS`: the key's preimage as start, an SSIM term, the leak term, momentum 0.9, the
start-side term and bar: features stop past the original's, not short of it on the start's side;
docs/BENCHMARKS.md) and `CLASSIFIER_SETTINGS` for CIFAR-10.

Keys: A — {key_a_note}; B — {key_b_note}; CIFAR-10 — {f"given ({Path(args.cifar_key).name})" if args.cifar_key else "key A"}. Default-preset keys are much smaller (ngf
{loaded_a.metadata.get('ngf')}, {loaded_a.metadata.get('blocks')} blocks) than the paper's (ngf 64, 9 blocks,
CelebA), which bounds SSIM_d.

Timings: {'; '.join(timings)}.

"""
    # Observations written by hand after a run survive a rerun (they may then need revisiting).
    write_generated_doc(DOC, header + "\n".join(sections) + "\n" + NOTES, HAND_WRITTEN)
    log(f"wrote {DOC}")
    print(DOC)


if __name__ == "__main__":
    main()
