"""Folder runs on a Ray cluster (`--ray`): encrypt_on_ray and decrypt_on_ray spread a local run's work over an actor
pool (jobs.ray_pool), into one output folder that every worker reaches at the same path.

encrypt_on_ray: the driver (this process) plans the run exactly as a local one does (jobs.encrypt.start_run: the
file list, resume, output names, the manifest), holds the folder's lock and writes the manifest; each actor builds
its Encryptor once and encrypts whole batches of the plan (encrypt_positions), writing every output atomically into
the shared folder, and reports what a local run reports. Batches are the local run's (fixed runs of batch_size
sources), so the outputs are a local run's, byte for byte, given the same torch threads per process. A worker that
dies is restarted by Ray and its batch done again (the same bytes); one that dies on one batch on every try fails
that batch's files alone. A driver killed and rerun resumes from the manifest, as a local run does.

decrypt_on_ray: the actors restore the sealed originals (the work of a default `avp decrypt`), then the driver runs
the local decryption, which finds them restored, checks each, and decrypts the model's ciphertexts itself.
"""

from __future__ import annotations

import glob
import os
from dataclasses import replace
import socket
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from avpcli.encryptor import Encryptor
from avpcli.engine import resolve_device
from avpcli.errors import AvpError, UsageError
from avpcli.events import Event, EventCallback, ignore_events
from avpcli.images import is_inside
from avpcli.jobs.decrypt import (DecryptJob, _Ciphertext, _Decryption, _earlier_decryption, beside_restored, decrypt_batch,
                                 decrypt_paths, folder_job, folder_plan, uses_scramble)
from avpcli.jobs.encrypt import EncryptionPlan, encrypt_positions, finish_run, start_run
from avpcli.jobs.folders import Checkpoint, check_output_folder, owned_folder, remove_stale_temporaries, write_records
from avpcli.jobs.names import DecryptedNames
from avpcli.jobs.ray_pool import BATCH_TRIES, PoolWorker, import_ray, ray_cluster, run_on_actors
from avpcli.jobs.resume import FolderRun, settings_record
from avpcli.jobs.sealing import SealedFile, container_of, restore_all, sealing_key
from avpcli.key import Key, find_key, load_key
from avpcli.manifest import Manifest, read_manifest


def _signature(encryptor: Encryptor) -> dict[str, Any]:
    """What must be the same in every worker's Encryptor and the driver's (the manifest records it)."""
    return {"target": encryptor.spec.name, "input size": list(encryptor.spec.input_size),
            "weights": encryptor.weights_label, "key": encryptor.key_fingerprint,
            "settings": settings_record(encryptor.settings), "key scramble": encryptor.key_scrambles}


class EncryptActor(PoolWorker):
    """A Ray actor of encrypt_on_ray: its own Encryptor, built once; one batch of the plan a call."""

    def __init__(self, make_encryptor: Callable[[], Encryptor], expected: dict[str, Any],
                 worker: dict[str, Any]) -> None:
        super().__init__(worker)
        self.encryptor: Encryptor | None = None
        if self.problem is not None:
            return
        try:
            self.encryptor = make_encryptor()
        except AvpError as error:
            self.problem = error
            return
        own = _signature(self.encryptor)
        different = [name for name in expected if own[name] != expected[name]]
        if different:
            self.problem = UsageError(
                f"the Ray worker on {socket.gethostname()} would encrypt with another {' and '.join(different)} than "
                "the driver (another device or precision?); give --device and --precision that every machine has")
        self.seal_key = sealing_key(self.encryptor.loaded_key)

    def run(self, work: EncryptionPlan) -> dict[str, Any]:
        records: list = []
        events: list[Event] = []
        positions = sorted(work.sources)
        encrypt_positions(self.encryptor, work, positions, records, events.append,
                          self.seal_key if work.run.seal else None)
        return {"records": records, "events": events}


def _input_paths(inputs: Any, listed: bool) -> tuple[list[Path], bool]:
    """(paths, listed): a path or a list of them as given, or a Ray Dataset's "path" column, sorted (a Dataset's
    rows come in no set order), each file taken one by one as paths read from a list are (`avp encrypt -`)."""
    if isinstance(inputs, (str, os.PathLike)):
        return [Path(inputs)], listed
    if hasattr(inputs, "iter_rows") and hasattr(inputs, "columns"):  # a ray.data.Dataset
        columns = inputs.columns()
        if "path" not in columns:
            raise UsageError(f"a Dataset of inputs needs a 'path' column (it has {', '.join(columns) or 'none'})")
        paths = sorted(str(row["path"]) for row in inputs.select_columns(["path"]).iter_rows())
        return [Path(path) for path in paths], True
    return [Path(path) for path in inputs], listed


def encrypt_on_ray(make_encryptor: Callable[[], Encryptor], inputs: Any, output: Path | str,
                   on_event: EventCallback | None = None, *, encryptor: Encryptor | None = None,
                   address: str | None = None, actors: int | None = None, cpus_per_actor: float = 1.0,
                   gpus_per_actor: float | None = None, **run_options: Any) -> Manifest:
    """encrypt_folder on a Ray cluster: the same files, outputs, manifest, events, resume and failures, the
    batches encrypted by a pool of Ray actors; returns the manifest.

    make_encryptor: builds the Encryptor, once in each actor and once here (unless `encryptor` is that already
        built), e.g. functools.partial(Encryptor, "dlib", key, iterations=200); a Key object travels to the
        workers inside it, a key path must be readable on every machine (so must weights files).
    inputs: files and folders, or a ray.data.Dataset with a "path" column (its files are taken one by one, as
        paths read from a list). output: a folder every worker reaches at the same path; a worker that does
        not see it or cannot write it stops the run with one line.
    address: None or "local" starts a cluster of this machine for the run; "auto" joins the running one
        (`ray start --head`), or host:port; a process that has called ray.init keeps its cluster.
    actors: how many (default: one per GPU of the cluster, else one per cpus_per_actor CPUs); each takes
        cpus_per_actor CPUs (and torch threads) and gpus_per_actor GPUs (default: 1 where the cluster has GPUs).
    run_options: FolderRun's, as for encrypt_folder (a shard is not one: a Ray run does every file).
    """
    on_event = on_event or ignore_events
    paths, listed = _input_paths(inputs, bool(run_options.pop("listed", False)))
    if run_options.get("shard", (0, 1)) != (0, 1):
        raise UsageError("--shard and --ray do not go together: Ray spreads every file of the run over its workers")
    import_ray()  # before anything is loaded: a usage error costs nothing
    driver = encryptor if encryptor is not None else make_encryptor()
    run_options.setdefault("key_path", driver.loaded_key.path)
    run = FolderRun(inputs=paths, output=Path(output), listed=listed, **run_options)
    if run.names_map is not None and not run.anonymize:
        raise UsageError("--names-map goes with --anonymize")
    if not run.listed:
        check_output_folder(run.inputs, run.output)
    # The cluster first: one that cannot be joined stops the run before anything is written.
    with ray_cluster(address) as ray, owned_folder(run.output):
        started = start_run(driver, run, on_event)
        plan = started.plan
        batches = plan.batches(driver.batch_size)
        pending = len(plan.sources) - len(plan.finished)
        done = 0

        def apply(index: int, result: dict[str, Any]) -> None:
            nonlocal done
            started.records.extend(result["records"])
            for event in result["events"]:
                on_event(event)
            done += sum(position not in plan.finished for position in batches[index])
            on_event(Event("progress", done=done, total=pending))
            started.checkpoint.write_if_due()

        if batches:
            try:
                constructor = {"make_encryptor": make_encryptor, "expected": _signature(driver)}
                missing = run_on_actors(
                    ray, run.output, EncryptActor, constructor, [plan.part(positions) for positions in batches],
                    apply, actors=actors, cpus=cpus_per_actor, gpus=gpus_per_actor,
                    on_start=lambda: on_event(Event("progress", done=0, total=pending)))
            except BaseException:
                with suppress(AvpError):
                    started.checkpoint.write()  # what finished stays recorded, whatever stopped the run
                raise
            for index in missing:
                _fail_lost_batch(plan, batches[index], started.records, on_event)
                done += sum(position not in plan.finished for position in batches[index])
            # What a worker killed in the middle of a write left (its batch was done again, elsewhere).
            remove_stale_temporaries(run.output, plan.owned())
        on_event(Event("progress", done=pending, total=pending))
        return finish_run(started)


def _fail_lost_batch(plan: EncryptionPlan, positions: Sequence[int], records: list, on_event: EventCallback) -> None:
    """Record the unfinished files of a batch whose worker died on every try as failed, each with one line, and
    remove what a try wrote of them (the manifest lists every output in the folder)."""
    reason = (f"the Ray worker encrypting it died on each of {BATCH_TRIES} tries (a crash, or out of memory); "
              "its batch-mates failed with it")
    for position in positions:
        if position in plan.finished:
            continue
        if position in plan.outputs:
            output = plan.run.output / plan.outputs[position]
            for written in [output, output.parent / container_of(Path(output.name)),
                            *output.parent.glob(f"{glob.escape(output.stem)}_face*{output.suffix}")]:
                with suppress(OSError):
                    written.unlink()
        source = plan.sources[position]
        entry = {"source": plan.label(position) if position in plan.outputs else str(source.relative),
                 "output": None, "status": "failed", "reason": reason}
        records.append(((position, 0), entry))
        on_event(Event("failed", source=str(source.relative), reason=reason, entry=entry))


class RestoreActor(PoolWorker):
    """A Ray actor of decrypt_on_ray: restores a chunk of sealed originals a call (jobs.sealing.restore_all)."""

    def __init__(self, sealing: bytes, overwrite: bool, worker: dict[str, Any]) -> None:
        super().__init__(worker)
        self.sealing, self.overwrite, self.output = sealing, overwrite, Path(worker["output"])

    def run(self, work: tuple[list[SealedFile], dict[str, dict[str, Any]]]) -> dict[str, Any]:
        containers, earlier = work
        restored: list[tuple[int, dict[str, Any], str]] = []
        # A container that fails is left to the driver's own pass, which reports it (and nothing was written for it).
        restore_all(containers, self.output, self.sealing, self.overwrite, earlier,
                    lambda position, entry, kind: restored.append((position, entry, kind)), lambda *failed: None)
        return {"done": restored}


class ChipActor(PoolWorker):
    """A Ray actor of decrypt_on_ray: decrypts a batch of the model's ciphertexts through the key a call
    (jobs.decrypt.decrypt_batch), with its own copy of the key's model on its device."""

    def __init__(self, key: Key, scramble: bool, plan: _Decryption, earlier: dict[str, dict[str, Any]],
                 planned: set[str], worker: dict[str, Any]) -> None:
        super().__init__(worker)
        self.plan = replace(plan, device=resolve_device(plan.device))
        self.model = key.model_for(scramble=scramble).to(self.plan.device)
        self.earlier, self.planned = earlier, planned

    def run(self, work: list[_Ciphertext]) -> dict[str, Any]:
        decrypted: list[tuple[int, dict[str, Any], str]] = []
        # What fails is left to the driver's own pass, which reports it (and nothing was written for it).
        decrypt_batch([replace(item, key=self.model) for item in work], self.plan,
                      DecryptedNames(self.plan.output, self.earlier, self.planned), self.earlier,
                      lambda position, entry, kind: decrypted.append((position, entry, kind)), lambda *failed: None)
        return {"done": decrypted}


def decrypt_on_ray(inputs: Iterable[Path], output: Path | None = None, *, key: Key | Path | None = None,
                   key_folders: Sequence[Path] = (), address: str | None = None, actors: int | None = None,
                   cpus_per_actor: float = 1.0, on_event: EventCallback = ignore_events,
                   on_warning: Callable[[str], None] = lambda message: None, **options: Any) -> Manifest:
    """decrypt_paths on a Ray cluster, for one folder written by `avp encrypt`; returns the manifest written.

    A pool of actors restores the folder's sealed originals into `output` (the whole work of a default decryption),
    then another decrypts the model's ciphertexts through the key (`chips`, and folders without sealed originals),
    each on its own device (one GPU an actor where the cluster has GPUs). Then this process runs decrypt_paths,
    which finds each output done (and checks it against its container or ciphertext), does what a worker could not
    (reporting why): the outputs, manifest, events, failures and resume of decrypt_paths, whose options (force,
    batch_size, device, overwrite, max_pixels, chips) it takes. address, actors, cpus_per_actor: as for
    encrypt_on_ray. The key travels to the workers.
    """
    given = list(inputs)
    if options.get("listed") or len(given) != 1 or not Path(given[0]).is_dir():
        raise UsageError("--ray decrypts one folder written by `avp encrypt`; decrypt ciphertext files without --ray")
    folder = Path(given[0])
    import_ray()
    manifest = read_manifest(folder)
    # Found in key_folders once (its warnings said once), on the CPU: each actor moves its own copy to its device.
    loaded = key if isinstance(key, Key) else load_key(key) if key is not None else find_key(
        manifest.key_fingerprint, list(key_folders), "cpu", on_unusable=lambda reason: on_warning(f"skipped: {reason}"))
    job_options = {name: options[name] for name in ("batch_size", "overwrite", "force", "max_pixels", "chips")
                   if name in options}
    job = folder_job(folder, output, loaded, manifest, device=options.get("device", "auto"), **job_options)
    reported: set[str] = set()
    # Another key than the manifest's is refused by decrypt_paths (or, forced, left to it whole).
    if (loaded.fingerprint == manifest.key_fingerprint and manifest.target.get("input_size") is not None
            and not (is_inside(job.output, folder) or is_inside(folder, job.output))):
        reported = _decrypt_on_actors(job, folder_plan(job, manifest), loaded, uses_scramble(loaded, manifest), address,
                                      actors, cpus_per_actor, on_event)
        options = {**options, "overwrite": options.get("overwrite", False) and not reported}

    def report(event: Event) -> None:
        if event.kind == "skipped" and (event.entry or {}).get("output") in reported:
            return  # reported as the workers did it
        on_event(event)

    return decrypt_paths(given, job.output, key=key if key is not None else loaded, on_event=report,
                         on_warning=on_warning, **options)


def _decrypt_on_actors(job: DecryptJob, plan: _Decryption, key: Key, scramble: bool, address: str | None,
                       actors: int | None, cpus: float, on_event: EventCallback) -> set[str]:
    """The sealed originals of the plan restored, then its ciphertexts decrypted, into job.output by pools of actors,
    and a manifest of kind "decrypted" that lists them (rewritten as they come, so that a killed run resumes);
    returns the outputs reported. Those refused or failed are left to decrypt_paths, which says why."""
    if not plan.containers and not plan.ciphertexts:
        return set()
    output = job.output
    chunk = max(1, job.batch_size)
    reported: set[str] = set()
    with ray_cluster(address) as ray, owned_folder(output):
        # UsageError for a folder of avp output of another kind, or of a decryption with another key.
        earlier = _earlier_decryption(plan)
        done_manifest = Manifest(kind="decrypted", target=plan.target, key_fingerprint=key.fingerprint, complete=False)
        records: list[tuple[int, dict[str, Any]]] = []
        names = DecryptedNames(output, earlier, ())
        checkpoint = Checkpoint(lambda: write_records(done_manifest, records, output, earlier=names.kept(reported)))
        progress = {"done": 0, "total": len(plan.containers) + len(plan.ciphertexts)}

        def apply(chunks: list[list[Any]]) -> Callable[[int, dict[str, Any]], None]:
            def applied(index: int, result: dict[str, Any]) -> None:
                for position, entry, kind in result["done"]:
                    records.append((position, entry))
                    reported.add(entry["output"])
                    on_event(Event(kind, source=entry["source"], output=output / entry["output"], entry=entry))
                progress["done"] += len(chunks[index])
                on_event(Event("progress", **progress))
                checkpoint.write_if_due()
            return applied

        def started() -> None:
            on_event(Event("progress", **progress))

        try:
            if plan.containers:
                # Each chunk takes the earlier entries of its sources (restore_all keeps those restored from the same bytes).
                by_source: dict[str, dict[str, dict[str, Any]]] = {}
                for name, entry in earlier.items():
                    by_source.setdefault(str(entry.get("source")), {})[name] = entry
                chunks = [plan.containers[start:start + chunk] for start in range(0, len(plan.containers), chunk)]
                work = [(part, {name: entry for item in part for name, entry in by_source.get(item.label, {}).items()})
                        for part in chunks]
                run_on_actors(ray, output, RestoreActor, {"sealing": plan.sealing_key, "overwrite": plan.overwrite},
                              work, apply(chunks), actors=actors, cpus=cpus, gpus=0.0, on_start=started)
            restored = {entry["output"] for _, entry in records if entry.get("restored")}
            ciphertexts = beside_restored(plan.ciphertexts, restored)
            if ciphertexts:
                # Batches as decrypt_paths makes them; each item's model is the actor's own.
                chunks = [[replace(item, key=None) for item in ciphertexts[start:start + chunk]]
                          for start in range(0, len(ciphertexts), chunk)]
                constructor = {"key": key, "scramble": scramble, "plan": replace(plan, ciphertexts=[], containers=[], refused=[]),
                               "earlier": earlier, "planned": {item.name for item in plan.ciphertexts} | restored}
                run_on_actors(ray, output, ChipActor, constructor, chunks, apply(chunks), actors=actors, cpus=cpus,
                              gpus=None, on_start=started)
        finally:
            with suppress(AvpError):
                checkpoint.write()
    return reported
