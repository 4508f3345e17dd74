"""`avp evaluate`'s analyses, each one call: folders, key files and model names in, a Report out.

Each function builds what it needs as `avp encrypt` would (the Encryptor, keys, targets, the pairs
read back from an encrypted folder), runs one report builder and returns its Report, which the
caller writes (Report.write). Nothing prints. A call that runs long tells `on_event` as it goes:
Event "stage" when a stage begins (source: what it does, e.g. "encrypting with key B"; total: its
steps, 0 where not known yet), then that stage's "progress" and its files' events ("written",
"failed", ...); Event "warning" (reason) for what the user should know about the figures.

`**encryption` is what Encryptor takes besides the target and the key (recipe, weights, device,
precision, iterations, ...): how the images that an analysis encrypts are encrypted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from avpcli import evaluate
from avpcli.encryptor import Encryptor
from avpcli.engine import resolve_device
from avpcli.errors import ImageError, UsageError
from avpcli.events import Event, EventCallback, ignore_events
from avpcli.images import contained_path
from avpcli.key import load_key
from avpcli.report.datasets import split_identities
from avpcli.report.leaks import privacy_report, statistics_report
from avpcli.report.observer import default_observer, make_observer
from avpcli.report.pairs import PairedImages, encrypt_selection, read_pairs, save_originals
from avpcli.report.protocol import classification_report, identification_report, quality_report
from avpcli.report.render import Report
from avpcli.report.security import attack_report, cross_key_report, key_recovery_report
from avpcli.targets import get_spec, load_target


def _device_and_pairs(originals: Path, encrypted: Path, target: str, device: str) -> tuple[str, PairedImages]:
    """The resolved device and the (original, ciphertext) pairs of an encrypted folder."""
    resolved = resolve_device(device)
    return resolved, read_pairs(originals, encrypted, get_spec(target), resolved)


def quality_evaluation(originals: Path, encrypted: Path, target: str, key: Path, *, weights: Path | None = None,
                       wrong_key: Path | None = None, device: str = "auto") -> Report:
    """Table 1 for an encrypted folder (quality_report); `wrong_key` adds its decryptions to the contact sheet."""
    resolved, pairs = _device_and_pairs(originals, encrypted, target, device)
    other = load_key(wrong_key, device=resolved).model if wrong_key else None
    target_model = load_target(target, weights).to(resolved)
    return quality_report(pairs, target_model, target_model.spec, load_key(key, device=resolved).model, other)


def identification_evaluation(identities: Path, target: str, key: Path, work: Path, *, min_images: int = 12,
                              turns: int | None = None, encrypt_gallery: bool = True, gallery_size: int | None = None,
                              on_event: EventCallback = ignore_events, **encryption: Any) -> Report:
    """Table 2 on a folder of identities (split_identities, then identification_report), encrypting under
    `work`; `gallery_size` keeps the first N gallery images (sorted by identity and file)."""
    probes, gallery = split_identities(identities, min_images)
    if gallery_size is not None:
        if gallery_size < 1:
            raise UsageError("--gallery must be at least 1")
        gallery = gallery[:gallery_size]
    encryptor = Encryptor(target, key, **encryption)
    on_event(Event("stage", source=f"encrypting for {target}"))
    return identification_report(probes, gallery, encryptor, work, turns, encrypt_gallery, on_event)


def classification_evaluation(dataset: Path, target: str, key: Path, work: Path, *, per_class: int | None = None,
                              on_event: EventCallback = ignore_events, **encryption: Any) -> Report:
    """Table 4 on a class-per-folder data set (classification_report), encrypting under `work`."""
    encryptor = Encryptor(target, key, **encryption)
    on_event(Event("stage", source=f"encrypting for {target}"))
    return classification_report(dataset, encryptor, work, per_class, on_event)


def cross_key_evaluation(originals: Path, encrypted: Path, target: str, key: Path, other_keys: Sequence[Path], *,
                         device: str = "auto") -> Report:
    """Fig. 5 for an encrypted folder: decryptions with keys of other seeds (named by file stem) beside the
    right key's."""
    resolved, pairs = _device_and_pairs(originals, encrypted, target, device)
    others = {path.stem: load_key(path, device=resolved).model for path in other_keys}
    return cross_key_report(pairs, load_key(key, device=resolved).model, others)


def attack_evaluation(originals: Path, encrypted: Path, target: str, key: Path, other_key: Path, work: Path, *,
                      held_out: int = 2, training: int | None = None, steps: int = 200,
                      on_event: EventCallback = ignore_events, **encryption: Any) -> Report:
    """Fig. 6: an attacker trained on the folder's key-A pairs, tried on held-out key-A pairs and on the
    held-out originals encrypted again with key B (`other_key`).

    The last `held_out` pairs are held out, the attacker trains on the first `training` of the rest
    (None: all); the held-out originals go to work/held-out-aligned, key B's ciphertexts to work/key-b.
    """
    encryptor_b = Encryptor(target, other_key, **encryption)
    pairs = read_pairs(originals, encrypted, encryptor_b.spec, encryptor_b.device)
    training_pairs, testing = pairs.split(held_out, training)
    files = save_originals(testing, work / "held-out-aligned")
    on_event(Event("stage", source="encrypting with key B"))
    other_pairs = encrypt_selection(files, work / "key-b", encryptor_b, on_event)
    on_event(Event("stage", source="training the attacker", total=steps))
    key_a = load_key(key, device=encryptor_b.device).model
    return attack_report(training_pairs, testing, other_pairs, key_a, steps=steps,
                         progress=lambda step, total: on_event(Event("progress", done=step, total=total)))


def privacy_evaluation(originals: Path, encrypted: Path, target: str, key: Path, *, gallery: Path | None = None,
                       observer: str | None = None, observer_weights: Path | None = None,
                       max_images: int | None = None, detect: bool = True, device: str = "auto",
                       on_event: EventCallback = ignore_events) -> Report:
    """What filters, MTCNN (`detect`) and an observer get out of the first `max_images` ciphertexts of a
    folder (privacy_report). With a `gallery` (one sub-folder per identity), the observer (default:
    default_observer) is fitted on the originals' own photos and ranks every filtered ciphertext
    there (make_observer); without one, no observer."""
    if max_images is not None and max_images < 1:
        raise UsageError("--max-images must be at least 1")
    resolved, pairs = _device_and_pairs(originals, encrypted, target, device)
    if max_images is not None:
        pairs = pairs.subset(range(min(max_images, len(pairs.names))))
    spec = get_spec(target)
    watcher = None
    if gallery is not None:
        observer = observer or default_observer(target)
        if observer == target:
            raise UsageError("--observer must be another model than --target")
        photos = []
        for source in pairs.sources:
            try:
                photos.append(contained_path(originals, source, follow_links=True))
            except ImageError:  # a name no file of the originals' folder can have: not fitted on
                continue
        watcher = make_observer(observer, gallery, spec, photos, observer_weights, resolved, on_event)
    return privacy_report(pairs, spec, load_key(key, device=resolved).model, watcher, detect, resolved)


def key_recovery_evaluation(originals: Path, encrypted: Path, target: str, key: Path, pair_counts: Sequence[int], *,
                            held_out: int | None = None, rules: Sequence[str] = evaluate.RECOVERY_RULES,
                            device: str = "auto") -> Report:
    """The key-recovery curve for an encrypted folder: the attacker holds the first max(pair_counts) pairs,
    the last `held_out` (None: all the others) are held out (key_recovery_report)."""
    resolved, pairs = _device_and_pairs(originals, encrypted, target, device)
    training, testing = pairs.split(held_out, max(pair_counts))
    return key_recovery_report(training, testing, load_key(key, device=resolved).model, pair_counts, rules)


def statistics_evaluation(originals: Path, encrypted: Path, target: str, *, pairs_per_image: int = 3000,
                          detect: bool = True, device: str = "auto") -> Report:
    """Appendix A.1 for an encrypted folder (statistics_report)."""
    resolved, pairs = _device_and_pairs(originals, encrypted, target, device)
    return statistics_report(pairs, pairs_per_image, detect, resolved)
