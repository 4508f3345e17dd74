"""Where one step of the attack goes: time per step split into the target, the key, the leak term, the
key's SSIM term, the update, the 8-bit checks and the PNG round trip, beside the floor (the target's
forward + backward alone), and what G costs at other sizes.

    python -m benchmarks.step_profile --key K.safetensors [--target dlib] [--threads 2] [--repeats 30]
                                      [--batch-size 8] [--sizes 16x2,16x1,16x0,12x1,8x2,8x1]

The image is the preimage S⁻¹(x) of an LFW face aligned for the target (identity 151 of lfw.csv's
`multi`: a face the benchmarks' 20 are not), --batch-size copies of it (avp's batch, 8, by default;
the cost does not depend on the pixels), on the CPU, every forward in the precision avp's engine uses
(`--precision auto`). Every figure is a median of --repeats timed calls after 3 untimed ones. The sizes are untrained generators of the default recipe
(ngf × residual blocks): a generator's cost does not depend on its weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import statistics
import time
from typing import Callable

import torch
from PIL import Image

from avpcli import Encryptor, __version__
from avpcli.align import align_faces
from avpcli.engine import LeakPenalty, encrypt_batch
from avpcli.engine.objective import Objective, autocast_forwards
from avpcli.images import load_rgb, to_pil, to_tensor
from avpcli.key.network import KeyGenerator
from benchmarks.common import data_folder, lfw_faces


def median_ms(call: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def forward_backward(module: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor,
                     dtype: torch.dtype | None = None) -> Callable[[], None]:
    def call() -> None:
        moving = image.clone().requires_grad_(True)
        with autocast_forwards(moving, dtype):
            output = module(moving)
        torch.autograd.grad(output.float().sum(), moving)
    return call


def png_round_trip(image: torch.Tensor) -> Callable[[], None]:
    def call() -> None:
        buffer = io.BytesIO()
        to_pil(image).save(buffer, format="PNG")
        to_tensor(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", required=True)
    parser.add_argument("--target", default="dlib")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=8, help="images per step (avp encrypt's default: 8)")
    parser.add_argument("--sizes", default="16x2,16x1,16x0,12x1,8x2,8x1")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    encryptor = Encryptor(args.target, args.key, device="cpu")
    face = lfw_faces(data_folder(), 151)[150]
    original = to_tensor(align_faces(load_rgb(face), encryptor.spec.alignment)[0].image)[None]
    original = original.repeat(args.batch_size, 1, 1, 1).contiguous(memory_format=torch.channels_last)
    start = encryptor.key.preimage(original).clamp(0, 1).contiguous(memory_format=torch.channels_last)
    settings = encryptor.settings
    objective = Objective(original, encryptor.target, encryptor.key, settings, encryptor.spec.loss)
    objective.set_start(start)
    active = torch.arange(args.batch_size)
    dtype = settings.autocast_dtype
    leak = LeakPenalty(original, settings.lowpass_sigma)
    reference_class = objective.reference_class

    parts = {
        "target forward + backward (the floor)": forward_backward(encryptor.target, start, dtype),
        "key G∘S forward + backward": forward_backward(encryptor.key, start, dtype),
        "  of which G alone": forward_backward(encryptor.key.generator, start, dtype),
        "leak term forward + backward": forward_backward(lambda image: leak.penalty(image, active), start),
        # As the engine computes it: against the originals' moments filtered once (metrics.SsimAgainst).
        "key SSIM term forward + backward": forward_backward(lambda image: objective.key_ssim(image, active), start),
        "objective, all terms, forward + backward": forward_backward(
            lambda image: objective.loss(image, original, objective.reference, reference_class, active).value, start),
    }
    rows = {name: median_ms(call, args.repeats) for name, call in parts.items()}
    steps = 20
    no_stop = dataclasses.replace(settings, stop=None, iterations=steps)

    def run_steps() -> None:
        encrypt_batch(original, encryptor.target, encryptor.key, no_stop, encryptor.spec.loss)

    rows["one engine step (20 steps, no checks, / 20)"] = median_ms(run_steps, max(3, args.repeats // 6)) / steps
    with torch.no_grad():
        rows["one 8-bit check"] = median_ms(
            lambda: objective.measure(start, original, objective.reference, reference_class), args.repeats)
    rows["PNG write + read (per face, once)"] = median_ms(png_round_trip(start[0]), args.repeats)

    print(f"avp {__version__} step profile, {time.strftime('%Y-%m-%d %H:%M')}, torch {torch.__version__}, "
          f"{args.threads} threads, CPU, target {args.target}, {original.shape[-1]}×{original.shape[-2]}, "
          f"batch {args.batch_size}, forwards in {dtype or torch.float32}, median of {args.repeats}")
    print(f"key: G ngf {encryptor.loaded_key.generator.ngf}, {encryptor.loaded_key.generator.blocks} blocks")
    for name, milliseconds in rows.items():
        print(f"  {name:<48} {milliseconds:7.1f} ms")
    print("G at other sizes (untrained, forward + backward through G alone):")
    for size in args.sizes.split(","):
        ngf, blocks = (int(part) for part in size.split("x"))
        generator = KeyGenerator(ngf, blocks, "none").freeze().to(memory_format=torch.channels_last)
        print(f"  ngf {ngf:>2}, {blocks} blocks: {median_ms(forward_backward(generator, start, dtype), args.repeats):6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
