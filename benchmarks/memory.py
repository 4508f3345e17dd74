"""Memory over the size of a run: the peak RSS of a real folder run (`avpcli.encrypt_folder`) on
1,000 and on 10,000 images, each in a fresh process.

    python -m benchmarks.memory [--counts 1000,10000] [--target tiny-classifier] [--batch-size 8]
                                [--threads 1] [--work DIR]
    python -m benchmarks.memory --profile 2000     (tracemalloc: which lines' Python memory grows in a run)

Inputs: random 32×32 RGB PNGs written into a temporary folder (--work). Target: a tiny registered
test target (no weights); key: the tests' tiny key (KeyPreset ngf 4, 1 block, 2 training steps,
seed 1). Each run encrypts its folder with one attack step per image (iterations=1), so that the
models cost little and what the run keeps per file shows: it writes every PNG and the manifest as
`avp encrypt` does. Each run is a fresh subprocess that reports its RSS before the run (imports and
models loaded), its peak RSS (getrusage ru_maxrss: the high-water mark of the whole process) and the
run's wall time. The bar: the largest run's peak at most 10 % above the smallest run's.

--profile N runs one child on N images under tracemalloc and prints what the run holds (the lines
whose Python allocations grew most between its first and last progress event), the peak of traced
memory above that, and what writing the run's final manifest alone takes at its peak (every
checkpoint rewrites the manifest, in 64 KiB pieces). torch's tensor memory is not traced: it is
allocated outside Python's allocator.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# The bar: a run 10× as long may take at most this much more peak memory.
ALLOWED_GROWTH = 0.10
SIZE = 32


def write_random_images(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` random SIZE×SIZE RGB PNGs named 00000.png, 00001.png, ... (kept if already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)  # drawn even when kept: same images
        path = folder / f"{index:05d}.png"
        if not path.exists():
            Image.fromarray(pixels, "RGB").save(path)
    return folder


def tiny_key(path: Path) -> Path:
    """The tests' tiny key (tests/conftest.py): enough to run every code path, trained in a second."""
    from avpcli import KeyPreset
    from benchmarks.common import cached_key  # torch and avp load only where a run needs them

    preset = KeyPreset(ngf=4, blocks=1, norm="batch", steps=2, batch_size=2, crop_size=SIZE, learning_rate=1e-3)
    cached_key(path, preset, seed=1)
    return path


def kib_in_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(args: argparse.Namespace) -> None:
    """One run in this fresh process; its figures as one JSON line on stdout."""
    import torch

    from avpcli import Encryptor, encrypt_folder

    torch.set_num_threads(args.threads)
    encryptor = Encryptor(args.target, args.key, device="cpu", batch_size=args.batch_size, iterations=1)
    snapshots: list[tracemalloc.Snapshot] = []

    def on_event(event) -> None:
        # The first progress event comes before any batch, the last after every one, both while the
        # run still holds everything it keeps.
        if args.profile and event.kind == "progress" and (event.done == 0 or event.done == event.total):
            snapshots.append(tracemalloc.take_snapshot())

    if args.profile:
        tracemalloc.start(4)

    before = kib_in_status("VmRSS")
    began = time.perf_counter()
    manifest = encrypt_folder(encryptor, args.inputs, args.output, on_event, noise_seed=0)
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    done = sum(entry.get("status") == "ok" for entry in manifest.files)
    if args.profile:
        report_growth(snapshots[0], snapshots[-1], done)
        report_manifest_peak(manifest, done)
    print(json.dumps({"images": done, "seconds": seconds, "rss_before_kib": before, "peak_rss_kib": peak,
                      "hwm_kib": kib_in_status("VmHWM")}))


def report_growth(first, last, images: int, top: int = 15) -> None:
    """The lines whose traced memory grew most over the run, on stderr."""
    growth = last.compare_to(first, "lineno")
    total = sum(stat.size_diff for stat in growth)
    print(f"traced Python memory grew {total / 2**20:.1f} MiB over {images} images "
          f"({total / max(images, 1):.0f} bytes per image); the largest lines:", file=sys.stderr)
    for stat in growth[:top]:
        frame = stat.traceback[0]
        print(f"  {stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+8d} blocks  "
              f"{Path(frame.filename).name}:{frame.lineno}", file=sys.stderr)


def report_manifest_peak(manifest, images: int) -> None:
    """The run's traced peak, and the transient peak of writing its final manifest once (as every
    checkpoint does, Manifest.write), on stderr."""
    _, run_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    held, _ = tracemalloc.get_traced_memory()
    with tempfile.TemporaryDirectory() as folder:
        size = manifest.write(Path(folder)).stat().st_size
    _, writing = tracemalloc.get_traced_memory()
    print(f"traced peak during the run {run_peak / 2**20:.1f} MiB; writing the final manifest "
          f"({size / 2**20:.1f} MiB of JSON, {images} entries) alone peaks {(writing - held) / 2**20:.1f} MiB "
          f"above what is held ({(writing - held) / max(images, 1):.0f} bytes per entry)", file=sys.stderr)


def run_child(work: Path, count: int, args: argparse.Namespace, profile: bool = False) -> dict:
    """One run in a fresh subprocess on `count` images; its JSON figures."""
    inputs = write_random_images(work / f"inputs-{count}", count)
    output = work / f"encrypted-{count}{'-profile' if profile else ''}"
    command = [sys.executable, "-m", "benchmarks.memory", "--child", "--inputs", str(inputs),
               "--output", str(output), "--key", str(tiny_key(work / "tiny.safetensors")),
               "--target", args.target, "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if profile:
        command += ["--profile", "1"]
    # A fresh output folder: a rerun must encrypt every file again, not resume.
    shutil.rmtree(output, ignore_errors=True)
    # From the repository's root, `-m benchmarks.memory` finds the benchmarks package.
    finished = subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(finished.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1000,10000", help="images per run, comma-separated")
    parser.add_argument("--target", default="tiny-classifier", choices=["tiny-classifier", "tiny-embedding"])
    parser.add_argument("--batch-size", type=int, default=8, help="as `avp encrypt`'s default")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, help="inputs, outputs and the key (default: a new temporary folder)")
    parser.add_argument("--profile", type=int, metavar="N", help="one run on N images under tracemalloc instead")
    # A child run (what main starts in a fresh process).
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inputs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--key", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="avp-memory-"))
    if args.profile:
        result = run_child(work, args.profile, args, profile=True)
        print(f"{result['images']} images: peak RSS {result['peak_rss_kib'] / 1024:.0f} MiB")
        return
    counts = [int(count) for count in args.counts.split(",")]
    import torch

    from avpcli import __version__

    print(f"avp {__version__}; torch {torch.__version__}; {args.threads} thread(s), CPU; target {args.target}; "
          f"tiny key; {SIZE}×{SIZE} random PNGs; 1 attack step per image; batch {args.batch_size}; "
          f"Encryptor.encrypt_folder, each run in a fresh process; work folder {work}")
    results = []
    for count in counts:
        print(f"run of {count} images...", file=sys.stderr, flush=True)
        results.append(run_child(work, count, args))
    print()
    print("| images | run's wall time | images/s | RSS before the run | peak RSS | peak − before |")
    print("|---|---|---|---|---|---|")
    for result in results:
        before, peak = result["rss_before_kib"] / 1024, result["peak_rss_kib"] / 1024
        print(f"| {result['images']:,} | {result['seconds']:.0f} s | {result['images'] / result['seconds']:.0f} | "
              f"{before:.0f} MiB | {peak:.0f} MiB | {peak - before:+.0f} MiB |")
    smallest, largest = results[0], results[-1]
    growth = largest["peak_rss_kib"] / smallest["peak_rss_kib"] - 1
    per_image = (largest["peak_rss_kib"] - smallest["peak_rss_kib"]) * 1024 / (largest["images"] - smallest["images"])
    print()
    print(f"peak RSS of {largest['images']:,} images vs {smallest['images']:,}: {growth:+.1%} "
          f"(bar: at most +{ALLOWED_GROWTH:.0%} → {'met' if growth <= ALLOWED_GROWTH else 'NOT met'}); "
          f"{per_image / 1024:.1f} KiB more peak per image between them")


if __name__ == "__main__":
    main()
