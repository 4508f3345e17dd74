"""The key check of issue #24: what its scramble plans cost in memory, and a key to measure its steps with.

    python -m benchmarks.key_check_cost plan-memory [--side 6000] [--scheme SCHEME] [--steps make,apply]
    python -m benchmarks.key_check_cost relabel KEY OUT [--scheme SCHEME]

plan-memory: in a fresh process per step (so one step's peak does not hide the next's), a random
side×side image (float32) and a per-image plan for it: the peak resident memory above the image of
making the plan, and of making it and scrambling and unscrambling the image with it (forward and
inverse, as encryption and decryption use it), in MB and bytes per value (3·side² values); and the
plan's own bytes. Peak resident memory is the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs where it can be), so it counts numpy's and torch's allocations alike.

relabel: a copy of KEY (same G, same secret) whose scramble scheme is SCHEME (default: the checked
per-image scheme, nonce-v3), written with avpcli's save_key (0600, never over a file). Comparing
`python -m benchmarks.encrypt_faces --key KEY` with `--key OUT` shows what the 32 tag bits of the nonce
cost in steps and SSIM_d: everything else about the two keys is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def measure_step(side: int, scheme: str, step: str) -> dict:
    """One step in this process: 'make' (the plan) or 'apply' (the plan, forward and inverse)."""
    import torch

    from avpcli import scramble as scrambles

    torch.set_num_threads(1)
    scramble = scrambles.Scramble(bytes(range(32)), scheme)
    images = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    nonces = scramble.nonces_of(images) if scramble.per_image else None
    reset = _reset_peak()
    before = _rss_kib("VmRSS")
    started = time.perf_counter()
    plan = scramble.plans_of(images)
    plan_bytes = plan.source.element_size() * plan.source.numel() + plan.inverted.element_size() * plan.inverted.numel()
    dtypes = str(plan.source.dtype), str(plan.inverted.dtype)
    made = time.perf_counter() - started
    del plan  # a plan over PLAN_BYTES_KEPT is not kept: scrambling makes it again, as an encryption's step does
    if step == "apply":
        scrambled = scramble(images)
        restored = scramble.inverse(scrambled, nonces) if nonces is not None else scramble.inverse(scrambled)
        if not torch.equal(restored, images):
            raise SystemExit("the inverse did not give the image back")
    peak = _rss_kib("VmHWM")
    return {"side": side, "scheme": scheme, "step": step, "peak_above_image_mb": (peak - before) / 1024,
            "bytes_per_value": (peak - before) * 1024 / (3 * side * side), "plan_mb": plan_bytes / 2 ** 20,
            "plan_source_dtype": dtypes[0], "plan_inverted_dtype": dtypes[1],
            "seconds": time.perf_counter() - started, "make_seconds": made, "peak_reset": reset}


def plan_memory(side: int, scheme: str, steps: list[str]) -> None:
    print(f"plan memory for one {side}×{side} image ({3 * side * side:,} values), scheme {scheme}, "
          f"python {sys.version.split()[0]}")
    for step in steps:
        done = subprocess.run([sys.executable, "-m", "benchmarks.key_check_cost", "_step", str(side), scheme, step],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"  {step}: failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        what = "making the plan" if step == "make" else "making it, scrambling and unscrambling the image"
        print(f"  {what}: peak {result['peak_above_image_mb']:,.0f} MB above the image "
              f"({result['bytes_per_value']:.1f} bytes per value), {result['seconds']:.1f} s "
              f"(plan made in {result['make_seconds']:.1f} s); the plan itself {result['plan_mb']:,.0f} MB "
              f"({result['plan_source_dtype']} sources, {result['plan_inverted_dtype']} inversion)"
              + ("" if result["peak_reset"] else " [peak not reset: includes the image's creation]"))


def relabel(source: str, out: str, scheme: str) -> None:
    from avpcli.key import load_key, save_key

    key = load_key(source)
    if key.scramble is None:
        raise SystemExit(f"{source} has no scramble to relabel")
    was = key.scramble.scheme
    key.scramble.scheme = scheme
    key.metadata["scramble"] = scheme
    path = save_key(key, out)
    print(f"{path}: the key of {source} (scramble {was}) with scramble {scheme}; mode {oct(os.stat(path).st_mode & 0o777)}")


def main(argv: list[str] | None = None) -> None:
    from avpcli.scramble import SCHEMES

    newest = SCHEMES[-1]  # the checked per-image scheme (nonce-v3); run against older code, its newest

    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["_step"]:
        print(json.dumps(measure_step(int(arguments[1]), arguments[2], arguments[3])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser("plan-memory", help="peak memory of one plan for a side×side image")
    memory.add_argument("--side", type=int, default=6000)
    memory.add_argument("--scheme", choices=SCHEMES, default=newest)
    memory.add_argument("--steps", default="make,apply", help="make (the plan), apply (make it, scramble, unscramble)")
    copy = commands.add_parser("relabel", help="a copy of a key with another scramble scheme")
    copy.add_argument("key")
    copy.add_argument("out")
    copy.add_argument("--scheme", choices=SCHEMES, default=newest)
    options = parser.parse_args(arguments)
    if options.command == "plan-memory":
        plan_memory(options.side, options.scheme, options.steps.split(","))
    else:
        relabel(options.key, options.out, options.scheme)


if __name__ == "__main__":
    main()
