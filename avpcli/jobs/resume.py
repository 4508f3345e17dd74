"""How an encryption run treats files (FolderRun), and what it carries over from an earlier run into the
same folder: its noise seed, its names map, and the outputs it finished."""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from avpcli.engine import AttackSettings
from avpcli.errors import ImageError, UsageError
from avpcli.files import UnusableFile, open_regular_file, write_output
from avpcli.images import SourceImage, check_link_stays_inside, is_inside
from avpcli.inputs import AlignMode
from avpcli.jobs.folders import face_output_name, file_digest
from avpcli.manifest import Manifest, differences


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


# Settings added since manifests were first written, with the value that leaves them off: recorded
# only when used, so that a run that does not use them resumes a folder an older avp started.
_RECORDED_WHEN_USED = {"start_side_weight": 0.0}


_STOP_RECORDED_WHEN_USED = {"max_start_side": None}


def settings_record(settings: AttackSettings) -> dict[str, Any]:
    record = asdict(settings)
    record["autocast_dtype"] = str(settings.autocast_dtype).replace("torch.", "") if settings.autocast_dtype else None
    for fields, values in ((record, _RECORDED_WHEN_USED), (record["stop"] or {}, _STOP_RECORDED_WHEN_USED)):
        for name, off in values.items():
            if fields.get(name, off) == off:
                fields.pop(name, None)
    return record


@dataclass
class ResumeState:
    """What a run carries over from the one before it in the same folder (if any)."""

    noise_seed: int
    run_id: str | None
    entries: dict[str, list[dict[str, Any]]]


def resume(run: FolderRun, manifest: Manifest, previous: Manifest | None) -> ResumeState:
    """Check that the earlier run in run.output (`previous`) used the same target, key and settings; carry it over."""
    if previous is None or run.overwrite:
        seed = run.noise_seed if run.noise_seed is not None else secrets.randbits(63)
        return ResumeState(seed, secrets.token_hex(4) if run.anonymize else None, {})
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
    return ResumeState(seed, previous.run or (secrets.token_hex(4) if run.anonymize else None), entries)


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


def anonymous_names(run: FolderRun, sources: list[SourceImage], resumed: ResumeState) -> dict[Path, Path]:
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


def finished_before(entries: list[dict[str, Any]], folder: Path, output: Path, source_tag: str | None) -> bool:
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
        name = str(face_output_name(output, number - 1))
        if entry.get("output") != name or file_digest(folder, name) != entry.get("sha256"):
            return False
    return count > 0


def linked_safely(source: SourceImage, run: FolderRun) -> bool:
    """Whether a source may be read to tag it: not a link out of its input folder (unless the run
    follows links); such a source is redone, and then fails with its reason."""
    if run.follow_links:
        return True
    try:
        check_link_stays_inside(source)
    except ImageError:
        return False
    return True


def source_file_tag(path: Path, secret: bytes) -> str | None:
    """HMAC-SHA256 of a source file's bytes under the key's tag secret (hex), or None if it is not a
    regular file that can be read (it then fails, with its reason, when it is loaded). Keyed: a plain
    hash in a manifest would let anyone holding a photo check whether it was encrypted. Opened
    without blocking and checked before reading: a FIFO must not hang the run."""
    digest = hmac.new(secret, digestmod="sha256")
    try:
        stream, _ = open_regular_file(path)
    except UnusableFile:
        return None
    with stream:
        try:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        except OSError:
            return None
    return digest.hexdigest()


def earlier_entries(earlier: Manifest | None, manifest: Manifest, sources: set[str],
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
