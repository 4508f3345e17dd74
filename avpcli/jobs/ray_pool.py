"""An actor pool on a Ray cluster for folder runs (jobs.distributed): joining the cluster, checking that every
worker reaches the output folder, and mapping pieces of work through actors with Ray Data, results as they come.

Ray is an optional extra (`pip install "avp[ray]"`), imported only when a run uses it.
"""

from __future__ import annotations

import logging
import os
import pickle
import secrets
import shutil
import socket
import sys
import tempfile
import traceback
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator

from avpcli.errors import AvpError, UsageError
from avpcli.jobs.folders import write_into

# --ray's value for a cluster of this machine, started for the run and stopped after it.
LOCAL = "local"
# How often a batch is tried, its worker having died on each try, before the batch's files fail (a file that
# crashes its worker, or one too large for its memory, must not stop the run or be retried forever).
BATCH_TRIES = 4
# The file by which each worker proves that it sees the driver's output folder, and the folder beside it that
# counts each piece's tries (both removed after the run).
_PROBE_PREFIX = ".avp-ray-"
_TRIES_SUFFIX = ".tries"
# Set by quiet_ray: the caller reports the run itself.
_QUIET = False


def import_ray() -> Any:
    """The ray module; UsageError saying how to install it where it is not."""
    try:
        import ray
        import ray.data  # noqa: F401 - the pipeline's half of Ray
    except ImportError:
        raise UsageError('--ray needs Ray: pip install "avp[ray]" (Ray Data, on every machine of the cluster)') from None
    return ray


def quiet_ray() -> None:
    """Keep Ray's logs and progress bars off stderr (its log files keep them): for a caller that reports the run
    itself (the CLI, which also keeps the cluster's messages off stdout: output.ray_messages_to_stderr). Once per
    process."""
    global _QUIET
    if _QUIET:
        return
    _QUIET = True
    # Before the driver joins a cluster: its core worker would print an error line on every run, that Ray Data's
    # actors get their arguments through the object store (which Ray Data keeps them in for as long as it runs).
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    ray = import_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    ray.data.DataContext.get_current().print_on_execution_start = False
    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.CRITICAL)
    logging.getLogger("ray").setLevel(logging.ERROR)


@contextmanager
def _quiet_start() -> Iterator[None]:
    """After quiet_ray, stderr's descriptor to /dev/null while Ray starts (its C++ core prints a line there as it
    reads RAY_BACKEND_LOG_LEVEL; the processes of a local cluster log into their files all the same)."""
    if not _QUIET:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextmanager
def ray_cluster(address: str | None = None) -> Iterator[Any]:
    """The ray module, connected: to the cluster this process has already joined (ray.init before; it stays
    joined after), else to a cluster of this machine started for the run (address None or "local") or to a
    running one ("auto": the one `ray start --head` made or $RAY_ADDRESS names; host:port; ray://host:port),
    left after the run."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options: dict[str, Any] = {"log_to_driver": not _QUIET, **({"logging_level": logging.ERROR} if _QUIET else {})}
    _check_reachable(address)
    try:
        with _quiet_start():
            if address in (None, LOCAL):
                ray.init(include_dashboard=False, **options)
            else:
                ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise AvpError(f"cannot join the Ray cluster at {address}: {message}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str | None) -> None:
    """AvpError (one line, within seconds) if a host:port address takes no connection: Ray itself would keep
    trying for minutes."""
    host, colon, port = (address or "").rpartition(":")
    if not colon or not port.isdigit() or "/" in address:
        return  # None, "local", "auto", ray://…: Ray says what is wrong at once
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as error:
        raise AvpError(f"cannot join the Ray cluster at {address}: {error.strerror or error}") from None


def _resources(ray: Any, actors: int | None, cpus: float, gpus: float | None, work: int) -> tuple[int, float, float]:
    """(actors, CPUs and GPUs per actor): one GPU each where the cluster has GPUs, and by default as many actors
    as the cluster has GPUs (else CPUs over cpus), never more than there is work."""
    if actors is not None and actors < 1:
        raise UsageError("--ray-actors must be at least 1")
    available = ray.cluster_resources()
    if gpus is None:
        gpus = 1.0 if available.get("GPU", 0) >= 1 else 0.0
    if actors is None:
        actors = int(available.get("GPU", 0) // gpus) if gpus else int(available.get("CPU", 1) // max(cpus, 1e-9))
    return max(1, min(actors, work)), cpus, gpus


def _map_on_actors(ray: Any, actor: type, work: list[bytes], constructor: dict[str, Any], actors: int, cpus: float,
                   gpus: float) -> Iterator[dict[str, Any]]:
    """Each piece of work (pickled) through an actor of a pool of `actors` (Ray Data's map_batches, one piece a
    call), its results as they finish, unpickled. Ray restarts a worker that dies and gives its piece to the pool
    again, as often as it dies; PoolWorker stops that after BATCH_TRIES tries."""
    context = ray.data.DataContext.get_current()
    errored, context.max_errored_blocks = context.max_errored_blocks, -1
    try:
        # A piece that fails on every try fails alone (_collect notices that its result is missing).
        dataset = ray.data.from_items([{"work": piece} for piece in work], override_num_blocks=len(work))
    finally:
        context.max_errored_blocks = errored
    mapped = dataset.map_batches(actor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=actors),
                                 num_cpus=cpus, num_gpus=gpus, fn_constructor_kwargs=constructor)
    for row in mapped.iter_rows():
        yield pickle.loads(row["result"])


class PoolWorker:
    """The base of avp's actors; `run` does one piece of work. What every actor does first, from `worker` (the
    driver's working folder, the output folder, its probe and token, the torch threads): join the driver's
    working folder (so that relative paths, and the events and messages that name them, are the driver's), take
    its threads, and check that it sees and can write the output folder. `problem` holds the error to report
    instead of doing any work. Whatever a piece raises goes back to the driver, which raises it (_collect)."""

    def __init__(self, worker: dict[str, Any]) -> None:
        import torch

        with suppress(OSError):
            os.chdir(worker["cwd"])
        torch.set_num_threads(max(1, worker["threads"]))
        self.problem: AvpError | None = check_output_reachable(Path(worker["output"]), worker["probe"], worker["token"])
        self.tries = Path(worker["output"]) / f"{worker['probe']}{_TRIES_SUFFIX}"

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[bytes]]:
        results = []
        for piece in batch["work"]:
            index, work = pickle.loads(piece)
            if self.problem is None and _count_try(self.tries, index) > BATCH_TRIES:
                results.append(pickle.dumps({"index": index, "lost": True}))
                continue
            try:
                if self.problem is not None:
                    raise self.problem
                result = {"index": index, **self.run(work)}
            except AvpError as error:  # a domain error stops the run with its one line, as in a local run
                result = {"index": index, "error": error}
            except Exception:  # noqa: BLE001 - a bug: the driver shows where (Ray would take it for a lost piece)
                result = {"index": index, "bug": traceback.format_exc()}
            results.append(pickle.dumps(result))
        return {"result": results}

    def run(self, work: Any) -> dict[str, Any]:
        raise NotImplementedError


def _count_try(tries: Path, index: int) -> int:
    """Count a try of piece `index` in the run's tries folder (in the shared output folder, so that every worker
    and every restart sees it; a piece is tried by one worker at a time); returns how many tries there were."""
    tries.mkdir(exist_ok=True)
    with open(tries / str(index), "ab") as counter:
        counter.write(b".")
        return counter.tell()


def check_output_reachable(output: Path, probe: str, token: str) -> AvpError | None:
    """None if this process sees the driver's output folder (its probe file holds `token`) and can write into
    it; else the one-line error that says which machine cannot."""
    host = socket.gethostname()
    try:
        seen = (output / probe).read_text()
    except OSError:
        seen = None
    if seen != token:
        return AvpError(f"the Ray worker on {host} does not see the output folder {output} that the driver writes; "
                        "the output folder must be one shared folder that every worker reaches at the same path")
    try:
        descriptor, written = tempfile.mkstemp(prefix=f"{_PROBE_PREFIX}write.", dir=output)
        os.close(descriptor)
        os.unlink(written)
    except OSError as error:
        return AvpError(f"the Ray worker on {host} cannot write into the output folder {output}: "
                        f"{error.strerror or error}; every worker must be able to write it")
    return None


@contextmanager
def reachable_output(output: Path) -> Iterator[tuple[str, str]]:
    """(probe file name, token): a probe file in `output` that the workers read (check_output_reachable),
    removed after the run; probes a killed driver left are removed first."""
    for stale in output.glob(f"{_PROBE_PREFIX}*"):
        _remove(stale)
    probe, token = f"{_PROBE_PREFIX}{secrets.token_hex(8)}", secrets.token_hex(16)
    write_into(output, probe, token.encode())
    try:
        yield probe, token
    finally:
        _remove(output / probe)
        _remove(output / f"{probe}{_TRIES_SUFFIX}")


def _remove(path: Path) -> None:
    """Remove a probe file or a tries folder, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(OSError):
            path.unlink()


def run_on_actors(ray: Any, output: Path, actor: type, constructor: dict[str, Any], work: list[Any],
                  apply: Callable[[int, dict[str, Any]], None], *, actors: int | None, cpus: float, gpus: float | None,
                  on_start: Callable[[], None]) -> list[int]:
    """Each piece of `work` through a pool of `actor`s (built with `constructor` and `worker`, see PoolWorker) on the
    cluster that `ray` has joined (ray_cluster), for a run into `output`, which every worker must see and write
    (reachable_output). on_start() once the pool is about to start; apply(index, result) for each result as it
    comes. Returns the pieces whose worker died on every try; raises the first domain error a worker reports."""
    with reachable_output(output) as (probe, token):
        count, cpus, gpus = _resources(ray, actors, cpus, gpus, len(work))
        worker = {"cwd": os.getcwd(), "output": str(output), "probe": probe, "token": token, "threads": int(cpus)}
        on_start()
        pieces = [pickle.dumps((index, piece)) for index, piece in enumerate(work)]
        return _collect(_map_on_actors(ray, actor, pieces, {**constructor, "worker": worker}, count, cpus, gpus),
                        len(pieces), apply)


def _collect(results: Iterator[dict[str, Any]], count: int, apply: Callable[[int, dict[str, Any]], None]) -> list[int]:
    """Apply each of `count` pieces' results as it comes; raise the first domain error a worker reports; return
    the pieces that never came back (their worker died on every try). A worker's bug is raised as a RuntimeError
    with its traceback."""
    returned: set[int] = set()
    for result in results:
        if result.get("lost"):
            continue  # tried BATCH_TRIES times, its worker dying each time
        returned.add(result["index"])
        if "error" in result:
            raise result["error"]
        if "bug" in result:
            raise RuntimeError(f"a Ray worker failed:\n{result['bug']}")
        apply(result["index"], result)
    return [index for index in range(count) if index not in returned]
