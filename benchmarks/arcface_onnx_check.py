"""Check avp's ONNX path on a full-size ArcFace graph: export an iresnet50 the way arcface_torch does,
load it as `--target arcface --weights FILE.onnx`, and compare outputs and input gradients.

    python -m benchmarks.arcface_onnx_check [--threads 2] [--opset 11] [--images 4]

insightface's w600k_r50.onnx (buffalo_l) cannot be downloaded here, and no iresnet50 weights exist
offline, so this builds arcface_torch's iresnet50 architecture (avp's IResNet, state_dict names as
arcface_torch writes them) with seeded random weights and BatchNorm statistics, exports it with
torch.onnx as arcface_torch's torch2onnx.py does (opset 11, eval mode, batch 1 traced) and loads the
file through avp's arcface target, which converts it with onnx2torch. The reference is the same
network run directly on the same normalization ((x − 0.5)/0.5, L2-normalized output). Input gradients
are compared against the yardstick of fp32 rounding: how far the reference's own gradient moves when
it is computed in fp64; a conversion error within twice that counts as the same order. What it shows: the converted graph is the same function with the same input
gradient, up to rounding, at full size. What it cannot
show: anything about the real weights or insightface's own export.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from avpcli import __version__, load_target
from avpcli.targets.iresnet import IResNet


def seeded_iresnet50(seed: int = 0) -> nn.Module:
    """iresnet50 with every weight and BatchNorm statistic drawn from a seeded generator, in eval mode."""
    model = IResNet(50)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
            elif tensor.ndim > 1:  # conv and linear weights: He-scaled, so activations stay in range
                fan_in = tensor[0].numel()
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            else:  # BatchNorm and PReLU weights
                tensor.copy_(1 + torch.randn(tensor.shape, generator=generator) * 0.05)
    return model.eval()


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).abs().max() / reference.abs().max())


def relative_l2_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--opset", type=int, default=11)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    network = seeded_iresnet50()
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    with tempfile.TemporaryDirectory(prefix="avp-arcface-onnx-") as scratch:
        path = Path(scratch) / "w600k_r50_like.onnx"
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (torch.rand(1, 3, 112, 112),), str(path), dynamo=False,
                              opset_version=args.opset, input_names=["input.1"], dynamic_axes={"input.1": {0: "batch"}})
        exported = time.perf_counter() - began
        size_mib = path.stat().st_size / 2**20
        began = time.perf_counter()
        target = load_target("arcface", path)
        converted = time.perf_counter() - began
    parameters = sum(parameter.numel() for parameter in network.parameters())
    print(f"avp {__version__}; torch {torch.__version__}; {args.threads} threads, CPU; iresnet50 "
          f"({parameters / 1e6:.2f} M parameters, seeded random weights), exported at opset {args.opset} "
          f"({size_mib:.0f} MiB) in {exported:.1f} s, loaded by `--target arcface` in {converted:.1f} s")

    images = torch.rand(args.images, 3, 112, 112, generator=torch.Generator().manual_seed(1))
    direction = torch.randn(args.images, 512, generator=torch.Generator().manual_seed(2))

    def output_and_gradient(model) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = images.clone().requires_grad_(True)
        output = model(inputs)
        (output * direction).sum().backward()
        return output.detach(), inputs.grad

    def reference(inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(network((inputs - 0.5) / 0.5), dim=1)

    converted_output, converted_gradient = output_and_gradient(target)
    reference_output, reference_gradient = output_and_gradient(reference)
    # The yardstick: how far the reference's own input gradient moves between fp32 and fp64. A deep
    # random network with PReLUs is so sensitive that rounding alone moves single gradient entries.
    network.double()
    images, direction = images.double(), direction.double()
    _, exact_gradient = output_and_gradient(reference)
    output_error = relative_error(converted_output, reference_output)
    cosine = nn.functional.cosine_similarity(converted_output, reference_output, dim=1).min().item()
    print(f"{args.images} random 112×112 images: embedding max relative error {output_error:.2e} "
          f"(min cosine {cosine:.6f}; bar ≤ 1e-4 → {'met' if output_error <= 1e-4 else 'NOT met'})")
    for name, error in (("max relative", relative_error), ("relative L2", relative_l2_error)):
        converted = error(converted_gradient.double(), reference_gradient.double())
        converted_exact = error(converted_gradient.double(), exact_gradient)
        rounding = error(reference_gradient.double(), exact_gradient)
        # The converted graph runs other fp32 kernels (BatchNorm folded into the convolutions by the
        # export), so its own rounding error is of the same size as the reference's, not below it.
        print(f"input gradient, {name} error: converted vs reference {converted:.2e}, converted vs fp64 "
              f"reference {converted_exact:.2e}; the reference's own fp32 rounding (fp32 vs fp64) {rounding:.2e} "
              f"→ conversion error {max(converted, converted_exact) / rounding:.2f}× fp32 rounding "
              f"({'the same order' if max(converted, converted_exact) <= 2 * rounding else 'LARGER than rounding'})")

if __name__ == "__main__":
    main()
