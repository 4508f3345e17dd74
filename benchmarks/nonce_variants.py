"""What the per-image scramble's nonce costs the attack, part by part (docs/BENCHMARKS.md).

    python -m benchmarks.nonce_variants --key KEY [--variants full,nofill,nopin,nofill-nopin] [--faces 20]

Runs benchmarks/encrypt_faces.py's faces (dlib, batch 1, no naive loop) once per variant, with every
image given one fixed nonce, so that all images share one plan as with a per-size key and only the
nonce's mechanics differ:
  full          the nonce's 4 pixels pinned, the decrypted corner filled from the row below (avp's);
  nofill        pinned, not filled;
  nopin         filled, the 4 pixels free to move (the plan no longer follows them);
  nofill-nopin  neither: a per-size key's attack on a plan that leaves the corner in place.
Prints encrypt_faces.py's summary line per variant. Each variant runs in its own process.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXED_NONCE = bytes(range(12))
VARIANTS = ("full", "nofill", "nopin", "nofill-nopin")


def run_variant(key: str, variant: str, faces: int, threads: int) -> None:
    """Patch the scramble for `variant` in this process and run encrypt_faces.py's benchmark."""
    from avpcli import scramble
    from benchmarks import encrypt_faces

    scramble.Scramble.nonces_for = lambda self, originals: [FIXED_NONCE] * originals.shape[0]
    if "nofill" in variant:
        scramble.Scramble.fill_nonce = lambda self, decrypted: decrypted
    if "nopin" in variant:
        scramble.Scramble.nonces_of = lambda self, images: [FIXED_NONCE] * images.shape[0]
        scramble.Scramble.pinned = lambda self, height, width, device: None
    args = encrypt_faces.build_parser().parse_args(
        ["--key", key, "--faces", str(faces), "--threads", str(threads), "--naive-faces", "0"])
    encrypt_faces.run(args, emit=lambda line: print(line) if line.startswith(("avp:", "faces meeting")) else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", required=True, help="a per-image key (avp keygen)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--faces", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one variant in this process
    args = parser.parse_args()
    if args.one:
        run_variant(args.key, args.one, args.faces, args.threads)
        return
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            sys.exit(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        print(variant, flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.nonce_variants", "--key", args.key, "--one", variant,
                        "--faces", str(args.faces), "--threads", str(args.threads)],
                       cwd=REPO, check=True, stderr=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
