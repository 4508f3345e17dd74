"""Whole runs over folders: files → load/align → batches → engine → 8-bit PNGs + manifest.

This is the only place that joins image files, targets, keys and the engine. It does not print: it
reports what happens through an `on_event` callback that the CLI turns into stdout/stderr lines.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from avpcli.engine import AttackSettings, StopCriteria, decrypt_batch, encrypt_batch, measure_images
from avpcli.errors import AvpError, ImageError, NoFaceError, UsageError
from avpcli.images import (
    SourceImage,
    find_images,
    fit_to_size,
    is_inside,
    load_rgb,
    output_names,
    read_png,
    save_png,
    to_tensor,
)
from avpcli.manifest import MANIFEST_NAME, Manifest, read_manifest
from avpcli.targets import TargetSpec

AlignMode = Literal["auto", "never"]


@dataclass(frozen=True)
class Event:
    """Something a user may want to see: a file written ("written"), failed ("failed"),
    skipped because it was already done ("skipped"), or a step of progress ("progress")."""

    kind: str
    source: str = ""
    output: Path | None = None
    reason: str = ""
    done: int = 0
    total: int = 0


EventCallback = Callable[[Event], None]


@dataclass
class EncryptJob:
    """Everything `avp encrypt` needs, already resolved (modules loaded, paths checked)."""

    inputs: list[Path]
    output: Path
    spec: TargetSpec
    target: nn.Module
    key: nn.Module
    key_fingerprint: str
    settings: AttackSettings
    batch_size: int = 8
    device: str = "cpu"
    align: AlignMode = "auto"
    all_faces: bool = False
    noise_seed: int = 0
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    weights_label: str = ""
    # Where to also save each aligned original (what the target saw), for reports and the demo.
    # Off by default: these are plaintext faces.
    aligned_output: Path | None = None


@dataclass
class _Item:
    """One image ready for the engine: a face chip or a resized image, and its manifest entry."""

    tensor: torch.Tensor
    entry: dict[str, Any]
    noise_seed: int


def _noise_seed(run_seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{run_seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _settings_record(settings: AttackSettings) -> dict[str, Any]:
    record = asdict(settings)
    record["autocast_dtype"] = str(settings.autocast_dtype).replace("torch.", "") if settings.autocast_dtype else None
    return record


def check_output_folder(inputs: list[Path], output: Path) -> None:
    """Refuse an output folder that is, or lies inside, an input folder (outputs would become inputs)."""
    for given in inputs:
        if given.is_dir() and is_inside(output, given):
            raise UsageError(f"the output folder {output} is inside the input folder {given}; choose another --out")


def _prepare_faces(source: SourceImage, job: EncryptJob) -> list[tuple[torch.Tensor, str]]:
    """Load one file and cut it to the target's input: [(tensor, how it was aligned)]."""
    image = load_rgb(source.path)
    height, width = job.spec.input_size
    if image.size == (width, height):
        return [(to_tensor(image), "none (already at the target's input size)")]
    if job.spec.alignment is None or job.align == "never":
        return [(to_tensor(fit_to_size(image, job.spec.input_size)), "centre crop and resize")]
    from avpcli.align import align_faces  # MTCNN loads only when a photo needs it

    faces = align_faces(image, job.spec.alignment, all_faces=job.all_faces, device=job.device)
    return [(to_tensor(face.image), f"mtcnn to the {job.spec.alignment} template") for face in faces]


def _face_output_name(output: Path, face_index: int) -> Path:
    return output if face_index == 0 else output.with_name(f"{output.stem}_face{face_index + 1}{output.suffix}")


def encrypt_folder(job: EncryptJob, on_event: EventCallback = lambda event: None) -> Manifest:
    """Encrypt every image under job.inputs into job.output; returns the manifest it wrote.

    Files that fail are recorded with a reason and the run goes on. Outputs that already exist are
    kept (a rerun resumes) unless job.overwrite. The manifest is rewritten after every batch, so a
    killed run leaves a consistent one behind.
    """
    check_output_folder(job.inputs, job.output)
    sources = find_images(job.inputs)
    names = output_names(sources)
    index, count = job.shard
    sources = sources[index::count]
    manifest_name = _manifest_name(job.shard)

    previous = _previous_entries(job.output / manifest_name) if not job.overwrite else {}
    manifest = Manifest(
        kind="encrypted",
        target={"name": job.spec.name, "input_size": list(job.spec.input_size), "loss": job.spec.loss,
                "weights": job.weights_label},
        key_fingerprint=job.key_fingerprint,
        settings={**_settings_record(job.settings), "noise_seed": job.noise_seed,
                  "alignment": job.align, "all_faces": job.all_faces},
    )
    job.output.mkdir(parents=True, exist_ok=True)

    def pending_items() -> Iterator[_Item]:
        for position, source in enumerate(sources):
            name = names[source.relative]
            on_event(Event("progress", source=str(source.relative), done=position, total=len(sources)))
            done_entries = [entry for entry in previous.get(str(source.relative), []) if entry.get("status") == "ok"]
            if done_entries and all((job.output / entry["output"]).exists() for entry in done_entries):
                manifest.files.extend(done_entries)
                for entry in done_entries:
                    on_event(Event("skipped", source=str(source.relative), output=job.output / entry["output"]))
                continue
            try:
                faces = _prepare_faces(source, job)
            except NoFaceError as missing:
                manifest.files.append(_failure(source, name, "no_face", str(missing)))
                on_event(Event("failed", source=str(source.relative), reason=str(missing)))
                continue
            except ImageError as bad:
                manifest.files.append(_failure(source, name, "failed", str(bad)))
                on_event(Event("failed", source=str(source.relative), reason=str(bad)))
                continue
            for face_index, (tensor, alignment) in enumerate(faces):
                output = _face_output_name(name, face_index)
                entry = {"source": str(source.relative), "output": str(output), "status": "pending",
                         "alignment": alignment}
                if len(faces) > 1:
                    entry["face"] = face_index + 1
                yield _Item(tensor, entry, _noise_seed(job.noise_seed, str(output)))

    batch: list[_Item] = []
    for item in pending_items():
        batch.append(item)
        if len(batch) == job.batch_size:
            _encrypt_and_write(batch, job, manifest, on_event)
            batch = []
    if batch:
        _encrypt_and_write(batch, job, manifest, on_event)
    on_event(Event("progress", done=len(sources), total=len(sources)))
    manifest.write(job.output, manifest_name)
    return manifest


def _failure(source: SourceImage, name: Path, status: str, reason: str) -> dict[str, Any]:
    return {"source": str(source.relative), "output": None, "status": status, "reason": reason}


def _previous_entries(manifest_path: Path) -> dict[str, list[dict[str, Any]]]:
    if not manifest_path.exists():
        return {}
    try:
        files = read_manifest(manifest_path).files
    except AvpError:
        return {}
    entries: dict[str, list[dict[str, Any]]] = {}
    for entry in files:
        entries.setdefault(entry.get("source", ""), []).append(entry)
    return entries


def _encrypt_and_write(batch: list[_Item], job: EncryptJob, manifest: Manifest, on_event: EventCallback) -> None:
    originals = torch.stack([item.tensor for item in batch]).to(job.device)
    result = encrypt_batch(
        originals, job.target, job.key, job.settings, job.spec.loss, noise_seeds=[item.noise_seed for item in batch]
    )
    written = []
    for item, encrypted in zip(batch, result.encrypted):
        path = job.output / item.entry["output"]
        save_png(encrypted.cpu(), path)
        written.append(read_png(path))
        if job.aligned_output is not None:
            save_png(item.tensor, job.aligned_output / item.entry["output"])
    # Every figure in the manifest is measured on the PNG as written and read back.
    measured = measure_images(originals, torch.stack(written).to(job.device), job.target, job.key, job.spec.loss)
    for item, metrics, engine_metrics in zip(batch, measured, result.metrics):
        item.entry.update(status="ok", **metrics, iterations=engine_metrics.iterations,
                          met_targets=_meets(metrics, job.settings))
        manifest.files.append(item.entry)
        on_event(Event("written", source=item.entry["source"], output=job.output / item.entry["output"]))
    manifest.write(job.output, _manifest_name(job.shard))


def _meets(metrics: dict[str, Any], settings: AttackSettings) -> bool:
    stop = settings.stop or StopCriteria()
    return bool(stop.accepts(metrics["feature_distance"], metrics["ssim_encrypted"], metrics["ssim_decrypted"],
                             metrics.get("same_class")))


def _manifest_name(shard: tuple[int, int]) -> str:
    index, count = shard
    return MANIFEST_NAME if count == 1 else f"avp-manifest.part-{index + 1}-of-{count}.json"


@dataclass
class DecryptJob:
    encrypted: Path
    output: Path
    key: nn.Module
    key_fingerprint: str
    batch_size: int = 16
    device: str = "cpu"
    overwrite: bool = False
    manifest: Manifest | None = None
    results: list[dict[str, Any]] = field(default_factory=list)


def decrypt_folder(job: DecryptJob, on_event: EventCallback = lambda event: None) -> Manifest:
    """Apply the key to every ciphertext listed in the folder's manifest; writes PNGs and a manifest."""
    source_manifest = job.manifest or read_manifest(job.encrypted)
    if is_inside(job.output, job.encrypted):
        raise UsageError(f"the output folder {job.output} is inside {job.encrypted}; choose another --out")
    entries = [entry for entry in source_manifest.files if entry.get("status") == "ok"]
    manifest = Manifest(kind="decrypted", target=source_manifest.target, key_fingerprint=job.key_fingerprint)
    job.output.mkdir(parents=True, exist_ok=True)

    for start in range(0, len(entries), job.batch_size):
        chunk = entries[start:start + job.batch_size]
        tensors, kept = [], []
        for entry in chunk:
            path = job.encrypted / entry["output"]
            try:
                tensors.append(read_png(path))
                kept.append(entry)
            except (OSError, ValueError) as broken:
                record = {"source": entry["output"], "output": None, "status": "failed", "reason": f"cannot read: {broken}"}
                manifest.files.append(record)
                on_event(Event("failed", source=entry["output"], reason=record["reason"]))
        if not kept:
            continue
        decrypted = decrypt_batch(torch.stack(tensors).to(job.device), job.key).cpu()
        for entry, image in zip(kept, decrypted):
            path = job.output / entry["output"]
            save_png(image, path)
            manifest.files.append({"source": entry["output"], "output": entry["output"], "status": "ok"})
            on_event(Event("written", source=entry["output"], output=path))
        on_event(Event("progress", done=min(start + job.batch_size, len(entries)), total=len(entries)))
    manifest.write(job.output)
    return manifest
