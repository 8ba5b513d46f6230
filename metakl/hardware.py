"""What the machine can do fast: the dtype `auto` picks and how many threads to use.

Machines of the same kind differ: some CPUs have native bfloat16 (AVX512-BF16 or AMX), others only AVX2, where
bfloat16 is emulated and ~3x slower than float32 (vLLM on such a CPU: 16 tok/s in bf16, 44 tok/s in float32). Every
place that loads a model resolves its dtype here, so the choice and its reason are the same everywhere.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass
from functools import lru_cache

DTYPES = ("auto", "float32", "bfloat16", "float16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags in /proc/cpuinfo that mean native bfloat16 matmuls
_ARM_BF16_FLAGS = ("bf16", "svebf16")


@dataclass(frozen=True)
class DtypeChoice:
    dtype: str  # float32 | bfloat16 | float16
    reason: str

    def __str__(self) -> str:
        return f"{self.dtype} ({self.reason})"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def native_bf16_flags() -> list[str]:
    """The flags that give this CPU native bfloat16 compute (empty: bfloat16 is emulated)."""
    flags = cpu_flags()
    wanted = _BF16_FLAGS if platform.machine() in ("x86_64", "AMD64", "i686") else _ARM_BF16_FLAGS
    return [f for f in wanted if f in flags]


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def auto_dtype(device: str | None = None) -> DtypeChoice:
    """bfloat16 on a GPU that supports it (else float16) and on CPUs with native bf16; float32 on other CPUs."""
    on_gpu = device not in (None, "cpu") if device is not None else cuda_available()
    if on_gpu:
        import torch

        if torch.cuda.is_bf16_supported():
            return DtypeChoice("bfloat16", f"GPU {torch.cuda.get_device_name()} supports bfloat16")
        return DtypeChoice("float16", f"GPU {torch.cuda.get_device_name()} has no bfloat16")
    native = native_bf16_flags()
    if native:
        return DtypeChoice("bfloat16", f"CPU has native bfloat16 ({', '.join(native)})")
    return DtypeChoice("float32", "CPU has no native bfloat16 (no avx512_bf16/amx_bf16): bfloat16 would be emulated, ~3x slower")


_announced: set[str] = set()


def resolve_dtype(dtype: str | None, device: str | None = None, *, announce: bool = True) -> str:
    """`auto`/None → the dtype for this machine (printed once per process with its reason); else validated."""
    if dtype in (None, "auto"):
        choice = auto_dtype(device)
        if announce and str(choice) not in _announced:
            _announced.add(str(choice))
            print(f"dtype auto: {choice}", file=sys.stderr)
        return choice.dtype
    if dtype not in DTYPES:
        from metakl.errors import UserError

        raise UserError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")
    return dtype


def torch_dtype(dtype: str | None, device: str | None = None, *, announce: bool = True):
    """`resolve_dtype` as a torch.dtype."""
    import torch

    return getattr(torch, resolve_dtype(dtype, device, announce=announce))
