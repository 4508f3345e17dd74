"""The seed search of issue #24: how fast a key's seed is found from one ciphertext, before and after the seed KDF.

    python -m benchmarks.seed_search [--seeds 0-1999] [--kdf-seeds 0-99] [--kdf-budget 60] [--seed 1]
                                     [--image PHOTO] [--size 150] [--iterations 20] [--threads 1] [--json]

A key's scramble S undoes a ciphertext's layout and needs no training of G: S(x') ≈ x, because the
encryption starts from S⁻¹(x) and G is close to the identity. So an attacker who holds one ciphertext
x' tries seeds in order, derives each seed's scramble secret the way keys derive it, and keeps the seed
whose S(x') is smoothest (the mean absolute difference of neighbouring values: about 0.03 for a photo,
0.3 for noise).

The script makes its own keys and ciphertexts with avp: a tiny G (ngf 4, 1 block, a few steps; G's
quality does not matter to the search) with the scramble secret of seed --seed, the photo (the first LFW
face of ../shared/data, its central 150×150, or the shipped astronaut when the data is absent) encrypted
against the test-only `tiny-embedding` target (any size; --iterations steps) and written as 8-bit PNG.
Then, per derivation:

  old   a key without `seed_kdf` (made before the KDF): the secret is sha256 of the seed; --seeds tried.
  kdf   a key of today's presets: HMAC over scrypt (SEED_KDF, about 0.5 s); --kdf-seeds tried, stopping
        after --kdf-budget seconds; the time for --seeds is extrapolated from the rate.
  fast-on-kdf  the old fast derivation tried on the KDF key's ciphertext (--seeds): the shortcut finds nothing.

Prints guesses per second, whether the right seed came out on top, its margin (the best wrong
score over the right one's), and what the found seed gives: the correlation of 4×4 block means of S(x')
with the original (the issue measured r 0.91). Results are recorded in docs/KEY.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from PIL import Image

from avpcli import Encryptor
from avpcli.key import SEED_KDF, Key, KeyPreset, SeedKdf, scramble_secret, seed_secrets, train_key
from avpcli.scramble import Scramble

# The tiny G the ciphertexts are made with: the search never uses G, so its size only costs time.
TINY_G = dict(ngf=4, blocks=1, norm="none", steps=20, batch_size=2, crop_size=32, learning_rate=1e-3)
ASTRONAUT = Path(__file__).resolve().parents[1] / "avpcli" / "samples" / "astronaut.png"


def seed_range(text: str) -> range:
    """'A-B' (both included) or 'A' as a range of seeds."""
    first, _, last = text.partition("-")
    try:
        start, stop = int(first), int(last or first)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed range is A-B or A, not {text!r}") from None
    if not 0 <= start <= stop:
        raise argparse.ArgumentTypeError(f"a seed range needs 0 <= A <= B, not {text!r}")
    return range(start, stop + 1)


def smoothness(images: torch.Tensor) -> torch.Tensor:
    """Per image (N, 3, H, W): the mean absolute difference of horizontally and vertically adjacent values."""
    across = (images[..., :, 1:] - images[..., :, :-1]).abs().mean(dim=(1, 2, 3))
    down = (images[..., 1:, :] - images[..., :-1, :]).abs().mean(dim=(1, 2, 3))
    return (across + down) / 2


def block_correlation(a: torch.Tensor, b: torch.Tensor, block: int = 4) -> float:
    """Pearson r of the block×block means of two images (3, H, W): what a blur of one shows of the other."""
    pooled = [torch.nn.functional.avg_pool2d(image[None], block).flatten() for image in (a, b)]
    centred = [values - values.mean() for values in pooled]
    return float((centred[0] * centred[1]).sum() / (centred[0].norm() * centred[1].norm()))


def fast_secret(seed: int) -> bytes:
    """The scramble secret of a key without `seed_kdf` metadata: one sha256."""
    return scramble_secret(seed)


def kdf_secret(kdf: SeedKdf) -> Callable[[int], bytes]:
    """The scramble secret of a key of today's presets: HMAC over scrypt(seed)."""
    return lambda seed: seed_secrets(seed, kdf).scramble


@dataclasses.dataclass
class Search:
    """One search's outcome. scores: seed → smoothness of S(x') (lower: smoother), for every seed tried."""

    scores: dict[int, float]
    seconds: float
    planned: int  # seeds asked for; fewer were tried when the time budget ran out

    @property
    def guesses(self) -> int:
        return len(self.scores)

    @property
    def rate(self) -> float:
        return self.guesses / self.seconds if self.seconds > 0 else float("inf")

    @property
    def best(self) -> int:
        return min(self.scores, key=self.scores.__getitem__)

    def margin(self, right: int) -> float | None:
        """The best wrong seed's score over the right one's (above 1: the right one stands out); None if not tried."""
        if right not in self.scores or self.guesses < 2:
            return None
        return min(score for seed, score in self.scores.items() if seed != right) / self.scores[right]


def search(ciphertext: torch.Tensor, seeds: Iterable[int], secret_of: Callable[[int], bytes], scheme: str,
           budget_seconds: float | None = None) -> Search:
    """Try `seeds` in order on one ciphertext (1, 3, H, W): each seed's secret, its scramble, the smoothness
    of S(x'). Stops before a seed once budget_seconds have passed (after the first)."""
    seeds = list(seeds)
    scores: dict[int, float] = {}
    started = time.perf_counter()
    with torch.no_grad():
        for seed in seeds:
            if scores and budget_seconds is not None and time.perf_counter() - started > budget_seconds:
                break
            scores[seed] = float(smoothness(Scramble(secret_of(seed), scheme)(ciphertext))[0])
    return Search(scores, time.perf_counter() - started, len(seeds))


def load_photo(path: Path | None, size: int) -> torch.Tensor:
    """The photo as (3, size, size) on the 1/255 grid: an LFW photo's central 150×150 (its face), resized."""
    if path is None:
        from benchmarks.common import data_folder, lfw_faces

        try:
            path = lfw_faces(data_folder(), 1)[0]
        except (OSError, IndexError):
            path = ASTRONAUT
    with Image.open(path) as opened:
        image = opened.convert("RGB")
    if path != ASTRONAUT and min(image.size) > 150:
        left, top = (image.width - 150) // 2, (image.height - 150) // 2
        image = image.crop((left, top, left + 150, top + 150))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1) / 255


def make_ciphertext(original: torch.Tensor, seed: int, kdf: SeedKdf | None, iterations: int,
                    steps: int = TINY_G["steps"]) -> tuple[torch.Tensor, Key]:
    """A tiny key of `seed` (its secrets derived with `kdf`; None: the fast derivation) and the 8-bit
    ciphertext (1, 3, H, W) avp makes of `original` with it against `tiny-embedding`, as read back from its PNG."""
    from avpcli.targets import TargetModel, load_target

    key = train_key(KeyPreset(**{**TINY_G, "steps": steps}, seed_kdf=kdf), seed)
    tiny = load_target("tiny-embedding")  # convolutions and a global pool: it takes any size
    target = TargetModel(dataclasses.replace(tiny.spec, input_size=tuple(original.shape[1:])), tiny.model)
    encryptor = Encryptor(target, key, device="cpu", iterations=iterations, batch_size=1)
    measured = encryptor.encrypt_and_measure(original[None], [0])[0]  # the image as read back from its PNG
    return measured.image[None].cpu(), key


def report(name: str, result: Search, right: int, ciphertext: torch.Tensor, original: torch.Tensor,
           secret_of: Callable[[int], bytes], scheme: str, full_range: int) -> dict:
    """One search's figures as a dict (and the block correlation of what the top seed's S gives)."""
    with torch.no_grad():
        unscrambled = Scramble(secret_of(result.best), scheme)(ciphertext)[0]
    margin = result.margin(right)
    return {
        "derivation": name, "guesses": result.guesses, "planned": result.planned,
        "seconds": round(result.seconds, 2), "guesses_per_second": round(result.rate, 2),
        "seconds_per_guess": round(result.seconds / max(1, result.guesses), 4),
        "found": result.best == right, "margin": None if margin is None else round(margin, 2),
        "best_score": round(result.scores[result.best], 4),
        "block_correlation_of_best": round(block_correlation(unscrambled, original), 3),
        "seconds_for_full_range": round(full_range / result.rate, 1),
    }


def run(args: argparse.Namespace, emit: Callable[[str], None] = print) -> list[dict]:
    torch.set_num_threads(args.threads)
    original = load_photo(args.image, args.size)
    rows = []
    old_ciphertext, old_key = make_ciphertext(original, args.seed, None, args.iterations)
    scheme = old_key.scramble.scheme
    old = search(old_ciphertext, args.seeds, fast_secret, scheme)
    rows.append(report("old (sha256)", old, args.seed, old_ciphertext, original, fast_secret, scheme, len(args.seeds)))

    kdf_ciphertext, _ = make_ciphertext(original, args.seed, args.kdf, args.iterations)
    slow = kdf_secret(args.kdf)
    new = search(kdf_ciphertext, args.kdf_seeds, slow, scheme, budget_seconds=args.kdf_budget)
    rows.append(report(f"kdf ({args.kdf.name})", new, args.seed, kdf_ciphertext, original, slow, scheme,
                       len(args.seeds)))
    shortcut = search(kdf_ciphertext, args.seeds, fast_secret, scheme)
    rows.append(report("fast-on-kdf", shortcut, args.seed, kdf_ciphertext, original, fast_secret, scheme,
                       len(args.seeds)))
    if args.json:
        emit(json.dumps({"seed": args.seed, "size": args.size, "iterations": args.iterations,
                         "seeds": f"{args.seeds.start}-{args.seeds.stop - 1}",
                         "kdf_seeds": f"{args.kdf_seeds.start}-{args.kdf_seeds.stop - 1}", "rows": rows}, indent=1))
        return rows
    emit(f"ciphertext: {args.size}×{args.size}, key seed {args.seed}, scheme {scheme}, {args.iterations} iterations")
    emit(f"{'derivation':34} {'tried':>11} {'s':>7} {'guess/s':>9} {'found':>6} {'margin':>7} {'r 4×4':>6} "
         f"{'s for ' + str(len(args.seeds)):>10}")
    for row in rows:
        margin = "-" if row["margin"] is None else f"{row['margin']:.2f}"
        emit(f"{row['derivation']:34} {row['guesses']:>5}/{row['planned']:<5} {row['seconds']:>7.2f} "
             f"{row['guesses_per_second']:>9.2f} {'yes' if row['found'] else 'no':>6} {margin:>7} "
             f"{row['block_correlation_of_best']:>6.3f} {row['seconds_for_full_range']:>10.1f}")
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=seed_range, default=seed_range("0-1999"),
                        help="seeds the fast derivations try, in order (default 0-1999)")
    parser.add_argument("--kdf-seeds", type=seed_range, default=seed_range("0-99"),
                        help="seeds the KDF search tries (default 0-99: about 50 s)")
    parser.add_argument("--kdf-budget", type=float, default=60.0, help="stop the KDF search after this many seconds")
    parser.add_argument("--seed", type=int, default=1, help="the keys' seed, the one to find (default 1)")
    parser.add_argument("--image", type=Path, help="the photo (default: the first LFW face, else the astronaut)")
    parser.add_argument("--size", type=int, default=150, help="the ciphertext's side (default 150)")
    parser.add_argument("--iterations", type=int, default=20, help="encryption steps (default 20)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.kdf = SEED_KDF
    if args.seed < 0:
        sys.exit("--seed must be a non-negative integer")
    run(args)


if __name__ == "__main__":
    main()
