"""Where the work runs: the device a name stands for, the CPU's name, whether it has bf16
instructions, and exact fp32 products on CUDA."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA device when there is one, else the CPU; 'cpu' or
    'cuda[:N]'. A CUDA device that is not there is a `UsageError` saying so (rather than
    a failure later, e.g. when a checkpoint is mapped to it)."""
    from .errors import UsageError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA GPU is visible to torch here "
                             "(torch.cuda.is_available() is False); use --device cpu, or "
                             "--device auto to take a GPU only when there is one")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} "
                             f"CUDA device(s), numbered from 0")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: use auto, cpu or cuda[:N]")
    return device


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 products on this CPU's own instructions (AVX-512 BF16 or
    AMX); elsewhere bf16 autocast is emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """Full fp32 products inside the block: cuDNN convolutions default to TF32 on CUDA
    (matrix products do not); nothing changes on CPU."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm
