"""What the machine can do fast: the dtype `auto` picks and how many threads to use.

Machines of the same kind differ: some CPUs have native bfloat16 (AVX512-BF16 or AMX), others only AVX2, where
bfloat16 is emulated and ~3x slower than float32 (vLLM on such a CPU: 16 tok/s in bf16, 44 tok/s in float32). Every
place that loads a model resolves its dtype here, so the choice and its reason are the same everywhere.

ISA caps. torch (`ATEN_CPU_CAPABILITY`), oneDNN (`ONEDNN_MAX_CPU_ISA`) and MKL (`MKL_ENABLE_INSTRUCTIONS`) can be
told to use fewer CPU features than the CPU has. A cap below bfloat16 (e.g. `avx2` / `AVX2`) makes bfloat16 as slow
as on an AVX2-only CPU, so `auto` then picks float32 too. Setting
`ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2` emulates an AVX2-only machine
(a vLLM server started from that environment inherits the caps).

Threads. torch's default thread count is the host's physical cores, which oversubscribes a process whose affinity
allows fewer, and torch's OpenMP threads spin: on a 2-core machine where another process keeps one core busy, 2
threads generated 4-5x slower than 1 (measured with SmolLM2). `torch_threads()` is the number in-process torch work
should use, decided once when a model is loaded:
- `OMP_NUM_THREADS` when set (the user's choice);
- 1 while a local vLLM server on CPU started by this process runs (vLLM binds its OpenMP threads to every core but
  one and keeps that one for its API process: the cores are taken);
- the number decided when the run started, inside `threads_for_run()` (`metakl run` decides once for all its stages,
  a verb such as `metakl dedup` once for its stage):
  the load a run's own earlier stages raise is not other work, and reading it at each step gave dedup 1 thread after
  annotate, with a core idle for 15 minutes. The decision travels to child processes (Ray workers) as
  `METAKL_RUN_THREADS`;
- else the usable cores (affinity mask) minus the cores already busy (the 1-minute load average, rounded down),
  at least 1.
The vLLM server keeps vLLM's own binding (`VLLM_CPU_OMP_THREADS_BIND=auto`).
"""

from __future__ import annotations

import os
import platform
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterator

DTYPES = ("auto", "float32", "bfloat16", "float16")
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 flags in /proc/cpuinfo that mean native bfloat16 matmuls
_ARM_BF16_FLAGS = ("bf16", "svebf16")
# Values of the ISA caps that rule out native bfloat16 (x86). Anything else (avx512, AVX512_CORE_BF16, AMX, ALL,
# unknown values) is taken as "no cap".
_ATEN_BELOW_BF16 = frozenset({"default", "avx2"})
_ONEDNN_BELOW_BF16 = frozenset({"sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni"})
_EMULATED = "bfloat16 would be emulated, several times slower than float32"
ISA_CAP_VARS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


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
    wanted = _BF16_FLAGS if _x86() else _ARM_BF16_FLAGS
    return [f for f in wanted if f in flags]


def _x86() -> bool:
    return platform.machine() in ("x86_64", "AMD64", "i686")


def isa_caps() -> dict[str, str]:
    """The ISA caps set in the environment ({variable: value}), read at each call."""
    return {var: os.environ[var] for var in ISA_CAP_VARS if os.environ.get(var, "").strip()}


def bf16_caps() -> list[str]:
    """The ISA caps that rule out native bfloat16 here, as `VAR=value` (empty: none)."""
    caps = isa_caps()
    out = []
    aten = caps.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten and (aten in _ATEN_BELOW_BF16 if _x86() else aten == "default"):
        out.append(f"ATEN_CPU_CAPABILITY={caps['ATEN_CPU_CAPABILITY']}")
    onednn = caps.get("ONEDNN_MAX_CPU_ISA", "").strip().lower()
    if onednn and _x86() and onednn in _ONEDNN_BELOW_BF16:
        out.append(f"ONEDNN_MAX_CPU_ISA={caps['ONEDNN_MAX_CPU_ISA']}")
    return out


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
    caps = bf16_caps()
    if native and not caps:
        return DtypeChoice("bfloat16", f"CPU has native bfloat16 ({', '.join(native)})")
    if native:
        verb = "caps" if len(caps) == 1 else "cap"
        return DtypeChoice("float32", f"{' and '.join(caps)} {verb} the CPU below its native bfloat16 "
                                      f"({', '.join(native)}): {_EMULATED}")
    wanted = "/".join(_BF16_FLAGS if _x86() else _ARM_BF16_FLAGS)
    return DtypeChoice("float32", f"CPU has no native bfloat16 (no {wanted}): {_EMULATED}")


_announced: set[str] = set()


def announce_dtype(choice: DtypeChoice, file=None) -> None:
    """Print `dtype auto: <dtype> (<reason>)` once per process (on stderr unless `file` is given)."""
    if str(choice) in _announced:
        return
    _announced.add(str(choice))
    print(f"dtype auto: {choice}", file=file or sys.stderr, flush=True)


def check_dtype(dtype: str | None) -> None:
    """Refuse a dtype name that is not one of DTYPES (None means auto)."""
    if dtype is not None and dtype not in DTYPES:
        from metakl.errors import UserError

        raise UserError(f"dtype '{dtype}': expected one of {', '.join(DTYPES)}")


def resolve_dtype(dtype: str | None, device: str | None = None, *, announce: bool = True) -> str:
    """`auto`/None → the dtype for this machine (printed once per process with its reason); else validated."""
    if dtype in (None, "auto"):
        choice = auto_dtype(device)
        if announce:
            announce_dtype(choice)
        return choice.dtype
    check_dtype(dtype)
    return dtype


def torch_dtype(dtype: str | None, device: str | None = None, *, announce: bool = True):
    """`resolve_dtype` as a torch.dtype."""
    import torch

    return getattr(torch, resolve_dtype(dtype, device, announce=announce))


# --- threads ---------------------------------------------------------------------------------------------------------
_local_servers = 0  # local vLLM servers on CPU that this process started and that still run


def note_local_server(running: bool) -> None:
    """Called by `metakl.llm.serve.VLLMServer` when a server on CPU starts (True) or stops (False)."""
    global _local_servers
    _local_servers = max(0, _local_servers + (1 if running else -1))


def busy_cores() -> int:
    """Cores other work keeps busy now: the 1-minute load average, rounded down (0 where unknown)."""
    try:
        return int(os.getloadavg()[0])
    except (OSError, AttributeError):
        return 0


RUN_THREADS_VAR = "METAKL_RUN_THREADS"  # set inside threads_for_run(): the run's decision, for its child processes


def _load_plan() -> tuple[int, str]:
    cores, busy = usable_cores(), busy_cores()
    return max(1, cores - busy), f"{cores} usable core(s) - {busy} busy (load average)"


def thread_plan() -> tuple[int, str]:
    """`torch_threads()` and why (see the module docstring)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    if _local_servers > 0:
        return 1, "a local vLLM server on CPU holds the cores"
    run = os.environ.get(RUN_THREADS_VAR, "").strip()
    if run.isdigit() and int(run) > 0:
        return int(run), "decided when this run started"
    return _load_plan()


@contextmanager
def threads_for_run() -> Iterator[int]:
    """Decide the thread count once, from the load when a run starts, for all of its steps (nested: the outer
    run's decision stands)."""
    if os.environ.get(RUN_THREADS_VAR, "").strip().isdigit():
        yield int(os.environ[RUN_THREADS_VAR])
        return
    threads, _ = _load_plan()
    os.environ[RUN_THREADS_VAR] = str(threads)
    try:
        yield threads
    finally:
        os.environ.pop(RUN_THREADS_VAR, None)


def torch_threads() -> int:
    """Threads for in-process torch work: OMP_NUM_THREADS when set, 1 while a local vLLM server on CPU runs, else
    the usable cores not already busy (at least 1)."""
    return thread_plan()[0]
