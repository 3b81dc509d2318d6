"""``--amp`` on the CPU, and where ``--channels-last`` is on by default.

float16 and bfloat16 are fast on GPUs; on a CPU they are only fast with AVX-512 or AMX,
elsewhere torch emulates them and a step is several times slower than in float32 (a ViT-L
dry run took over 10 minutes). So a dry run on the CPU computes in float32 (it checks the
configuration, not the precision: the GPU run applies ``--amp``), and a real CPU run that
asks for a low precision the CPU does not support natively says so once.

``--channels-last`` (NHWC activations and convolution weights) changes the memory order,
not the arithmetic. Left unset it is on where the convolutions are faster that way: on the
CPU (oneDNN's native layout: a ResNet-50 training step takes ~15% less time) and on CUDA
GPUs with tensor cores for the run's precision (compute capability 8.0+, whose float32
convolutions use TF32, or 7.0+ with ``--amp``); off on older GPUs, where NCHW kernels win.
"""
from __future__ import annotations

import contextlib

import torch

from gpaco.engine.logging import print_main

__all__ = ["native_low_precision", "resolve_amp", "resolve_channels_last"]

#: torch.backends.cpu.get_cpu_capability() values with native bfloat16/float16 arithmetic.
_NATIVE = ("AVX512", "AMX", "SVE")


def native_low_precision() -> bool:
    """Whether this CPU computes float16/bfloat16 natively (AVX-512, AMX, ARM SVE)."""
    capability = torch.backends.cpu.get_cpu_capability().upper()
    return any(k in capability for k in _NATIVE)


def resolve_amp(amp: str, device: torch.device, *, dry_run: bool) -> str:
    """The autocast dtype a run uses for ``--amp amp`` on ``device`` (see the module docstring)."""
    if amp == "none" or device.type != "cpu":
        return amp
    if dry_run:
        print_main(f"dry run on the CPU: computing in float32 (--amp {amp} applies to the GPU run)")
        return "none"
    if not native_low_precision():
        print_main(f"note: --amp {amp} on a CPU without AVX-512/AMX (torch reports "
                   f"{torch.backends.cpu.get_cpu_capability()}): {amp} is emulated and slower than float32 "
                   f"(--amp none)")
    return amp


def resolve_channels_last(flag, device: torch.device, amp: str) -> bool:
    """``--channels-last`` / ``--no-channels-last`` as given, else the default of the module
    docstring for ``device`` and the autocast dtype ``amp``."""
    if flag is not None:
        return bool(flag)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8 or (major >= 7 and amp != "none")
    return False


def use_cudnn_benchmark(device: torch.device, *, deterministic: bool) -> bool:
    """cuDNN autotuning in training: on for CUDA unless ``--deterministic`` (autotuned
    algorithms are not bit-reproducible). Training shapes are static (a fixed crop and
    per-process batch), so each layer's algorithm is timed once and reused, as every original
    training script does."""
    return device.type == "cuda" and not deterministic


@contextlib.contextmanager
def no_cudnn_autotune():
    """cuDNN autotuning off inside (evaluation of variable-size images: every new shape would be
    timed again, costing more than it saves); the previous setting is restored after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
