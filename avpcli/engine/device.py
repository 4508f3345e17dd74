"""Where and how the models run: the device, the forwards' precision, and the models' memory layout.

The one place for these: the Encryptor, decryption and the CLI all resolve devices and precisions here.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from avpcli.errors import UsageError


def resolve_device(device: str = "auto") -> str:
    """'auto' is CUDA when torch sees a GPU (under torchrun each process takes its LOCAL_RANK's), else
    the CPU; asking for CUDA without one is a UsageError."""
    if device == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ['LOCAL_RANK'])}" if "LOCAL_RANK" in os.environ else "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"device {device} was asked for but torch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"the device is auto, cpu, cuda or cuda:N, not {device!r}")
    return device


def precision_dtype(precision: str, device: str) -> torch.dtype | None:
    """The model forwards' dtype for a precision name, with what cannot be asked for as UsageErrors."""
    if precision not in PRECISIONS:
        raise UsageError(f"the precision is one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and not device.startswith("cuda"):
        raise UsageError("precision fp16 needs a CUDA device; on a CPU use bf16 or fp32")
    return autocast_dtype_for(precision, device)


def prepare_models(target: nn.Module, key: nn.Module, device: str | torch.device, compile_models: bool = False):
    """NHWC weights everywhere; on CUDA also cuDNN autotuning and, on request, torch.compile.

    Returns (target, key); the modules are converted in place, and compiled wrappers are new objects.
    """
    target = target.to(memory_format=torch.channels_last)
    key = key.to(memory_format=torch.channels_last)
    if torch.device(device).type == "cuda":
        torch.backends.cudnn.benchmark = True
        if compile_models:
            target = torch.compile(target)
            if isinstance(getattr(key, "scramble", None), nn.Module) and isinstance(getattr(key, "generator", None), nn.Module):
                # Only G: a per-image scramble looks its plans up in Python, once per batch.
                key.generator = torch.compile(key.generator)
            else:
                key = torch.compile(key)
    return target, key


PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def autocast_dtype_for(precision: str, device: str | torch.device) -> torch.dtype | None:
    """The forwards' dtype that `--precision` names: 'auto' is default_autocast_dtype(device), 'fp32' None."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision is one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return default_autocast_dtype(device)
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[precision]


def default_autocast_dtype(device: str | torch.device) -> torch.dtype | None:
    """bf16 where it pays (CUDA, and CPUs with bf16 instructions), else None (full precision)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if kind == "cpu" and cpu_has_bf16() else None


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX-512 BF16 or AMX): without them oneDNN emulates bf16
    and autocast does not pay."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these probes
        return False
