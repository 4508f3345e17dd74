"""`--target dlib`: dlib's face-recognition ResNet-29, read from its own .dat file and rebuilt in torch.

dlib itself is not needed. The file (`dlib_face_recognition_resnet_model_v1.dat`, shipped by the PyPI
package face-recognition-models) is a `dlib::serialize` byte stream; `read_dlib_model` parses it with
numpy and checks every layer's hyper-parameters against the network type hard-coded below, which the
file cannot describe (dlib stores no tag or skip ids). See docs/DLIB.md for the format and the checks.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avpcli.errors import TargetError
from avpcli.targets import TargetSpec, register_target

MODEL_FILE_NAME = "dlib_face_recognition_resnet_model_v1.dat"
# dlib's input layer subtracts these per-channel means (R, G, B on the 0..255 scale) and divides by 256.
INPUT_MEANS_255 = (122.782, 117.001, 104.298)
INPUT_SCALE_255 = 256.0
CHIP_SIZE = 150

# ---------------------------------------------------------------------------------------------------
# The network type (dlib tools/python/src/face_recognition.cpp), as the file's layers appear in
# input -> output order. "tag" and "skip" carry no data in the file but do appear in its nesting.


@dataclass(frozen=True)
class _Layer:
    kind: str  # con, affine, relu, max_pool, avg_pool, add_prev, fc, tag, skip
    filters: int = 0  # con / fc outputs
    kernel: int = 0  # con / pool window (0 for avg_pool_everything)
    stride: int = 1


def _residual(filters: int, downsample: bool) -> list[_Layer]:
    """ares: tag1, con3x3/1, affine, relu, con3x3/1, affine, add_prev1, relu.

    ares_down: the first conv has stride 2, and the skip is tag2, skip1 (back to tag1's input),
    avg_pool2x2/2 before add_prev2.
    """
    branch = [
        _Layer("tag"),
        _Layer("con", filters, 3, 2 if downsample else 1),
        _Layer("affine"),
        _Layer("relu"),
        _Layer("con", filters, 3, 1),
        _Layer("affine"),
    ]
    skip = [_Layer("tag"), _Layer("skip"), _Layer("avg_pool", 0, 2, 2)] if downsample else []
    return branch + skip + [_Layer("add_prev"), _Layer("relu")]


# (filters, downsample) for every residual block, input to output.
_BLOCKS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)  # fmt: skip


def _network_layers() -> list[_Layer]:
    layers = [_Layer("con", 32, 7, 2), _Layer("affine"), _Layer("relu"), _Layer("max_pool", 0, 3, 2)]
    for filters, downsample in _BLOCKS:
        layers += _residual(filters, downsample)
    layers += [_Layer("avg_pool", 0, 0, 1), _Layer("fc", 128)]
    return layers


# ---------------------------------------------------------------------------------------------------
# The dlib::serialize primitives (dlib/serialize.h, dlib/float_details.h, dlib/cuda/tensor.h).


class _FormatError(Exception):
    """The byte stream is not what this network's file must contain."""


class _Reader:
    """Sequential reader over a dlib::serialize byte stream (little-endian)."""

    def __init__(self, data: bytes):
        self.data = data
        self.position = 0

    def _take(self, count: int) -> bytes:
        end = self.position + count
        if count < 0 or end > len(self.data):
            raise _FormatError(f"file ends early (wanted {count} bytes at offset {self.position})")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def integer(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size < 1 or size > 8 or control & 0x70:
            raise _FormatError(f"bad integer control byte 0x{control:02x} at offset {self.position - 1}")
        value = int.from_bytes(self._take(size), "little")
        return -value if control & 0x80 else value

    def boolean(self) -> bool:
        byte = self._take(1)
        if byte not in (b"0", b"1"):
            raise _FormatError(f"bad bool byte {byte!r} at offset {self.position - 1}")
        return byte == b"1"

    def string(self) -> str:
        length = self.integer()
        if length > 256:
            raise _FormatError(f"implausible string length {length} at offset {self.position}")
        return self._take(length).decode("latin-1")

    def real(self) -> float:
        # float_details: the int64 mantissa first, then the int16 exponent.
        mantissa, exponent = self.integer(), self.integer()
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
        if exponent in special:
            return special[exponent]
        return math.ldexp(mantissa, exponent)

    def tensor(self) -> np.ndarray:
        version = self.integer()
        if version != 2:
            raise _FormatError(f"unsupported tensor version {version} at offset {self.position}")
        shape = tuple(self.integer() for _ in range(4))
        count = math.prod(shape)
        if min(shape) < 0 or count * 4 > len(self.data) - self.position:
            raise _FormatError(f"bad tensor shape {shape}")
        return np.frombuffer(self._take(4 * count), dtype="<f4").reshape(shape)

    def alias(self) -> tuple[int, int, int, int]:
        version = self.integer()
        if version != 1:
            raise _FormatError(f"unsupported alias_tensor version {version}")
        return tuple(self.integer() for _ in range(4))  # type: ignore[return-value]

    def expect(self, value: int, what: str) -> None:
        found = self.integer()
        if found != value:
            raise _FormatError(f"expected {what} = {value}, found {found} at offset {self.position}")


# ---------------------------------------------------------------------------------------------------
# Reading the file.


@dataclass(frozen=True)
class DlibModelParameters:
    """Everything the torch network needs, as float32 numpy arrays, input to output."""

    input_means_255: tuple[float, float, float]
    convolutions: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight (out,in,kh,kw), bias (out,))
    affines: tuple[tuple[np.ndarray, np.ndarray], ...]  # (gamma (C,), beta (C,))
    fc_weight: np.ndarray  # (256, 128): descriptor = features @ fc_weight
    distance_threshold: float


# The details-record version strings each layer kind may carry (older ones are what the released file has).
_DETAILS_VERSIONS = {
    "con": ("con_4", "con_5", "con_6"),
    "affine": ("affine_", "affine_2"),
    "relu": ("relu_", "relu_2"),
    "max_pool": ("max_pool_2",),
    "avg_pool": ("avg_pool_2",),
    "add_prev": ("add_prev_",),
    "fc": ("fc_2", "fc_3"),
}


def _read_con(reader: _Reader, version: str, layer: _Layer, in_channels: int) -> tuple[np.ndarray, np.ndarray]:
    params = reader.tensor().reshape(-1)
    filters, rows, cols = reader.integer(), reader.integer(), reader.integer()
    stride_y, stride_x = reader.integer(), reader.integer()
    padding_y, padding_x = reader.integer(), reader.integer()
    weight_shape = reader.alias()
    reader.alias()  # biases: (1, filters), right after the weights in params
    for _ in range(4):  # learning-rate and weight-decay multipliers
        reader.real()
    use_bias = reader.boolean() if version in ("con_5", "con_6") else True
    if version == "con_6":
        reader.boolean()  # use_relu (a fused relu; this network has separate relu layers)
    padding = 0 if layer.stride != 1 else layer.kernel // 2  # dlib con_ default
    expected = (layer.filters, layer.kernel, layer.kernel, layer.stride, layer.stride, padding, padding)
    found = (filters, rows, cols, stride_y, stride_x, padding_y, padding_x)
    if found != expected:
        raise _FormatError(f"convolution (filters, kh, kw, sy, sx, py, px) is {found}, expected {expected}")
    weight_size = filters * in_channels * rows * cols
    if weight_shape != (filters, in_channels, rows, cols) or params.size != weight_size + (filters if use_bias else 0):
        raise _FormatError(f"convolution weights {weight_shape} / {params.size} values do not fit {expected}")
    weight = params[:weight_size].reshape(weight_shape)
    bias = params[weight_size:] if use_bias else np.zeros(filters, dtype=np.float32)
    return weight, bias


def _read_affine(reader: _Reader, version: str, channels: int) -> tuple[np.ndarray, np.ndarray]:
    params = reader.tensor().reshape(-1)
    gamma_shape = reader.alias()
    reader.alias()  # beta, right after gamma in params
    mode = reader.integer()
    if version == "affine_2":
        reader.boolean()  # disabled flag (never set in a trained network)
    if mode != 0 or params.size != 2 * channels or math.prod(gamma_shape) != channels:
        raise _FormatError(f"affine layer (mode {mode}, {params.size} values) does not fit {channels} channels")
    return params[:channels], params[channels:]


def _read_pool(reader: _Reader, layer: _Layer) -> None:
    found = tuple(reader.integer() for _ in range(6))
    expected = (layer.kernel, layer.kernel, layer.stride, layer.stride, 0, 0)
    if found != expected:
        raise _FormatError(f"{layer.kind} (nr, nc, sy, sx, py, px) is {found}, expected {expected}")


def _read_fc(reader: _Reader, version: str) -> np.ndarray:
    outputs, inputs = reader.integer(), reader.integer()
    params = reader.tensor().reshape(-1)
    weight_shape = reader.alias()
    reader.alias()  # biases
    bias_mode = reader.integer()
    for _ in range(4):
        reader.real()
    if version == "fc_3":
        reader.boolean()  # use_bias
    if (outputs, inputs) != (128, 256) or bias_mode != 1 or math.prod(weight_shape) != 256 * 128 or params.size < 256 * 128:
        raise _FormatError(f"fc layer ({outputs} outputs, {inputs} inputs, bias mode {bias_mode}) is not 256->128 without bias")
    return params[: 256 * 128].reshape(256, 128)


def _skip_trailer(reader: _Reader, tensors: int) -> None:
    for _ in range(3):
        reader.boolean()
    for _ in range(tensors):
        reader.tensor()


def _parse(data: bytes) -> DlibModelParameters:
    reader = _Reader(data)
    layers = _network_layers()
    reader.expect(1, "loss layer version")
    if reader.string() != "loss_metric_2":
        raise _FormatError("the outer layer is not loss_metric_2")
    reader.real()  # margin
    distance_threshold = reader.real()
    # The nesting header: one version per layer, output side first; the innermost is the conv1 add_layer.
    for position in range(len(layers) - 1, 0, -1):
        wrapper = 1 if layers[position].kind in ("tag", "skip") else 2
        reader.expect(wrapper, f"nesting version of {layers[position].kind} (layer {position} from the input)")
    innermost_version = reader.integer()
    if innermost_version not in (2, 3):
        raise _FormatError(f"innermost layer version {innermost_version}")
    if reader.string() != "input_rgb_image_sized":
        raise _FormatError("the input layer is not input_rgb_image_sized")
    means = (reader.real(), reader.real(), reader.real())
    size = (reader.integer(), reader.integer())
    if size != (CHIP_SIZE, CHIP_SIZE):
        raise _FormatError(f"input size {size}, expected 150x150")

    convolutions, affines = [], []
    fc_weight = None
    channels = 3
    for index, layer in enumerate(layers):
        if layer.kind in ("tag", "skip"):
            continue
        version = reader.string()
        accepted = _DETAILS_VERSIONS[layer.kind]
        if version not in accepted:
            raise _FormatError(f"found layer {version!r} where the network has {layer.kind} ({', '.join(accepted)})")
        if layer.kind == "con":
            convolutions.append(_read_con(reader, version, layer, channels))
            channels = layer.filters
        elif layer.kind == "affine":
            affines.append(_read_affine(reader, version, channels))
        elif layer.kind == "relu" and version == "relu_2":
            reader.boolean()  # disabled flag
        elif layer.kind in ("max_pool", "avg_pool"):
            _read_pool(reader, layer)
        elif layer.kind == "fc":
            fc_weight = _read_fc(reader, version)
        # Trailer: x_grad, cached_output and grad_final (innermost) or params_grad (the others).
        _skip_trailer(reader, 3)
        if index == 0 and innermost_version == 3:
            reader.integer()  # sample expansion factor
    if reader.position != len(data):
        raise _FormatError(f"{len(data) - reader.position} unexpected bytes after the network")
    return DlibModelParameters(
        input_means_255=means,  # type: ignore[arg-type]
        convolutions=tuple(convolutions),
        affines=tuple(affines),
        fc_weight=fc_weight,  # type: ignore[arg-type]
        distance_threshold=distance_threshold,
    )


@functools.lru_cache(maxsize=2)
def _read_cached(path: str, size: int, modified_ns: int) -> DlibModelParameters:
    return _parse(Path(path).read_bytes())


def read_dlib_model(path: Path) -> DlibModelParameters:
    """Parse a dlib face-recognition ResNet .dat file; a TargetError if it is not one (cached per file)."""
    try:
        stat = path.stat()
    except OSError as error:
        raise TargetError(f"cannot read the dlib model {path}: {error.strerror or error}") from None
    try:
        return _read_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    except _FormatError as error:
        raise TargetError(
            f"{path} is not dlib's face-recognition ResNet ({MODEL_FILE_NAME}) or is damaged: {error}"
        ) from None
    except OSError as error:
        raise TargetError(f"cannot read the dlib model {path}: {error.strerror or error}") from None


def default_model_path() -> Path:
    """Where face-recognition-models keeps the file; found without importing the package.

    Importing face_recognition_models runs pkg_resources, which setuptools >= 81 no longer has.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise TargetError(
            f"the dlib target needs {MODEL_FILE_NAME}: install it with "
            "`pip install face-recognition-models`, or pass --weights PATH to your copy of the file"
        )
    path = Path(spec.origin).parent / "models" / MODEL_FILE_NAME
    if not path.is_file():
        raise TargetError(
            f"{path} is missing: reinstall it with `pip install --force-reinstall face-recognition-models`, "
            "or pass --weights PATH to your copy of the file"
        )
    return path


# ---------------------------------------------------------------------------------------------------
# The torch network.


class _Affine(nn.Module):
    """dlib's affine layer in CONV_MODE: gamma[c]·x + beta[c] (batch norm folded at training's end)."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray):
        super().__init__()
        self.gamma = nn.Parameter(torch.tensor(gamma).view(1, -1, 1, 1))
        self.beta = nn.Parameter(torch.tensor(beta).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


def _conv(weight: np.ndarray, bias: np.ndarray, stride: int) -> nn.Conv2d:
    out_channels, in_channels, kernel, _ = weight.shape
    padding = 0 if stride != 1 else kernel // 2
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(weight))
        conv.bias.copy_(torch.tensor(bias))
    return conv


def add_top_left(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: the output has the larger size in every dimension; missing elements count as 0.

    Both inputs are aligned at the top-left (channel 0, row 0, column 0). This pads channels in the
    downsampling blocks and, in the last two stages, adds a 3x3 (1x1) conv path to a 4x4 (2x2) skip.
    """
    shape = [max(sa, sb) for sa, sb in zip(a.shape, b.shape)]

    def padded(t: torch.Tensor) -> torch.Tensor:
        # F.pad takes (last dim left, right, ..., ) pairs; pad only at the end of C, H, W.
        amounts: list[int] = []
        for dim in (3, 2, 1):
            amounts += [0, shape[dim] - t.shape[dim]]
        return F.pad(t, amounts) if any(amounts) else t

    return padded(a) + padded(b)


class _ResidualBlock(nn.Module):
    """ares / ares_down: relu(add_prev(skip, affine(conv(relu(affine(conv(x))))))."""

    def __init__(self, convolutions, affines, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = _conv(*convolutions[0], stride=2 if downsample else 1)
        self.affine1 = _Affine(*affines[0])
        self.conv2 = _conv(*convolutions[1], stride=1)
        self.affine2 = _Affine(*affines[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.downsample else x
        return F.relu(add_top_left(y, skip))


class DlibFaceResNet(nn.Module):
    """dlib's face-recognition ResNet-29 on normalized input ((pixel − mean)/256, RGB, 150×150).

    Returns the raw 128-D descriptor (not L2-normalized); dlib calls two faces the same person
    when the Euclidean distance is below 0.6.
    """

    def __init__(self, parameters: DlibModelParameters):
        super().__init__()
        convolutions, affines = parameters.convolutions, parameters.affines
        self.stem_conv = _conv(*convolutions[0], stride=2)
        self.stem_affine = _Affine(*affines[0])
        blocks = []
        for index, (_, downsample) in enumerate(_BLOCKS):
            pair = slice(1 + 2 * index, 3 + 2 * index)
            blocks.append(_ResidualBlock(convolutions[pair], affines[pair], downsample))
        self.blocks = nn.Sequential(*blocks)
        self.fc_weight = nn.Parameter(torch.tensor(parameters.fc_weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.stem_affine(self.stem_conv(x))), 3, 2)
        x = self.blocks(x)
        return x.mean(dim=(2, 3)) @ self.fc_weight


def build_dlib_network(path: Path) -> DlibFaceResNet:
    """Read the .dat file at `path` and return the torch network (a TargetError if it cannot)."""
    parameters = read_dlib_model(path)
    if any(abs(found - documented) > 1e-3 for found, documented in zip(parameters.input_means_255, INPUT_MEANS_255)):
        raise TargetError(
            f"{path} normalizes input with means {parameters.input_means_255}, not dlib's {INPUT_MEANS_255}; "
            "avp's dlib target supports only the released model's normalization"
        )
    return DlibFaceResNet(parameters)


@register_target(
    TargetSpec(
        name="dlib",
        description="dlib face-recognition ResNet-29 (128-D, Euclidean < 0.6), 150x150 RGB dlib chip",
        input_size=(CHIP_SIZE, CHIP_SIZE),
        channel_order="rgb",
        mean=tuple(m / 255 for m in INPUT_MEANS_255),  # type: ignore[arg-type]
        std=(INPUT_SCALE_255 / 255,) * 3,
        loss="embedding",
        normalize_embedding=False,
        match_threshold=0.6,
        alignment="dlib",
        # Without it an encrypted image among plain photos was found 3.1 pt more often (docs/RESULTS.md).
        stop_past_original=True,
        weights=f"PyPI face-recognition-models ({MODEL_FILE_NAME})",
    )
)
def build_dlib(weights: Path | None) -> nn.Module:
    return build_dlib_network(Path(weights) if weights is not None else default_model_path())
