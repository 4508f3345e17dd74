"""Whole runs over folders: files → load/align → batches → engine → 8-bit PNGs + manifest.

This is the only place that joins image files, targets, keys and the engine. It does not print: it
reports what happens through an `on_event` callback that the CLI turns into stdout/stderr lines.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import time
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from avpcli.engine import AttackSettings, decrypt_grouped
from avpcli.errors import AvpError, ImageError, NoFaceError, UsageError
from avpcli.images import (
    MAX_PNG_BYTES,
    SourceImage,
    check_link_stays_inside,
    check_named_file,
    contained_path,
    describe_error,
    find_images,
    is_inside,
    load_rgb,
    output_names,
    png_bytes,
    png_tensor,
    read_file_bytes,
    read_png,
    write_output,
)
from avpcli.encryptor import AlignMode, Encryptor, meets_bars, target_inputs
from avpcli.key import Key
from avpcli.manifest import (MANIFEST_NAME, Manifest, differences, manifest_parts, merge_parts, part_name,
                             read_manifest)
from avpcli.targets import TargetSpec


@dataclass(frozen=True)
class Event:
    """Something a user may want to see: a file written ("written"), failed ("failed"),
    skipped because it was already done ("skipped"), or a step of progress ("progress").
    `missed_bars` marks a ciphertext that did not meet every quality bar; `entry` is the file's
    manifest entry (status, reason, figures) for written, skipped and failed files, so that a
    caller can report them as they come without reading the manifest."""

    kind: str
    source: str = ""
    output: Path | None = None
    reason: str = ""
    done: int = 0
    total: int = 0
    missed_bars: bool = False
    entry: dict[str, Any] | None = None


EventCallback = Callable[[Event], None]


@dataclass
class FolderRun:
    """How an encryption run handles files; what is encrypted with what is the Encryptor's.

    inputs: files and folders (searched recursively, sorted); output: the folder written.
    align: "auto" aligns faces for face targets, "never" centre-crops; all_faces: every face found.
    noise_seed: of the initial noise; None takes the earlier run's (so a resumed run finishes exactly
        as an uninterrupted one would) or, for a new run, 63 random bits.
    overwrite: redo every output (by default a rerun skips what an earlier run finished).
    shard: (index, count), 0-based: this process does files index, index + count, ...
    aligned_output: where to also save each aligned original (what the target saw), for reports and
        the demo; off by default, since these are plaintext faces.
    anonymize: name outputs by random ids; the id → name map goes to names_map, by default beside
        key_path as <key>.names-<run>.json (owner-only), never into the output folder.
    follow_links: read files that an input folder holds as symbolic links to places outside it; by
        default each fails with its reason (a planted link must not make avp encrypt what it points to).
    listed: every input is one file, read from a list (`avp encrypt -`): one that is missing, no
        image, a folder, or inside the output folder fails alone instead of stopping the run.
    """

    inputs: list[Path]
    output: Path
    align: AlignMode = "auto"
    all_faces: bool = False
    noise_seed: int | None = None
    overwrite: bool = False
    shard: tuple[int, int] = (0, 1)
    aligned_output: Path | None = None
    anonymize: bool = False
    names_map: Path | None = None
    key_path: Path | None = None
    follow_links: bool = False
    listed: bool = False


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


# Settings added since manifests were first written, with the value that leaves them off: recorded
# only when used, so that a run that does not use them resumes a folder an older avp started.
_RECORDED_WHEN_USED = {"start_side_weight": 0.0}
_STOP_RECORDED_WHEN_USED = {"max_start_side": None}


def _settings_record(settings: AttackSettings) -> dict[str, Any]:
    record = asdict(settings)
    record["autocast_dtype"] = str(settings.autocast_dtype).replace("torch.", "") if settings.autocast_dtype else None
    for fields, values in ((record, _RECORDED_WHEN_USED), (record["stop"] or {}, _STOP_RECORDED_WHEN_USED)):
        for name, off in values.items():
            if fields.get(name, off) == off:
                fields.pop(name, None)
    return record


def check_output_folder(inputs: list[Path], output: Path) -> None:
    """Refuse an output folder where outputs could become inputs or replace them.

    That is: the output folder is an input folder or lies inside one; it is the folder of an input
    file given by name (ciphertexts would sit among, and could replace, the originals); or an input
    lies inside it.
    """
    for given in inputs:
        if given.is_dir() and is_inside(output, given):
            raise UsageError(f"the output folder {output} is inside the input folder {given}; choose another --out")
        if not given.is_dir() and output.resolve() == given.absolute().parent.resolve():
            raise UsageError(f"the output folder {output} is the folder of the input {given}; choose another --out")
        if is_inside(given, output):
            raise UsageError(f"the input {given} is inside the output folder {output}; choose another --out")


@contextmanager
def owned_folder(folder: Path, shared: bool = False) -> Iterator[None]:
    """Create `folder` if needed and hold its advisory lock while a run writes into it.

    The lock is an flock on the folder itself: it leaves no file behind and ends with its process,
    so a killed run never leaves the folder locked. It is exclusive, or `shared` among the shards
    of one run (they write separate manifest parts); either way a second run into a held folder
    gets AvpError at once instead of mixing its files and manifest with the first's. A folder
    that this call created is removed again if the run fails before writing anything into it.
    """
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise AvpError(f"cannot use the output folder {folder}: {error.strerror or error}") from None
    try:
        try:
            fcntl.flock(descriptor, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AvpError(f"another avp run is writing into {folder}; wait until it has finished, "
                           "or choose another --out") from None
        try:
            yield
        except BaseException:
            if created:
                with suppress(OSError):
                    folder.rmdir()  # only if still empty
            raise
    finally:
        os.close(descriptor)


def _write(folder: Path, name: str | Path, data: bytes) -> Path:
    """Write folder/name atomically; AvpError if the disk refuses or a link would take the file out of `folder`."""
    try:
        path = contained_path(folder, str(name))
    except ImageError as unsafe:
        raise AvpError(f"cannot write {folder / name}: {unsafe}") from None
    write_output(path, data)
    return path


def _write_records(manifest: Manifest, records: list[tuple[Any, dict[str, Any]]], folder: Path,
                   name: str = MANIFEST_NAME, earlier: list[dict[str, Any]] = ()) -> None:
    """Write `manifest` listing the records' entries in their order, then the entries kept from earlier runs."""
    records.sort(key=lambda record: record[0])
    manifest.files = [entry for _, entry in records] + list(earlier)
    manifest.write(folder, name)


class _Checkpoint:
    """Rewrites a run's manifest as the run goes, as often as that stays cheap.

    At most once a second, and never more than a fifth of the time: a manifest of a million entries
    takes seconds to write, and rewriting it after every batch would cost more than the run itself.
    """

    def __init__(self, write: Callable[[], None]) -> None:
        self._write = write
        self._due = 0.0

    def write(self) -> None:
        started = time.monotonic()
        self._write()
        finished = time.monotonic()
        self._due = finished + max(1.0, 4 * (finished - started))

    def write_if_due(self) -> None:
        if time.monotonic() >= self._due:
            self.write()


def prepare_faces(path: Path, spec: TargetSpec, align: AlignMode = "auto", all_faces: bool = False,
                  device: str = "cpu") -> list[tuple[torch.Tensor, str]]:
    """Load one file and cut it to the target's input (encryptor.target_inputs): [(tensor, how aligned)]."""
    return target_inputs(load_rgb(path), spec, align, all_faces, device)


def _face_output_name(output: Path, face_index: int) -> Path:
    return output if face_index == 0 else output.with_name(f"{output.stem}_face{face_index + 1}{output.suffix}")


_FACE_SUFFIX = re.compile(r"_face\d+$")
# atomic_write_bytes's temporaries: ".<name>.<8 random characters>.part".
_TEMPORARY = re.compile(r"\.(.+)\.[a-z0-9_]{8}\.part")


def remove_stale_temporaries(folder: Path, owned: set[Path]) -> None:
    """Delete temporaries that a killed run left for the outputs in `owned` (relative paths).

    Only our own: other shards may be writing into the same folder right now.
    """
    if not folder.is_dir():
        return
    for temporary in folder.rglob(".*.part"):
        match = _TEMPORARY.fullmatch(temporary.name)
        if not match:
            continue
        name = temporary.parent.relative_to(folder) / match.group(1)
        if name in owned or name.with_name(_FACE_SUFFIX.sub("", name.stem) + name.suffix) in owned:
            temporary.unlink(missing_ok=True)


@dataclass
class _ResumeState:
    """What a run carries over from the one before it in the same folder (if any)."""

    noise_seed: int
    run_id: str | None
    entries: dict[str, list[dict[str, Any]]]


def _previous_manifest(folder: Path, names: tuple[str, ...]) -> Manifest | None:
    """The first of these manifests in `folder` that reads; None if none does (its outputs are then redone)."""
    for name in dict.fromkeys(names):
        path = folder / name
        if path.is_file():
            try:
                return read_manifest(path)
            except AvpError:
                continue
    return None


def _resume(run: FolderRun, manifest: Manifest, previous: Manifest | None) -> _ResumeState:
    """Check that the earlier run in run.output (`previous`) used the same target, key and settings; carry it over."""
    if previous is None or run.overwrite:
        seed = run.noise_seed if run.noise_seed is not None else secrets.randbits(63)
        return _ResumeState(seed, secrets.token_hex(4) if run.anonymize else None, {})
    earlier_seed = previous.settings.get("noise_seed")
    different = differences(manifest, previous)
    if run.noise_seed is not None and run.noise_seed != earlier_seed:
        different.append("--seed")
    if different:
        raise UsageError(f"{run.output} holds outputs of an earlier run with another {' and '.join(different)}; "
                         "use --overwrite to redo them, or choose another --out")
    seed = run.noise_seed if run.noise_seed is not None else (
        earlier_seed if isinstance(earlier_seed, int) else secrets.randbits(63))
    entries: dict[str, list[dict[str, Any]]] = {}
    for entry in previous.files:
        entries.setdefault(str(entry.get("source")), []).append(entry)
    return _ResumeState(seed, previous.run or (secrets.token_hex(4) if run.anonymize else None), entries)


def _names_map_path(run: FolderRun, run_id: str) -> Path:
    if run.names_map is not None:
        path = run.names_map
    elif run.key_path is not None:
        path = run.key_path.with_name(f"{run.key_path.name}.names-{run_id}.json")
    else:
        raise UsageError("--anonymize needs somewhere outside the output folder for the names map: give --names-map")
    if is_inside(path, run.output):
        raise UsageError(f"the names map {path} would be inside the output folder {run.output}, which would "
                         "undo --anonymize; give --names-map elsewhere")
    return path


def _anonymous_names(run: FolderRun, sources: list[SourceImage], resumed: _ResumeState) -> dict[Path, Path]:
    """Random ids as output names for this shard's sources, reusing (and extending) the run's names map."""
    path = _names_map_path(run, resumed.run_id or secrets.token_hex(4))
    known: dict[str, str] = {}
    if path.exists():
        try:
            document = json.loads(path.read_text())
            known = dict(document["names"])
        except (OSError, ValueError, KeyError, TypeError):
            raise UsageError(f"cannot read the names map {path}; use --overwrite to start afresh") from None
    elif resumed.entries:
        raise UsageError(f"the names map of the earlier run in {run.output} is not at {path}; give it with "
                         "--names-map, or use --overwrite to start afresh")
    by_source = {source: Path(output) for output, source in known.items()}
    added = False
    for source in sources:
        if str(source.relative) not in by_source:
            by_source[str(source.relative)] = Path(f"{secrets.token_hex(8)}.png")
            added = True
    if added or not path.exists():
        document = {"format": "avp-names", "output": str(run.output.resolve()),
                    "names": {str(output): source for source, output in sorted(by_source.items())}}
        write_output(path, (json.dumps(document, indent=2) + "\n").encode(), mode=0o600)
    return {source.relative: by_source[str(source.relative)] for source in sources}


def _finished(entries: list[dict[str, Any]], folder: Path, output: Path, source_tag: str | None) -> bool:
    """True if an earlier run wrote every output of one source's entries, under the names this run
    gives them (`output` and its _faceN siblings), from this very source file, and none has changed since.

    The names are compared, not trusted: a manifest naming any other file makes the source redone.
    So is a source whose bytes differ from those the entries were made from (another file of the same
    name, or the same file edited); entries of avp versions that did not record them count by name.
    """
    count = len(entries)
    for number, entry in enumerate(entries, 1):
        if entry.get("status") != "ok" or (entry.get("face", 1), entry.get("faces", 1)) != (number, count):
            return False
        if "source_tag" in entry and entry["source_tag"] != source_tag:
            return False
        name = str(_face_output_name(output, number - 1))
        if entry.get("output") != name or _file_digest(folder, name) != entry.get("sha256"):
            return False
    return count > 0


def _linked_safely(source: SourceImage, run: FolderRun) -> bool:
    """Whether a source may be read to tag it: not a link out of its input folder (unless the run
    follows links); such a source is redone, and then fails with its reason."""
    if run.follow_links:
        return True
    try:
        check_link_stays_inside(source)
    except ImageError:
        return False
    return True


def _source_tag(path: Path, secret: bytes) -> str | None:
    """HMAC-SHA256 of a source file's bytes under the key's tag secret (hex), or None if it is not a
    regular file that can be read (it then fails, with its reason, when it is loaded). Keyed: a plain
    hash in a manifest would let anyone holding a photo check whether it was encrypted. Opened
    without blocking and checked before reading: a FIFO must not hang the run."""
    digest = hmac.new(secret, digestmod="sha256")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(descriptor, "rb") as stream:
        try:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                return None
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        except OSError:
            return None
    return digest.hexdigest()


def _file_digest(folder: Path, name: str) -> str | None:
    """sha256 of the PNG folder/name, or None if it is not a readable regular file inside `folder`."""
    try:
        return hashlib.sha256(read_file_bytes(contained_path(folder, name), MAX_PNG_BYTES)).hexdigest()
    except ImageError:
        return None


def _earlier_entries(earlier: Manifest | None, manifest: Manifest, sources: set[str],
                     outputs: set[str]) -> list[dict[str, Any]]:
    """The entries of an earlier run into the same folder for sources that this run does not process.

    A later run with other inputs keeps them, so that the manifest lists every output in the folder
    and decrypt recovers them all; only if both runs used the same target, key and settings (every
    file of a manifest decrypts with its key). An entry whose output this run writes is left out:
    that file is being replaced.
    """
    if earlier is None or differences(manifest, earlier):
        return []
    return [entry for entry in earlier.files
            if str(entry.get("source")) not in sources and entry.get("output") not in outputs]


def encrypt_folder(encryptor: Encryptor, run: FolderRun, on_event: EventCallback = lambda event: None) -> Manifest:
    """Encrypt every image under run.inputs into run.output; returns the manifest it wrote.

    Files that fail are recorded with a reason and the run goes on. A rerun into the same folder
    skips every output that an earlier run finished (listed in its manifest, unchanged on disk)
    and redoes the rest with the earlier run's noise seed, so that an interrupted run and its
    rerun together write exactly what one uninterrupted run writes; run.overwrite redoes all.
    Entries of an earlier run with other inputs (same target, key and settings) stay in the
    manifest. Every file is written atomically and the manifest is rewritten as the run goes (_Checkpoint).
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
    all_sources = find_images(run.inputs, listed=run.listed)
    index, count = run.shard
    sources = all_sources[index::count]
    manifest = Manifest(
        kind="encrypted",
        target={"name": encryptor.spec.name, "input_size": list(encryptor.spec.input_size), "loss": encryptor.spec.loss,
                "weights": encryptor.weights_label},
        key_fingerprint=encryptor.key_fingerprint,
        settings={**_settings_record(encryptor.settings), "key_scramble": encryptor.key_scrambles,
                  "noise_seed": run.noise_seed,
                  "alignment": run.align, "all_faces": run.all_faces, "anonymized": run.anonymize},
        complete=False,
        shard=f"{index + 1}/{count}" if count > 1 else None,
    )
    manifest_name = part_name(run.shard)
    previous = _previous_manifest(run.output, (manifest_name, MANIFEST_NAME))
    resumed = _resume(run, manifest, previous)
    manifest.settings["noise_seed"] = resumed.noise_seed
    manifest.run = resumed.run_id if run.anonymize else None
    names = _anonymous_names(run, sources, resumed) if run.anonymize else output_names(all_sources)
    remove_stale_temporaries(run.output, {names[source.relative] for source in sources} | {Path(manifest_name)})

    def label(source: SourceImage) -> str:
        """What the manifest calls a source: its relative path, or its random id when anonymized."""
        return names[source.relative].stem if run.anonymize else str(source.relative)

    # A shard's part lists its own files only; the merge keeps what earlier runs left (merge_finished_parts).
    earlier = [] if count > 1 else _earlier_entries(previous, manifest, {label(source) for source in sources},
                                                    {str(names[source.relative]) for source in sources})
    records: list[tuple[tuple[int, int], dict[str, Any]]] = []
    finished: set[int] = set()
    for position, source in enumerate(sources):
        entries = resumed.entries.get(label(source), [])
        if entries and _linked_safely(source, run) and _finished(
                entries, run.output, names[source.relative], _source_tag(source.path, encryptor.source_tag_secret)):
            finished.add(position)
            for face, entry in enumerate(entries, 1):
                records.append(((position, face), entry))
                on_event(Event("skipped", source=str(source.relative), output=run.output / entry["output"],
                               missed_bars=not entry.get("met_targets"), entry=entry))

    checkpoint = _Checkpoint(lambda: _write_records(manifest, records, run.output, manifest_name, earlier))
    checkpoint.write()

    def items(position: int, source: SourceImage) -> list[_Item]:
        """The source's faces ready for the engine; a failure is recorded (if it is still to do) and gives []."""
        try:
            if run.listed:
                check_named_file(source.path, run.output)
            if not run.follow_links:
                check_link_stays_inside(source)
            faces = prepare_faces(source.path, encryptor.spec, run.align, run.all_faces, encryptor.device)
        except Exception as error:  # noqa: BLE001 - one bad file must never stop the run
            if position not in finished:
                status, reason = _failure_reason(error, source.path)
                entry = {"source": label(source), "output": None, "status": status, "reason": reason}
                records.append(((position, 0), entry))
                on_event(Event("failed", source=str(source.relative), reason=reason, entry=entry))
            return []
        prepared = []
        source_tag = _source_tag(source.path, encryptor.source_tag_secret)
        for face_index, (tensor, alignment) in enumerate(faces):
            output = _face_output_name(names[source.relative], face_index)
            entry: dict[str, Any] = {"source": label(source), "output": str(output), "status": "pending",
                                     "alignment": alignment, "source_tag": source_tag}
            if len(faces) > 1:
                entry.update(face=face_index + 1, faces=len(faces))
            prepared.append(_Item(tensor, entry, _noise_seed(resumed.noise_seed, str(output)), (position, face_index + 1)))
        return prepared

    # Batches are fixed runs of batch_size files by position, whatever is already done: the engine's
    # floating-point results can depend on an image's batch-mates, so a resumed run recomputes the
    # finished mates of an unfinished batch (writing only what is missing) to match an uninterrupted run.
    pending = len(sources) - len(finished)
    done = 0
    for start in range(0, len(sources), encryptor.batch_size):
        positions = range(start, min(start + encryptor.batch_size, len(sources)))
        if all(position in finished for position in positions):
            continue
        on_event(Event("progress", source=str(sources[start].relative), done=done, total=pending))
        batch = [item for position in positions for item in items(position, sources[position])]
        if batch:
            _encrypt_and_write(batch, encryptor, run, records, on_event, skip={position for position in positions
                                                                     if position in finished})
        checkpoint.write_if_due()
        done += sum(position not in finished for position in positions)
    on_event(Event("progress", done=pending, total=pending))
    manifest.complete = True
    checkpoint.write()
    if count > 1:
        merge_finished_parts(run.output, count)
    return manifest


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
    merged.files += _earlier_entries(_previous_manifest(folder, (MANIFEST_NAME,)), merged,
                                     {str(entry.get("source")) for entry in merged.files},
                                     {entry.get("output") for entry in merged.files})
    merged.write(folder)
    return merged


def _encrypt_and_write(batch: list[_Item], encryptor: Encryptor, run: FolderRun, records: list, on_event: EventCallback,
                       skip: set[int] = frozenset()) -> None:
    """Encrypt a batch; write and record every item except those of the source positions in `skip`
    (finished earlier: they are recomputed only so that their batch-mates come out the same)."""
    originals = torch.stack([item.tensor for item in batch])
    encrypted, engine_metrics = encryptor.encrypt_tensors(originals, [item.noise_seed for item in batch])
    written, digests = [], []
    for item, image in zip(batch, encrypted):
        data = png_bytes(image.cpu())
        digests.append(hashlib.sha256(data).hexdigest())
        if item.order[0] in skip:
            written.append(png_tensor(data))
            continue
        written.append(read_png(_write(run.output, item.entry["output"], data)))
        if run.aligned_output is not None:
            _write(run.aligned_output, item.entry["output"], png_bytes(item.tensor))
    # Every figure in the manifest is measured on the PNG as written and read back.
    measured = encryptor.measure(originals, torch.stack(written))
    for item, metrics, reached, digest in zip(batch, measured, engine_metrics, digests):
        if item.order[0] in skip:
            continue
        item.entry.update(status="ok", **metrics, iterations=reached.iterations,
                          met_targets=meets_bars(metrics, encryptor.settings), sha256=digest)
        records.append((item.order, item.entry))
        on_event(Event("written", source=item.entry["source"], output=run.output / item.entry["output"],
                       missed_bars=not item.entry["met_targets"], entry=item.entry))


@dataclass
class DecryptJob:
    """Everything `avp decrypt` needs: the encrypted folder (and its manifest, if already read), the key."""

    encrypted: Path
    output: Path
    key: nn.Module
    key_fingerprint: str
    batch_size: int = 16
    device: str = "cpu"
    manifest: Manifest | None = None
    # Redo every output; by default a rerun keeps what an earlier run with this key finished.
    overwrite: bool = False


@dataclass
class DecryptFilesJob:
    """Everything `avp decrypt FILE...` needs: ciphertext files decrypted one by one, and the key.

    files: ciphertext PNGs, each decrypted at its own size. One that is missing, not an 8-bit RGB
        PNG, smaller than the key takes or inside `output` fails alone. One that a manifest of
        `avp encrypt` in its folder (or a folder above) lists is held to that manifest, as a folder
        would be: a key of another fingerprint fails it unless `force`, the manifest's input size
        applies, and its key_scramble decides between G∘S and G alone.
    output: the folder written: the decrypted PNGs under the files' names (find_images's: parent
        folders are added where two would clash) and an avp-manifest.json of kind "decrypted".
    key: the loaded key (a file may need G∘S and another G alone).
    """

    files: list[Path]
    output: Path
    key: Key
    batch_size: int = 16
    device: str = "cpu"
    overwrite: bool = False
    force: bool = False


def uses_scramble(key: Key, manifest: Manifest | None) -> bool:
    """Whether ciphertexts listed in `manifest` (None: a loose ciphertext) decrypt with G∘S rather than G alone.

    Ciphertexts of `--recipe research` were made for G alone, and the manifest says so.
    """
    return key.scrambles and (manifest is None or manifest.settings.get("key_scramble", True) is not False)


@dataclass(frozen=True)
class _Ciphertext:
    """One ciphertext to decrypt: its place in the run, its name (in the output folder, the events and
    the manifest), where it is read and written, the key model it needs, and the size it must have (None: any)."""

    position: int
    name: str
    source: Path
    output: Path
    key: nn.Module
    size: tuple[int, int] | None = None


@dataclass
class _Decryption:
    """A decryption's plan, made before anything is read: what to decrypt, and what is refused already
    (position, name, reason). `png_only`: refuse anything but 8-bit RGB PNGs (loose files)."""

    output: Path
    key_fingerprint: str
    target: dict[str, Any]
    ciphertexts: list[_Ciphertext]
    refused: list[tuple[int, str, str]]
    batch_size: int
    device: str
    overwrite: bool
    png_only: bool = False


# The key's generator takes images of at least 8×8 pixels (key.KeyGenerator).
_SMALLEST_CIPHERTEXT_SIDE = 8


def decrypt_folder(job: DecryptJob, on_event: EventCallback = lambda event: None) -> Manifest:
    """Apply the key to every ciphertext listed in the folder's manifest; writes PNGs and a manifest.

    Every name the manifest gives is checked before anything is read or written (contained_path):
    an entry that would lead out of the encrypted folder or the output folder, or names no file,
    fails alone with its reason. The run holds the output folder's lock, rewrites its manifest as
    it goes (`complete` is False until the end), and a rerun keeps every output that an earlier run
    with the same key finished (listed, unchanged on disk, made from the same ciphertext bytes), so
    that a killed run and its rerun write what one uninterrupted run writes; job.overwrite redoes all.
    """
    source_manifest = job.manifest or read_manifest(job.encrypted)
    if is_inside(job.output, job.encrypted) or is_inside(job.encrypted, job.output):
        raise UsageError(f"the output folder {job.output} and {job.encrypted} overlap; choose another --out")
    size = source_manifest.target.get("input_size")
    if size is None:
        raise AvpError(f"the manifest of {job.encrypted} does not give the target's input size; it is damaged")
    plan = _Decryption(job.output, job.key_fingerprint, source_manifest.target, [], [], job.batch_size, job.device,
                       job.overwrite)
    seen: set[str] = set()
    for position, entry in enumerate(source_manifest.files):
        if entry.get("status") != "ok":
            continue
        name = entry.get("output")
        label = name if isinstance(name, str) and name else f"entry {position + 1}"
        try:
            paths = contained_path(job.encrypted, name), contained_path(job.output, name)
        except ImageError as unsafe:
            plan.refused.append((position, label, str(unsafe)))
            continue
        if name in seen:
            plan.refused.append((position, label, "listed twice in the manifest"))
            continue
        seen.add(name)
        plan.ciphertexts.append(_Ciphertext(position, name, *paths, job.key, tuple(size)))
    with owned_folder(job.output):
        return _decrypt(plan, on_event)


def decrypt_files(job: DecryptFilesJob, on_event: EventCallback = lambda event: None) -> Manifest:
    """Apply the key to ciphertext files one by one (DecryptFilesJob); writes PNGs and a manifest.

    As decrypt_folder does: each file that cannot be decrypted fails alone with its reason, the
    output folder is locked and its manifest rewritten as the run goes, and a rerun keeps what an
    earlier run with the same key finished (job.overwrite redoes all).
    """
    sources = find_images(job.files, listed=True)
    names = output_names(sources)
    models: dict[bool, nn.Module] = {}  # one module per kind, so that a batch's files share it
    manifests = _ListingManifests()
    plan = _Decryption(job.output, job.key.fingerprint, {}, [], [], job.batch_size, job.device, job.overwrite,
                       png_only=True)
    for position, source in enumerate(sources):
        name = str(names[source.relative])
        try:
            check_named_file(source.path, job.output)
            output = contained_path(job.output, name)
            manifest = manifests.listing(source.path)
        except (ImageError, AvpError) as refused:
            plan.refused.append((position, name, str(refused)))
            continue
        if manifest is not None and manifest.key_fingerprint != job.key.fingerprint and not job.force:
            plan.refused.append((position, name, f"encrypted with another key (fingerprint "
                                 f"{manifest.key_fingerprint[:16]}… in its folder's manifest, not "
                                 f"{job.key.fingerprint[:16]}…); use --force to decrypt it anyway"))
            continue
        scramble = uses_scramble(job.key, manifest)
        if scramble not in models:
            models[scramble] = job.key.model_for(scramble=scramble).to(job.device)
        size = manifest.target.get("input_size") if manifest is not None else None
        plan.ciphertexts.append(_Ciphertext(position, name, source.path, output, models[scramble],
                                            tuple(size) if size else None))
    with owned_folder(job.output):
        return _decrypt(plan, on_event)


class _ListingManifests:
    """The manifests of `avp encrypt` that list ciphertext files, found by looking up from each file's
    folder to the first folder that holds a manifest, and read once per folder."""

    def __init__(self) -> None:
        self._nearest: dict[Path, Path | None] = {}
        self._read: dict[Path, tuple[Manifest, set[str]] | AvpError] = {}

    def listing(self, path: Path) -> Manifest | None:
        """The manifest of the nearest folder above `path` that has one, if it is an encryption's and lists
        `path` as a finished output; AvpError if that manifest cannot be read."""
        absolute = Path(os.path.abspath(path))
        folder = self._nearest_manifest_folder(absolute.parent)
        if folder is None:
            return None
        if folder not in self._read:
            try:
                manifest = read_manifest(folder)
                self._read[folder] = manifest, {entry.get("output") for entry in manifest.files
                                                if entry.get("status") == "ok" and isinstance(entry.get("output"), str)}
            except AvpError as damaged:
                self._read[folder] = damaged
        found = self._read[folder]
        if isinstance(found, AvpError):
            raise found
        manifest, outputs = found
        if manifest.kind != "encrypted" or absolute.relative_to(folder).as_posix() not in outputs:
            return None
        return manifest

    def _nearest_manifest_folder(self, folder: Path) -> Path | None:
        visited = []
        found: Path | None = None
        while True:
            if folder in self._nearest:
                found = self._nearest[folder]
                break
            visited.append(folder)
            if (folder / MANIFEST_NAME).is_file() or manifest_parts(folder):
                found = folder
                break
            if folder.parent == folder:
                break
            folder = folder.parent
        for seen in visited:
            self._nearest[seen] = found
        return found


def _decrypt(plan: _Decryption, on_event: EventCallback) -> Manifest:
    """A decryption's work (decrypt_folder, decrypt_files), once the run holds plan.output."""
    earlier = _earlier_decryption(plan)
    manifest = Manifest(kind="decrypted", target=plan.target, key_fingerprint=plan.key_fingerprint, complete=False)
    records: list[tuple[int, dict[str, Any]]] = []

    def fail(position: int, label: str, reason: str) -> None:
        entry = {"source": label, "output": None, "status": "failed", "reason": reason}
        records.append((position, entry))
        on_event(Event("failed", source=label, reason=reason, entry=entry))

    for refused in plan.refused:
        fail(*refused)
    ciphertexts = plan.ciphertexts
    remove_stale_temporaries(plan.output, {Path(item.name) for item in ciphertexts} | {Path(MANIFEST_NAME)})
    checkpoint = _Checkpoint(lambda: _write_records(manifest, records, plan.output))
    checkpoint.write()

    # Batches are fixed runs of the list, whatever is already done, as in encrypt: a rerun decrypts
    # an unfinished batch whole so that every image comes out as in an uninterrupted run.
    for start in range(0, len(ciphertexts), plan.batch_size):
        batch = []
        for item in ciphertexts[start:start + plan.batch_size]:
            try:
                data = read_file_bytes(item.source, MAX_PNG_BYTES)
                tensor = png_tensor(data, item.size, png_only=plan.png_only)
                if min(tensor.shape[-2:]) < _SMALLEST_CIPHERTEXT_SIDE:
                    raise ImageError(f"{tensor.shape[-1]}x{tensor.shape[-2]} pixels, smaller than the key takes "
                                     f"({_SMALLEST_CIPHERTEXT_SIDE} a side)")
                batch.append((item, hashlib.sha256(data).hexdigest(), tensor))
            except Exception as broken:  # noqa: BLE001 - a damaged ciphertext fails alone
                fail(item.position, item.name, f"cannot read: {describe_error(broken, item.source)}")
        kept = [_decrypted_before(earlier.get(item.name), plan.output, item.name, digest) for item, digest, _ in batch]
        if not all(kept):
            decrypted = decrypt_grouped([(item.key, tensor) for item, _, tensor in batch], plan.device)
        for index, ((item, digest, _), entry) in enumerate(zip(batch, kept)):
            kind = "skipped"
            if entry is None:
                data = png_bytes(decrypted[index])
                _write(plan.output, item.name, data)
                entry = {"source": item.name, "output": item.name, "status": "ok", "source_sha256": digest,
                         "sha256": hashlib.sha256(data).hexdigest()}
                kind = "written"
            records.append((item.position, entry))
            on_event(Event(kind, source=item.name, output=item.output, entry=entry))
        on_event(Event("progress", done=min(start + plan.batch_size, len(ciphertexts)), total=len(ciphertexts)))
        checkpoint.write_if_due()
    manifest.complete = True
    checkpoint.write()
    return manifest


def _earlier_decryption(plan: _Decryption) -> dict[str, dict[str, Any]]:
    """The entries of an earlier decryption into plan.output by ciphertext name ({} with plan.overwrite).

    UsageError if the folder holds avp output of another kind, or a decryption with another key.
    """
    earlier = None if plan.overwrite else _previous_manifest(plan.output, (MANIFEST_NAME,))
    if earlier is None:
        return {}
    if earlier.kind != "decrypted":
        raise UsageError(f"{plan.output} holds avp output of another kind ({earlier.kind}); choose another --out")
    if earlier.key_fingerprint != plan.key_fingerprint:
        raise UsageError(f"{plan.output} holds a decryption with another key; use --overwrite to redo it, "
                         "or choose another --out")
    return {entry["source"]: entry for entry in earlier.files if isinstance(entry.get("source"), str)}


def _decrypted_before(entry: dict[str, Any] | None, folder: Path, name: str, digest: str) -> dict[str, Any] | None:
    """The earlier entry if it decrypted these very ciphertext bytes into folder/name, unchanged on disk since."""
    if (entry is None or entry.get("status") != "ok" or entry.get("output") != name
            or entry.get("source_sha256") != digest):
        return None
    return entry if _file_digest(folder, name) == entry.get("sha256") else None
