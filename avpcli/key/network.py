"""The network: G, a CycleGAN/pix2pix ResNet generator trained to reproduce its input, and the key model G∘S."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from avpcli.scramble import Scramble

ARCHITECTURE = "resnet-generator"
NORMS = ("batch", "instance", "none")
# The generator halves the size twice, so it works on multiples of 4 (other sizes are padded).
SIZE_MULTIPLE = 4


def _norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalization after each conv: 'batch' (a fixed affine in eval mode), 'instance', or 'none'."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=False)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


class ResidualBlock(nn.Module):
    """x + (reflect-pad, 3×3 conv, norm, ReLU, reflect-pad, 3×3 conv, norm)(x) at a fixed width.

    Args:
        channels: feature maps in and out.
        norm: 'batch', 'instance' or 'none'.
    """

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        bias = norm != "batch"  # BatchNorm's own shift makes a conv bias redundant.
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), _norm_layer(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), _norm_layer(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def resnet_generator(ngf: int = 64, blocks: int = 9, norm: str = "batch") -> nn.Sequential:
    """The CycleGAN/pix2pix ResNet generator, mapping [-1,1] images to [-1,1] images of the same size.

    Args:
        ngf: feature maps after the first conv; the residual blocks work at 4·ngf.
        blocks: residual blocks at the bottleneck (1/4 resolution).
        norm: 'batch', 'instance' or 'none'; with 'batch' the convs carry no bias.

    Input height and width must be multiples of 4 and at least 8 (see KeyGenerator for other sizes).
    """
    bias = norm != "batch"
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7, bias=bias), _norm_layer(norm, ngf), nn.ReLU(inplace=True),
    ]
    for factor in (1, 2):  # two stride-2 convs: ngf → 2·ngf → 4·ngf
        layers += [nn.Conv2d(ngf * factor, ngf * factor * 2, 3, stride=2, padding=1, bias=bias),
                   _norm_layer(norm, ngf * factor * 2), nn.ReLU(inplace=True)]
    layers += [ResidualBlock(ngf * 4, norm) for _ in range(blocks)]
    for factor in (4, 2):  # two transposed convs back: 4·ngf → 2·ngf → ngf
        layers += [nn.ConvTranspose2d(ngf * factor, ngf * factor // 2, 3, stride=2, padding=1, output_padding=1,
                                      bias=bias),
                   _norm_layer(norm, ngf * factor // 2), nn.ReLU(inplace=True)]
    layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
    return nn.Sequential(*layers)


def _frozen(module: nn.Module) -> nn.Module:
    """The module in eval mode with no gradients for its parameters (returned for chaining)."""
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class KeyGenerator(nn.Module):
    """G as the engine sees it: RGB images in [0,1], (N,3,H,W) → (N,3,H,W) in [0,1].

    Sizes that are not multiples of 4 are reflect-padded up to one and cropped back, so any
    H, W ≥ 8 works. Each image's output depends only on that image once the module is in eval mode
    (BatchNorm then uses its stored statistics).
    """

    def __init__(self, ngf: int, blocks: int, norm: str) -> None:
        super().__init__()
        self.ngf, self.blocks, self.norm = ngf, blocks, norm
        self.network = resnet_generator(ngf, blocks, norm)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if min(height, width) < 8:
            raise ValueError(f"the key needs images of at least 8×8 pixels, got {height}×{width}")
        pad_bottom = -height % SIZE_MULTIPLE
        pad_right = -width % SIZE_MULTIPLE
        x = images * 2 - 1
        if pad_bottom or pad_right:
            x = F.pad(x, (0, pad_right, 0, pad_bottom), mode="reflect")
        y = (self.network(x) + 1) / 2
        return y[..., :height, :width]

    def freeze(self) -> KeyGenerator:
        """Eval mode and no gradients for the parameters: how encryption and decryption use G."""
        return _frozen(self)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable-or-frozen parameters (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in module.parameters())


class KeyModel(nn.Module):
    """The key as encryption and decryption use it: x′ ↦ G(S(x′)), or G(x′) for a key without scramble.

    Per image, the nonce's 4 pixels of G(S(x′)) are filled from the row below (Scramble.fill_nonce).

    Args:
        generator: the frozen G.
        scramble: the key's secret scramble S (avpcli.scramble), or None for the paper's plain G.
    """

    def __init__(self, generator: KeyGenerator, scramble: Scramble | None) -> None:
        super().__init__()
        self.generator = generator
        self.scramble = scramble

    @property
    def scrambles(self) -> bool:
        return self.scramble is not None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.scramble is None:
            return self.generator(images)
        return self.scramble.fill_nonce(self.generator(self.scramble(images)))

    def preimage(self, originals: torch.Tensor) -> torch.Tensor:
        """An input that the key maps close to `originals`: S⁻¹(x) (with x's nonce, for a per-image
        scramble), since G is trained to copy its input."""
        return self.scramble.preimage(originals) if self.scramble is not None else originals.clone()

    def stamp(self, images: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        """Starts of an encryption with each original's nonce in place (a per-image scramble), else as they are."""
        return self.scramble.stamp(images, originals) if self.scramble is not None else images

    def pinned(self, height: int, width: int, device: torch.device | str) -> torch.Tensor | None:
        """(1, 1, H, W) True where an encryption must leave the pixels as stamped (the nonce), or None."""
        return self.scramble.pinned(height, width, device) if self.scramble is not None else None

    def verify(self, images: torch.Tensor) -> torch.Tensor | None:
        """Per ciphertext (N,), whether its nonce's key check holds for this key and its size; None where the
        key's scheme carries no check (no scramble, per-size and nonce-v2 keys): then nothing tells a
        damaged ciphertext or another key's from a good one."""
        return self.scramble.verify(images) if self.scramble is not None else None

    def freeze(self) -> KeyModel:
        return _frozen(self)
