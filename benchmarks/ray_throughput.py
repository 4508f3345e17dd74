"""`--ray` on this machine against one process: throughput on faces, and what the driver costs on many tiny files.

    python -m benchmarks.ray_throughput --key K.safetensors [--faces 40] [--runs 3] [--actors 2] [--threads 2]
                                        [--target dlib] [--weights W] [--device cpu] [--gpus-per-actor G]
    python -m benchmarks.ray_throughput --tiny-files 10000 [--batch-size 8] [--work DIR]

Faces (the default): the first photo of the first --faces identities marked `multi` in ../shared/data/lfw.csv (or
$AVP_DATA), dlib target, the key given (the default preset: `avp keygen`), avp's defaults (the tuned recipe, every
photo sealed, batch 1 as benchmarks/encrypt_faces.py). Each run encrypts the photos into a fresh folder, as
`avp encrypt` does: `encrypt_on_ray` with --actors actors of 1 CPU and 1 torch thread each on a Ray cluster of this
machine (started once, before the runs, with as many CPUs as the machine has: its start is not counted; each
run starts its actors and loads their models: counted), against `encrypt_folder` in this process with --threads
torch threads, and against --actors `avp encrypt --shard i/N` processes of 1 torch thread each started together
(the same split of the work without Ray: each loads its models, counted). The three alternate, --runs times
each. Reports each run's wall time, the medians, the ratio one process / Ray (Ray's throughput relative to one
process's; issue #25's bar: at least 0.85), and Ray's overhead per file in ms, (Ray's median − the median of
the other run) / faces, against one process and against the shard processes (what Ray itself adds). On a GPU (--device cuda): every actor and the one process on it, each actor
with --gpus-per-actor of it (0.5: two actors share one GPU).

--tiny-files N: N random 32×32 PNGs, the tests' tiny target and key, 1 attack step per image, in batches of
--batch-size, each run in a fresh process: the local run (encrypt_folder, 1 thread) and the Ray run (a local
cluster of this machine started in the process, then encrypt_on_ray with --actors actors). Reports each run's
wall time (the Ray run's without the cluster's start, given apart), files/s, and the driver's peak RSS (the
process that plans the run and writes the manifest; Ray's workers and daemons are other processes).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import data_folder, lfw_faces, log
from benchmarks.memory import kib_in_status, tiny_key, write_random_images

REPO = Path(__file__).resolve().parents[1]
# Issue #25's bar: Ray's throughput with 2 actors of 1 thread at least this share of one process's with 2 threads.
RATIO_BAR = 0.85


def local_cluster():
    """A Ray cluster of this machine for the runs in its `with` block, quiet (the script reports the runs)."""
    from avpcli.jobs.ray_pool import LOCAL, quiet_ray, ray_cluster

    quiet_ray()
    return ray_cluster(LOCAL)


def faces(args: argparse.Namespace) -> None:
    import os

    import torch

    from avpcli import Encryptor, __version__, encrypt_folder, encrypt_on_ray, load_key

    if args.key is None:
        sys.exit("give --key: a key of the default preset (avp keygen)")
    work = args.work or Path(tempfile.mkdtemp(prefix="avp-ray-bench-"))
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for path in lfw_faces(data_folder(), args.faces):
        shutil.copyfile(path, photos / path.name)
    key = load_key(args.key)
    make_encryptor = functools.partial(Encryptor, args.target, key, weights=args.weights, device=args.device,
                                       batch_size=args.batch_size)
    gpus = f", {args.gpus_per_actor} GPU" if args.gpus_per_actor is not None else ""
    print(f"avp {__version__}; torch {torch.__version__}; {os.cpu_count()} CPU cores; device {args.device}; "
          f"target {args.target}; {len(list(photos.iterdir()))} LFW faces; key {key.fingerprint[:12]}… "
          f"({key.metadata.get('preset')}); batch {args.batch_size}; Ray: {args.actors} actors × 1 thread{gpus}; "
          f"one process: {args.threads} threads")
    times: dict[str, list[float]] = {"ray": [], "local": [], "shards": []}
    with local_cluster():
        for run in range(args.runs):
            for kind in ("local", "ray", "shards"):
                output = work / f"out-{kind}-{run}"
                shutil.rmtree(output, ignore_errors=True)
                torch.set_num_threads(args.threads)
                began = time.perf_counter()
                if kind == "local":
                    manifest = encrypt_folder(make_encryptor(), photos, output, noise_seed=run)
                elif kind == "ray":
                    manifest = encrypt_on_ray(make_encryptor, photos, output, noise_seed=run, actors=args.actors,
                                              gpus_per_actor=args.gpus_per_actor)
                else:
                    manifest = _shard_processes(args, photos, output, run)
                times[kind].append(time.perf_counter() - began)
                done = sum(entry.get("status") == "ok" for entry in manifest.files)
                log(f"run {run + 1} {kind}: {times[kind][-1]:.1f} s, {done} faces encrypted")
    local, on_ray, shards = (statistics.median(times[kind]) for kind in ("local", "ray", "shards"))
    count = len(list(photos.iterdir()))
    ratio = local / on_ray
    print()
    print(f"| run | one process, wall | Ray, wall | {args.actors} --shard processes, wall |")
    print("|---|---|---|---|")
    for run in range(args.runs):
        print(f"| {run + 1} | {times['local'][run]:.1f} s | {times['ray'][run]:.1f} s | {times['shards'][run]:.1f} s |")
    print(f"| median | {local:.1f} s ({count / local:.2f} faces/s) | {on_ray:.1f} s ({count / on_ray:.2f} faces/s) | "
          f"{shards:.1f} s ({count / shards:.2f} faces/s) |")
    print()
    print(f"ratio (one process / Ray): {ratio:.2f} (bar: at least {RATIO_BAR} → {'met' if ratio >= RATIO_BAR else 'NOT met'}); "
          f"Ray's overhead per file: {(on_ray - local) / count * 1000:+.0f} ms against one process, "
          f"{(on_ray - shards) / count * 1000:+.0f} ms against {args.actors} --shard processes (Ray's own cost)")


def _shard_processes(args: argparse.Namespace, photos: Path, output: Path, run: int):
    """The run as --actors `avp encrypt --shard i/N` processes of one torch thread each, started together; the
    manifest the last of them merges."""
    import os

    from avpcli.manifest import read_manifest

    command = [sys.executable, "-m", "avpcli", "encrypt", str(photos), "--target", args.target, "--key", str(args.key),
               "--out", str(output), "--device", args.device, "--batch-size", str(args.batch_size), "--seed", str(run)]
    if args.weights:
        command += ["--weights", str(args.weights)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    shards = [subprocess.Popen([*command, "--shard", f"{index + 1}/{args.actors}"], env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for index in range(args.actors)]
    for process in shards:
        process.wait()
    return read_manifest(output)


def tiny_child(args: argparse.Namespace) -> None:
    """One tiny-files run in this fresh process; its figures as one JSON line on stdout."""
    import torch

    from avpcli import Encryptor, encrypt_folder, encrypt_on_ray

    torch.set_num_threads(1)
    make_encryptor = functools.partial(Encryptor, "tiny-classifier", args.key, device="cpu",
                                       batch_size=args.batch_size, iterations=1)
    began = time.perf_counter()
    with local_cluster() if args.child == "ray" else contextlib.nullcontext():
        cluster = time.perf_counter() - began if args.child == "ray" else 0.0
        encryptor = make_encryptor()
        before = kib_in_status("VmRSS")
        began = time.perf_counter()
        if args.child == "ray":
            manifest = encrypt_on_ray(make_encryptor, args.inputs, args.output, encryptor=encryptor, noise_seed=0,
                                      actors=args.actors)
        else:
            manifest = encrypt_folder(encryptor, args.inputs, args.output, noise_seed=0)
        seconds = time.perf_counter() - began
    print(json.dumps({"files": sum(entry.get("status") == "ok" for entry in manifest.files), "seconds": seconds,
                      "cluster_seconds": cluster, "rss_before_kib": before,
                      "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def tiny_files(args: argparse.Namespace) -> None:
    from avpcli import __version__

    work = args.work or Path(tempfile.mkdtemp(prefix="avp-ray-tiny-"))
    inputs = write_random_images(work / f"inputs-{args.tiny_files}", args.tiny_files)
    key = tiny_key(work / "tiny.safetensors")
    print(f"avp {__version__}; {args.tiny_files:,} random 32×32 PNGs; tiny-classifier, tiny key, 1 step; batch "
          f"{args.batch_size}; local: one process, 1 thread; Ray: {args.actors} actors × 1 thread on a cluster of "
          f"this machine; each run in a fresh process; work folder {work}")
    results = {}
    for kind in ("local", "ray"):
        output = work / f"out-{kind}"
        shutil.rmtree(output, ignore_errors=True)
        log(f"{kind} run of {args.tiny_files:,} files...")
        command = [sys.executable, "-m", "benchmarks.ray_throughput", "--child", kind, "--inputs", str(inputs),
                   "--output", str(output), "--key", str(key), "--batch-size", str(args.batch_size),
                   "--actors", str(args.actors)]
        finished = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
        results[kind] = json.loads(finished.stdout.strip().splitlines()[-1])
    print()
    print("| run | files | wall time | files/s | driver RSS before | driver peak RSS |")
    print("|---|---|---|---|---|---|")
    for kind, label in (("local", "one process"), ("ray", "Ray")):
        result = results[kind]
        started = f" (+{result['cluster_seconds']:.0f} s cluster start)" if kind == "ray" else ""
        print(f"| {label} | {result['files']:,} | {result['seconds']:.0f} s{started} | "
              f"{result['files'] / result['seconds']:.0f} | {result['rss_before_kib'] / 1024:.0f} MiB | "
              f"{result['peak_rss_kib'] / 1024:.0f} MiB |")
    local, on_ray = results["local"], results["ray"]
    print()
    print(f"Ray / one process: wall time ×{on_ray['seconds'] / local['seconds']:.2f}, driver peak RSS "
          f"×{on_ray['peak_rss_kib'] / local['peak_rss_kib']:.2f}; Ray's overhead per file "
          f"{(on_ray['seconds'] - local['seconds']) / args.tiny_files * 1000:+.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", type=Path, help="faces: a key of the default preset")
    parser.add_argument("--faces", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3, help="faces: runs of each, alternating (the median is reported)")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors, 1 CPU and 1 torch thread each")
    parser.add_argument("--threads", type=int, default=2, help="faces: torch threads of the one process")
    parser.add_argument("--batch-size", type=int, default=None, help="faces: 1; tiny files: 8 (avp encrypt's default)")
    parser.add_argument("--target", default="dlib", help="faces: the target")
    parser.add_argument("--weights", type=Path, help="faces: the target's weights, where it needs them")
    parser.add_argument("--device", default="cpu", help="faces: cpu or cuda")
    parser.add_argument("--gpus-per-actor", type=float, help="faces on a GPU: each actor's share (default: 1 GPU)")
    parser.add_argument("--tiny-files", type=int, metavar="N", help="the tiny-files comparison on N files instead")
    parser.add_argument("--work", type=Path, help="inputs and outputs (default: a new temporary folder)")
    # A tiny-files run (what --tiny-files starts in a fresh process).
    parser.add_argument("--child", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 8 if args.tiny_files or args.child else 1
    if args.child:
        tiny_child(args)
    elif args.tiny_files:
        tiny_files(args)
    else:
        faces(args)


if __name__ == "__main__":
    main()
