"""Encrypting folders: files → load/align → batches → engine → 8-bit PNGs + manifest, resumably and in shards.

Runs never print: they report what happens through an `on_event` callback (avpcli.events).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import torch

from avpcli.encryptor import Encryptor
from avpcli.errors import ImageError, NoFaceError, NotModelInput, UsageError
from avpcli.events import Event, EventCallback, ignore_events
from avpcli.images import (SourceImage, check_link_stays_inside, check_named_file, describe_error, find_images,
                           output_names, png_bytes, png_tensor, read_png)
from avpcli.inputs import AT_INPUT_SIZE, prepare_file
from avpcli.jobs.folders import (Checkpoint, check_output_folder, face_output_name, file_digest, owned_folder,
                                 previous_manifest, remove_stale_temporaries, write_into, write_records)
from avpcli.jobs.names import choose_label, held_by_another, held_outputs
from avpcli.jobs.sealing import SEALED_INFIX, container_of, seal_into, sealing_key
from avpcli.jobs.resume import (FolderRun, NamesMap, SourceTag, earlier_entries, finished_before, linked_safely,
                                read_names_map, resume, run_identity, settings_record, source_file_tag)
from avpcli.manifest import MANIFEST_NAME, Manifest, merge_parts, part_name, read_manifest


@dataclass
class _Item:
    """One image ready for the engine: a face chip or a resized image, and its manifest entry."""

    tensor: torch.Tensor
    entry: dict[str, Any]
    noise_seed: int
    order: tuple[int, int]


def _noise_seed(run_seed: int, name: str) -> int:
    # surrogateescape: a name that is not UTF-8 counts by its bytes (UTF-8 names as before).
    digest = hashlib.sha256(f"{run_seed}:{name}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def encrypt_folder(encryptor: Encryptor, inputs: Path | str | Sequence[Path | str], output: Path | str,
                   on_event: EventCallback | None = None, **run_options: Any) -> Manifest:
    """Encrypt files and folders into `output` (PNGs and avp-manifest.json), resumably; returns the manifest.

    run_options are FolderRun's: align, all_faces, noise_seed, overwrite, shard, aligned_output,
    anonymize, names_map, key_path (by default the encryptor's key file: where --anonymize's names
    map goes), follow_links, listed. See run_folder for what a run guarantees.
    """
    paths = [Path(inputs)] if isinstance(inputs, (str, os.PathLike)) else [Path(path) for path in inputs]
    run_options.setdefault("key_path", encryptor.loaded_key.path)
    return run_folder(encryptor, FolderRun(inputs=paths, output=Path(output), **run_options), on_event or ignore_events)


def run_folder(encryptor: Encryptor, run: FolderRun, on_event: EventCallback = ignore_events) -> Manifest:
    """Encrypt every image under run.inputs into run.output; returns the manifest it wrote.

    Files that fail are recorded with a reason and the run goes on. A rerun into the same folder
    skips every output that an earlier run finished (listed in its manifest, unchanged on disk)
    and redoes the rest with the earlier run's noise seed, so that an interrupted run and its
    rerun together write exactly what one uninterrupted run writes; run.overwrite redoes all.
    Entries of an earlier run with other inputs (same target, key and settings) stay in the
    manifest. Every file is written atomically and the manifest is rewritten as the run goes (Checkpoint).
    The run holds the folder's lock (owned_folder): shared among shards, which write their own
    manifest parts; the last shard to finish merges the parts into avp-manifest.json.
    """
    if run.names_map is not None and not run.anonymize:
        raise UsageError("--names-map goes with --anonymize")
    if not run.listed:  # listed files are checked one by one (check_named_file)
        check_output_folder(run.inputs, run.output)
    with owned_folder(run.output, shared=run.shard[1] > 1):
        return _encrypt_owned(encryptor, run, on_event)


def _encrypt_owned(encryptor: Encryptor, run: FolderRun, on_event: EventCallback) -> Manifest:
    """encrypt_folder's work, once the run holds run.output."""
    started = start_run(encryptor, run, on_event)
    plan = started.plan
    seal_key = sealing_key(encryptor.loaded_key) if run.seal else None
    pending = len(plan.sources) - len(plan.finished)
    done = 0
    for positions in plan.batches(encryptor.batch_size):
        on_event(Event("progress", source=str(plan.sources[positions[0]].relative), done=done, total=pending))
        encrypt_positions(encryptor, plan, positions, started.records, on_event, seal_key)
        started.checkpoint.write_if_due()
        done += sum(position not in plan.finished for position in positions)
    on_event(Event("progress", done=pending, total=pending))
    return finish_run(started)


@dataclass
class EncryptionPlan:
    """What a run settled before encrypting anything: its sources by position, what the manifest calls each
    (label) and where its outputs go, the one-line reason of each that gets no output name (refused),
    those an earlier run finished, and the run's noise seed and tag identity (run_identity). It holds no
    model and no key, so that a worker elsewhere can run a batch of it (part; jobs.distributed)."""

    run: FolderRun
    sources: dict[int, SourceImage]
    labels: dict[int, Path]
    outputs: dict[int, Path]
    refused: dict[int, str]
    finished: set[int]
    noise_seed: int
    identity: bytes
    tags: dict[int, SourceTag | None] = field(default_factory=dict)

    def label(self, position: int) -> str:
        """What the manifest calls a source: its relative path (lengthened where an earlier run's output of
        another source holds its name), or its random id when anonymized."""
        return self.outputs[position].stem if self.run.anonymize else str(self.labels[position])

    def tag(self, position: int, secret: bytes) -> SourceTag | None:
        """The source's tag, read once (and never for a link out of its folder that the run does not follow)."""
        if position not in self.tags:
            source = self.sources[position]
            self.tags[position] = (source_file_tag(source.path, secret, self.identity)
                                   if linked_safely(source, self.run) else None)
        return self.tags[position]

    def owned(self) -> set[Path]:
        """The names this run writes (ciphertexts and containers), whose temporaries a killed process may leave."""
        return set(self.outputs.values()) | {container_of(output) for output in self.outputs.values()}

    def batches(self, batch_size: int) -> list[range]:
        """The batches that hold something to do. Batches are fixed runs of batch_size sources by position,
        whatever is already done: the engine's floating-point results can depend on an image's batch-mates,
        so a resumed run recomputes the finished mates of an unfinished batch (writing only what is missing)
        to match an uninterrupted run."""
        count = len(self.sources)
        runs = [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
        return [positions for positions in runs if not all(position in self.finished for position in positions)]

    def part(self, positions: Sequence[int]) -> EncryptionPlan:
        """The plan of these sources alone: what a worker needs to encrypt one batch."""
        def only(mapping: dict) -> dict:
            return {position: mapping[position] for position in positions if position in mapping}

        # The run's inputs stay with the driver: a worker needs only these sources.
        return EncryptionPlan(replace(self.run, inputs=[]), only(self.sources), only(self.labels), only(self.outputs),
                              only(self.refused), self.finished & set(positions), self.noise_seed, self.identity,
                              only(self.tags))


@dataclass
class StartedRun:
    """A run under way (start_run): its plan, the manifest it writes, the entries recorded so far by
    (source position, face), and the checkpoint that rewrites the manifest as it goes."""

    plan: EncryptionPlan
    manifest: Manifest
    records: list[tuple[tuple[int, int], dict[str, Any]]]
    checkpoint: Checkpoint


def start_run(encryptor: Encryptor, run: FolderRun, on_event: EventCallback) -> StartedRun:
    """Everything a run does before it encrypts, in a folder it holds: find the sources, check and carry
    over an earlier run (resume), choose the output names, report what an earlier run finished ("skipped"
    events) and write the first manifest (complete: false)."""
    all_sources = find_images(run.inputs, listed=run.listed)
    index, count = run.shard
    sources = all_sources[index::count]
    manifest = Manifest(
        kind="encrypted",
        target={"name": encryptor.spec.name, "input_size": list(encryptor.spec.input_size), "loss": encryptor.spec.loss,
                "weights": encryptor.weights_label},
        key_fingerprint=encryptor.key_fingerprint,
        settings={**settings_record(encryptor.settings), "key_scramble": encryptor.key_scrambles,
                  "noise_seed": run.noise_seed,
                  "alignment": run.align, "all_faces": run.all_faces, "anonymized": run.anonymize,
                  **({"seal": True} if run.seal else {})},
        complete=False,
        shard=f"{index + 1}/{count}" if count > 1 else None,
    )
    manifest_name = part_name(run.shard)
    previous = previous_manifest(run.output, (manifest_name, MANIFEST_NAME))
    resumed = resume(run, manifest, previous)
    manifest.settings["noise_seed"] = resumed.noise_seed
    manifest.run = resumed.run_id if run.anonymize else None
    names_map = read_names_map(run, resumed) if run.anonymize else None
    plan = EncryptionPlan(run, dict(enumerate(sources)), {}, {}, {}, set(), resumed.noise_seed,
                          run_identity(manifest, names_map.blind if names_map is not None else None))

    def tag(position: int) -> SourceTag | None:
        return plan.tag(position, encryptor.source_tag_secret)

    plan.labels, plan.outputs, plan.refused = _choose_names(run, all_sources, sources, names_map, tag)
    remove_stale_temporaries(run.output, plan.owned() | {Path(manifest_name)})

    # Entries of earlier runs for sources this run leaves alone stay listed (a shard's too: merge_finished_parts
    # drops the copies that other shards' parts hold), so that no finished output is left out of the manifest.
    processed = {plan.label(position) for position in plan.outputs} | {
        str(source.relative) for position, source in enumerate(all_sources) if position % count != index}
    earlier = earlier_entries(previous, manifest, processed, {str(output) for output in plan.outputs.values()})
    records: list[tuple[tuple[int, int], dict[str, Any]]] = []
    for position, source in enumerate(sources):
        entries = resumed.entries.get(plan.label(position), []) if position in plan.outputs else []
        if entries and finished_before(entries, run.output, plan.outputs[position], tag(position), run.seal):
            plan.finished.add(position)
            if entries[0].get("status") == "ok" and "sealed" in entries[0]:
                on_event(Event("skipped", source=str(source.relative), output=run.output / entries[0]["sealed"],
                               entry={"source": plan.label(position), "output": entries[0]["sealed"],
                                      "status": "sealed", "sha256": entries[0]["sealed_sha256"]}))
            for face, entry in enumerate(entries, 1):
                records.append(((position, face), entry))
                shown = entry["output"] if entry.get("output") is not None else entry["sealed"]
                on_event(Event("skipped", source=str(source.relative), output=run.output / shown,
                               missed_bars=entry.get("status") == "ok" and not entry.get("met_targets"), entry=entry))

    checkpoint = Checkpoint(lambda: write_records(manifest, records, run.output, manifest_name, earlier))
    checkpoint.write()
    return StartedRun(plan, manifest, records, checkpoint)


def finish_run(started: StartedRun) -> Manifest:
    """Mark the run's manifest complete and write it (a shard's last one also merges the parts); returns it."""
    started.manifest.complete = True
    started.checkpoint.write()
    run = started.plan.run
    if run.shard[1] > 1:
        merge_finished_parts(run.output, run.shard[1])
    return started.manifest


def encrypt_positions(encryptor: Encryptor, plan: EncryptionPlan, positions: Sequence[int],
                      records: list[tuple[tuple[int, int], dict[str, Any]]], on_event: EventCallback,
                      seal_key: bytes | None) -> None:
    """Encrypt one batch of a plan, the sources at `positions` (plan.batches): seal each input file (seal_key:
    sealing_key of the encryptor's key, None for a run without sealing), write its ciphertexts, append their
    entries to `records` and report each file. A file that fails is recorded with its reason; the sources
    an earlier run finished are recomputed only so that their batch-mates come out as in one run."""
    batch = [item for position in positions for item in _items(encryptor, plan, position, records, on_event, seal_key)]
    if batch:
        _encrypt_and_write(batch, encryptor, plan.run, records, on_event,
                           skip={position for position in positions if position in plan.finished})


def _items(encryptor: Encryptor, plan: EncryptionPlan, position: int, records: list, on_event: EventCallback,
           seal_key: bytes | None) -> list[_Item]:
    """The source's faces ready for the engine; a failure is recorded (if it is still to do) and gives []."""
    run, source, finished, outputs = plan.run, plan.sources[position], plan.finished, plan.outputs
    try:
        if position in plan.refused:
            raise ImageError(plan.refused[position])
        if run.listed:
            check_named_file(source.path, run.output)
        if not run.follow_links:
            check_link_stays_inside(source)
        try:
            faces = prepare_file(source.path, encryptor.spec, run.align, run.all_faces, encryptor.device,
                                 run.max_pixels)
            only = None
        except NotModelInput as unusable:
            if seal_key is None or position not in outputs:
                raise
            faces, only = [], f"{unusable}: sealed only"
        sealed: dict[str, str] = {}
        if seal_key is not None and position not in finished and (not faces or faces[0][1] != AT_INPUT_SIZE):
            # The whole file, sealed: what restores it byte for byte (the model's ciphertexts hold its faces).
            sealed = seal_into(run.output, container_of(outputs[position]), source.path, str(plan.labels[position]),
                               seal_key)
    except Exception as error:  # noqa: BLE001 - one bad file must never stop the run
        if position not in finished:
            status, reason = _failure_reason(error, source.path)
            entry = {"source": plan.label(position) if position in outputs else str(source.relative),
                     "output": None, "status": status, "reason": reason}
            records.append(((position, 0), entry))
            on_event(Event("failed", source=str(source.relative), reason=reason, entry=entry))
        return []
    source_tag = plan.tag(position, encryptor.source_tag_secret)
    tagged = {"source_tag": source_tag.value} if source_tag is not None else {}
    label = plan.label(position)
    if only is not None:
        if position not in finished:
            entry = {"source": label, "output": None, "status": "sealed", "reason": only, **sealed, **tagged}
            records.append(((position, 0), entry))
            on_event(Event("written", source=str(source.relative), output=run.output / sealed["sealed"], entry=entry))
        return []
    if sealed:
        on_event(Event("written", source=str(source.relative), output=run.output / sealed["sealed"],
                       entry={"source": label, "output": sealed["sealed"], "status": "sealed",
                              "sha256": sealed["sealed_sha256"]}))
    prepared = []
    for face_index, (tensor, alignment) in enumerate(faces):
        output = face_output_name(outputs[position], face_index)
        entry: dict[str, Any] = {"source": label, "output": str(output), "status": "pending",
                                 "alignment": alignment, **tagged, **sealed}
        if len(faces) > 1:
            entry.update(face=face_index + 1, faces=len(faces))
        prepared.append(_Item(tensor, entry, _noise_seed(plan.noise_seed, str(output)), (position, face_index + 1)))
    return prepared


def _choose_names(run: FolderRun, all_sources: list[SourceImage], sources: list[SourceImage], names_map: NamesMap | None,
                  tag) -> tuple[dict[int, Path], dict[int, Path], dict[int, str]]:
    """(label, output name) of each of this shard's sources by position, and the one-line reason of each
    that gets none. A source's output name is its own (output_names; an anonymized run's id of its
    label) unless a finished output of an earlier run, made from other bytes, holds it: then its
    label is lengthened by its parent folders (images.longer_names) until one is free. --overwrite
    replaces such outputs instead."""
    held = {} if run.overwrite else held_outputs(run.output)
    natural = output_names(all_sources)
    planned = {str(name) for name in natural.values()}
    labels: dict[int, Path] = {}
    outputs: dict[int, Path] = {}
    refused: dict[int, str] = {}
    for position, source in enumerate(sources):
        def output_of(label: Path) -> Path | None:
            if names_map is not None:
                return names_map.ids.get(str(label))  # None: a new id, which nothing holds
            return natural[source.relative] if label == source.relative else label.with_suffix(".png")

        def is_free(output: Path | None, label: Path) -> bool:
            return output is None or not held_by_another(held.get(str(output)), tag(position),
                                                         output.stem if names_map is not None else str(label))

        chosen = choose_label(source.relative, source.path, output_of, is_free, planned)
        if chosen is None:
            refused[position] = (f"its output name {natural[source.relative]} holds another source's ciphertext, and "
                                 "so do the longer names; use --overwrite to replace it, or choose another --out")
            continue
        output = names_map.id_for(chosen) if names_map is not None else output_of(chosen)
        if run.seal and output.stem.lower().endswith(SEALED_INFIX):
            # Its ciphertext would take a name that sealed containers take (another source's, or its own).
            refused[position] = f"its output name {output} ends in {SEALED_INFIX}.png, the name of avp's sealed files; rename it"
            continue
        labels[position] = chosen
        outputs[position] = output
    if names_map is not None:
        names_map.save(run)
    return labels, outputs, refused


def _failure_reason(error: Exception, path: Path) -> tuple[str, str]:
    """(status, one-line reason) for a file that could not be loaded or aligned."""
    if isinstance(error, NoFaceError):
        return "no_face", str(error)
    if isinstance(error, ImageError):
        return "failed", str(error)
    return "failed", f"internal error: {type(error).__name__}: {describe_error(error, path)}"


def merge_finished_parts(folder: Path, count: int) -> Manifest | None:
    """Merge the n manifest parts into avp-manifest.json once every shard has finished.

    Each shard calls this after writing its finished part, so the last one to finish merges (if two
    finish together both may, writing the same bytes). Returns the merged manifest, or None while
    some part is missing or unfinished.
    """
    parts = []
    for index in range(count):
        path = folder / part_name((index, count))
        if not path.is_file():
            return None
        part = read_manifest(path)
        if not part.complete:
            return None
        parts.append(part)
    merged = merge_parts(parts)
    # An earlier run into this folder with other inputs keeps its entries, as in an unsharded run.
    merged.files += earlier_entries(previous_manifest(folder, (MANIFEST_NAME,)), merged,
                                     {str(entry.get("source")) for entry in merged.files},
                                     {entry.get("output") for entry in merged.files})
    merged.files = _listed_once(merged.files, folder)
    merged.write(folder)
    return merged


def _listed_once(entries: list[dict[str, Any]], folder: Path) -> list[dict[str, Any]]:
    """The entries with each output listed once: where parts list one output twice (a shard's part keeps
    an earlier run's entries, which another part may hold too), the entry of the file on disk; a
    failure only for a source that nothing lists as done."""
    by_output: dict[str, dict[str, Any]] = {}
    for entry in entries:
        name = entry.get("output")
        if entry.get("status") == "ok" and isinstance(name, str):
            if name not in by_output or (by_output[name].get("sha256") != entry.get("sha256")
                                         and file_digest(folder, name) == entry.get("sha256")):
                by_output[name] = entry
    done = {entry.get("source") for entry in by_output.values()}
    kept, failed = [], set()
    for entry in entries:
        name = entry.get("output")
        if entry.get("status") == "ok" and isinstance(name, str):
            if by_output.get(name) is entry:
                kept.append(entry)
        elif entry.get("source") not in done and entry.get("source") not in failed:
            failed.add(entry.get("source"))
            kept.append(entry)
    return kept


def _encrypt_and_write(batch: list[_Item], encryptor: Encryptor, run: FolderRun, records: list, on_event: EventCallback,
                       skip: set[int] = frozenset()) -> None:
    """Encrypt a batch; write and record every item except those of the source positions in `skip`
    (finished earlier: they are recomputed only so that their batch-mates come out the same)."""

    def store(index: int, data: bytes) -> torch.Tensor:
        item = batch[index]
        if item.order[0] in skip:
            return png_tensor(data)
        written = read_png(write_into(run.output, item.entry["output"], data))
        if run.aligned_output is not None:
            write_into(run.aligned_output, item.entry["output"], png_bytes(item.tensor))
        return written

    originals = torch.stack([item.tensor for item in batch])
    # Every figure in the manifest is measured on the PNG as written and read back.
    ciphertexts = encryptor.encrypt_and_measure(originals, [item.noise_seed for item in batch], store)
    for item, ciphertext in zip(batch, ciphertexts):
        if item.order[0] in skip:
            continue
        item.entry.update(status="ok", **ciphertext.metrics, sha256=hashlib.sha256(ciphertext.png).hexdigest())
        records.append((item.order, item.entry))
        on_event(Event("written", source=item.entry["source"], output=run.output / item.entry["output"],
                       missed_bars=not item.entry["met_targets"], entry=item.entry))
