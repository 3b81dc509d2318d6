"""``--amp`` on the CPU.

float16 and bfloat16 are fast on GPUs; on a CPU they are only fast with AVX-512 or AMX,
elsewhere torch emulates them and a step is several times slower than in float32 (a ViT-L
dry run took over 10 minutes). So a dry run on the CPU computes in float32 (it checks the
configuration, not the precision: the GPU run applies ``--amp``), and a real CPU run that
asks for a low precision the CPU does not support natively says so once.
"""
from __future__ import annotations

import torch

from gpaco.engine.logging import print_main

__all__ = ["native_low_precision", "resolve_amp"]

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
