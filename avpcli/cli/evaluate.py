"""`avp evaluate`: the paper's protocol and security analyses, each one call to avpcli.report whose
Report is written into --out and whose markdown's path is printed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from avpcli.cli.options import PrecisionOption
from avpcli.cli.output import StagePrinter, domain_errors, echo_path
from avpcli.errors import UsageError

evaluate_app = typer.Typer(
    help="The paper's protocol and security analyses; each writes JSON, a markdown table and PNGs into "
         "a report folder and prints the markdown report's path.",
    no_args_is_help=True,
)

TargetOption = Annotated[str, typer.Option(help="Target model name (see `avp targets`).")]
KeyOption = Annotated[Path, typer.Option(help="Key file the images are (or will be) encrypted with.")]
WeightsOption = Annotated[Optional[Path], typer.Option(help="The target's weights file, where it needs one.")]
ReportOption = Annotated[Path, typer.Option("--out", help="Report folder.")]
DeviceOption = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
IterationsOption = Annotated[Optional[int], typer.Option(help="Most optimization steps per image (default: avp encrypt's, 800; most images stop far sooner).")]
WorkOption = Annotated[Optional[Path], typer.Option(
    help="Where the selection, its ciphertexts and aligned originals go (default: --out); ciphertexts "
         "already there are reused.")]
RecipeOption = Annotated[str, typer.Option(help="How the images are encrypted: 'tuned' or 'research' (see `avp encrypt --recipe`).")]
OriginalsArgument = Annotated[Path, typer.Argument(help="The folder that was encrypted, or its aligned originals.")]
EncryptedArgument = Annotated[Path, typer.Argument(help="The folder `avp encrypt` wrote (with its manifest).")]


def _write(report, out: Path) -> None:
    """Write the report into the report folder and print its markdown's path."""
    echo_path(report.write(out))


@evaluate_app.command("quality")
def evaluate_quality(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    weights: WeightsOption = None,
    wrong_key: Annotated[Optional[Path], typer.Option(help="Another key, for the contact sheet's last column.")] = None,
    device: DeviceOption = "auto",
) -> None:
    """Table 1: SSIM_e, SSIM_d and feature match per image and summarized, plus a contact sheet."""
    from avpcli.report import quality_evaluation

    with domain_errors():
        report = quality_evaluation(originals, encrypted, target, key, weights=weights, wrong_key=wrong_key,
                                    device=device)
        _write(report, out)


@evaluate_app.command("identification")
def evaluate_identification(
    identities: Annotated[Path, typer.Argument(help="One sub-folder of images per person (LFW layout).")],
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    weights: WeightsOption = None,
    min_images: Annotated[int, typer.Option(help="Probe identities have more than this many images (paper: 12).")] = 12,
    turns: Annotated[Optional[int], typer.Option(help="Encrypted turns per probe identity (default: every image).")] = None,
    gallery_plain: Annotated[bool, typer.Option("--gallery-plain", help="Skip AVP-ALL (do not encrypt the gallery).")] = False,
    gallery_size: Annotated[Optional[int], typer.Option("--gallery", help="Use only the first N gallery images (sorted by identity and file) to save time; the report states N (default: all).")] = None,
    iterations: IterationsOption = None,
    recipe: RecipeOption = "tuned",
    precision: PrecisionOption = "auto",
    work: WorkOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Table 2: identification accuracy for Original, AVP-ONE and AVP-ALL (paper §4.1); encrypts under --out."""
    from avpcli.report import identification_evaluation

    with domain_errors():
        with StagePrinter() as on_event:
            report = identification_evaluation(
                identities, target, key, work or out, min_images=min_images, turns=turns,
                encrypt_gallery=not gallery_plain, gallery_size=gallery_size, on_event=on_event,
                recipe=recipe, weights=weights, device=device, precision=precision, iterations=iterations)
        _write(report, out)


@evaluate_app.command("classification")
def evaluate_classification(
    dataset: Annotated[Path, typer.Argument(help="One sub-folder per class; labels follow the sorted folder names.")],
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    weights: WeightsOption = None,
    per_class: Annotated[Optional[int], typer.Option(help="Images per class (default: all).")] = None,
    iterations: IterationsOption = None,
    recipe: RecipeOption = "tuned",
    precision: PrecisionOption = "auto",
    work: WorkOption = None,
    device: DeviceOption = "auto",
) -> None:
    """Table 4: top-1 accuracy on originals vs ciphertexts; encrypts under --out (a rerun resumes)."""
    from avpcli.report import classification_evaluation

    with domain_errors():
        with StagePrinter() as on_event:
            report = classification_evaluation(
                dataset, target, key, work or out, per_class=per_class, on_event=on_event,
                recipe=recipe, weights=weights, device=device, precision=precision, iterations=iterations)
        _write(report, out)


@evaluate_app.command("cross-key")
def evaluate_cross_key(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    other_key: Annotated[list[Path], typer.Option(help="A key of another seed (repeat the option for more).")],
    out: ReportOption,
    device: DeviceOption = "auto",
) -> None:
    """Fig. 5: SSIM of decryptions with keys of other seeds beside the right key's."""
    from avpcli.report import cross_key_evaluation

    with domain_errors():
        _write(cross_key_evaluation(originals, encrypted, target, key, other_key, device=device), out)


@evaluate_app.command("attack")
def evaluate_attack(
    originals: Annotated[Path, typer.Argument(help="The folder that was encrypted with --key, or its aligned originals.")],
    encrypted: Annotated[Path, typer.Argument(help="Its ciphertexts (with manifest): the attacker's training pairs.")],
    *,
    target: TargetOption,
    key: KeyOption,
    other_key: Annotated[Path, typer.Option(help="Key B: the held-out originals are encrypted with it too.")],
    out: ReportOption,
    weights: WeightsOption = None,
    held_out: Annotated[int, typer.Option(help="Pairs kept out of training (the last ones in file order).")] = 2,
    pairs_count: Annotated[Optional[int], typer.Option("--pairs", help="Train on the first N of the other pairs (default: all of them).")] = None,
    steps: Annotated[int, typer.Option(help="Attacker training steps.")] = 200,
    iterations: IterationsOption = None,
    recipe: RecipeOption = "tuned",
    precision: PrecisionOption = "auto",
    device: DeviceOption = "auto",
) -> None:
    """Fig. 6: train a key-shaped generator on key-A pairs; SSIM on held-out key-A and on key-B ciphertexts."""
    from avpcli.report import attack_evaluation

    with domain_errors():
        with StagePrinter() as on_event:
            report = attack_evaluation(
                originals, encrypted, target, key, other_key, out, held_out=held_out, training=pairs_count,
                steps=steps, on_event=on_event,
                recipe=recipe, weights=weights, device=device, precision=precision, iterations=iterations)
        _write(report, out)


@evaluate_app.command("privacy")
def evaluate_privacy(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    gallery: Annotated[Optional[Path], typer.Option(help="Photos in one sub-folder per identity (LFW layout), at least 300 identities, including the originals' own (other) photos: the observer identifies every filtered ciphertext among them. Without it, no observer.")] = None,
    observer: Annotated[Optional[str], typer.Option(help="The second recognizer (default: mobilefacenet-foamliu when the target is dlib, else dlib).")] = None,
    observer_weights: Annotated[Optional[Path], typer.Option(help="The observer's weights file, where it needs one.")] = None,
    max_images: Annotated[Optional[int], typer.Option(help="Use only the first N ciphertexts (manifest order).")] = None,
    detect: Annotated[bool, typer.Option(help="Run MTCNN on every filtered ciphertext and original (detection rate).")] = True,
    device: DeviceOption = "auto",
) -> None:
    """What filters, a face detector and a second recognizer get out of ciphertexts, beside the leak correlations.

    An original's identity comes from its file name (LFW style Name_NNNN.jpg) or its folder's name."""
    from avpcli.report import privacy_evaluation

    with domain_errors():
        with StagePrinter() as on_event:
            report = privacy_evaluation(originals, encrypted, target, key, gallery=gallery, observer=observer,
                                        observer_weights=observer_weights, max_images=max_images, detect=detect,
                                        device=device, on_event=on_event)
        _write(report, out)


def _pair_counts(text: str) -> list[int]:
    """--pairs: distinct counts of at least 1, ascending."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UsageError(f"--pairs takes pair counts of at least 1 separated by ',', e.g. 1,2,5,10,20; got {text!r}")
    return sorted(set(counts))


@evaluate_app.command("key-recovery")
def evaluate_key_recovery(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    key: KeyOption,
    out: ReportOption,
    pairs_counts: Annotated[str, typer.Option("--pairs", help="How many (ciphertext, original) pairs the attacker holds, one curve point each: comma-separated counts.")] = "1,2,5,10,20",
    held_out: Annotated[Optional[int], typer.Option(help="Pairs kept out of the attacker's hands (the last ones in manifest order; default: all beyond the largest --pairs).")] = None,
    rules: Annotated[str, typer.Option(help="How the attacker matches values over the pairs: 'correlation', 'distance' or both, comma-separated.")] = "correlation,distance",
    device: DeviceOption = "auto",
) -> None:
    """A method-aware attacker recovers the key's scramble from N pairs: share recovered, held-out SSIM."""
    from avpcli.evaluate import RECOVERY_RULES
    from avpcli.report import key_recovery_evaluation

    with domain_errors():
        counts = _pair_counts(pairs_counts)
        chosen_rules = [rule.strip() for rule in rules.split(",") if rule.strip()]
        if not chosen_rules or any(rule not in RECOVERY_RULES for rule in chosen_rules):
            raise UsageError(f"--rules takes {' and/or '.join(RECOVERY_RULES)}, comma-separated; got {rules!r}")
        report = key_recovery_evaluation(originals, encrypted, target, key, counts, held_out=held_out,
                                         rules=chosen_rules, device=device)
        _write(report, out)


@evaluate_app.command("statistics")
def evaluate_statistics(
    originals: OriginalsArgument,
    encrypted: EncryptedArgument,
    *,
    target: TargetOption,
    out: ReportOption,
    pairs_per_image: Annotated[int, typer.Option("--pairs", help="Random adjacent pixel pairs per image.")] = 3000,
    detect: Annotated[bool, typer.Option(help="Run MTCNN on originals and ciphertexts (detection rate).")] = True,
    device: DeviceOption = "auto",
) -> None:
    """Appendix A.1: adjacent-pixel correlation, histograms, and how often MTCNN still finds a face."""
    from avpcli.report import statistics_evaluation

    with domain_errors():
        report = statistics_evaluation(originals, encrypted, target, pairs_per_image=pairs_per_image, detect=detect,
                                       device=device)
        _write(report, out)
