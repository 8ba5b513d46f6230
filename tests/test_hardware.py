"""metakl.hardware: the dtype `auto` picks (and why), ISA caps that emulate an AVX2-only CPU, thread counts."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from metakl import hardware
from metakl.errors import UserError

CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
x86_only = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86 ISA caps")


@pytest.fixture
def no_caps(monkeypatch):
    for var in hardware.ISA_CAP_VARS:
        monkeypatch.delenv(var, raising=False)


def _cpu(monkeypatch, flags: set[str], machine: str = "x86_64") -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(platform, "machine", lambda: machine)


def test_native_bf16_cpu_picks_bfloat16(monkeypatch, no_caps):
    _cpu(monkeypatch, {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    choice = hardware.auto_dtype("cpu")
    assert choice.dtype == "bfloat16" and "avx512_bf16, amx_bf16" in choice.reason


def test_avx2_only_cpu_picks_float32(monkeypatch, no_caps):
    _cpu(monkeypatch, {"avx", "avx2", "fma"})
    choice = hardware.auto_dtype("cpu")
    assert choice.dtype == "float32"
    assert "no native bfloat16" in choice.reason and "emulated" in choice.reason


@pytest.mark.parametrize("caps, named", [
    ({"ATEN_CPU_CAPABILITY": "avx2"}, ["ATEN_CPU_CAPABILITY=avx2"]),
    ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, ["ONEDNN_MAX_CPU_ISA=AVX2"]),
    ({"ONEDNN_MAX_CPU_ISA": "avx512_core_vnni"}, ["ONEDNN_MAX_CPU_ISA=avx512_core_vnni"]),
    (CAPS, ["ATEN_CPU_CAPABILITY=avx2", "ONEDNN_MAX_CPU_ISA=AVX2"]),
])
def test_isa_caps_below_bf16_pick_float32_on_a_bf16_cpu(monkeypatch, no_caps, caps, named):
    _cpu(monkeypatch, {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    for var, value in caps.items():
        monkeypatch.setenv(var, value)
    choice = hardware.auto_dtype("cpu")
    assert choice.dtype == "float32"
    assert all(n in choice.reason for n in named) and "below its native bfloat16" in choice.reason
    assert hardware.bf16_caps() == named


@pytest.mark.parametrize("caps", [
    {"ATEN_CPU_CAPABILITY": "avx512"},
    {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"},
    {"ONEDNN_MAX_CPU_ISA": "ALL"},
    {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},  # MKL does not run bfloat16 matmuls: not a reason for float32
])
def test_caps_that_keep_bf16(monkeypatch, no_caps, caps):
    _cpu(monkeypatch, {"avx512_bf16", "amx_bf16"})
    for var, value in caps.items():
        monkeypatch.setenv(var, value)
    assert hardware.auto_dtype("cpu").dtype == "bfloat16"
    assert hardware.isa_caps() == caps


def test_arm_flags(monkeypatch, no_caps):
    _cpu(monkeypatch, {"asimd", "sve", "bf16"}, machine="aarch64")
    assert hardware.auto_dtype("cpu").dtype == "bfloat16"
    _cpu(monkeypatch, {"asimd"}, machine="aarch64")
    choice = hardware.auto_dtype("cpu")
    assert choice.dtype == "float32" and "bf16/svebf16" in choice.reason


def test_resolve_and_check(monkeypatch, capsys, no_caps):
    _cpu(monkeypatch, {"avx2"})
    monkeypatch.setattr(hardware, "_announced", set())
    assert hardware.resolve_dtype("auto", "cpu") == "float32"
    assert hardware.resolve_dtype(None, "cpu") == "float32"
    err = capsys.readouterr().err
    assert err.count("dtype auto: float32 (") == 1  # said once per process, with its reason
    assert hardware.resolve_dtype("bfloat16", "cpu") == "bfloat16"  # an explicit choice is kept
    with pytest.raises(UserError, match="dtype 'bf16': expected one of auto, float32, bfloat16, float16"):
        hardware.resolve_dtype("bf16")


def test_real_machine_and_real_caps_in_a_fresh_process():
    """The real /proc/cpuinfo and the real variables: auto follows the CPU; the caps force float32 on any CPU."""
    code = "from metakl import hardware; import json; c = hardware.auto_dtype('cpu'); print(json.dumps([c.dtype, c.reason]))"
    env = {k: v for k, v in os.environ.items() if k not in hardware.ISA_CAP_VARS}
    plain = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                      check=True).stdout)
    assert plain[0] == ("bfloat16" if hardware.native_bf16_flags() else "float32")
    capped = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       env={**env, **CAPS}, check=True).stdout)
    assert capped[0] == "float32"
    if hardware.native_bf16_flags() and platform.machine() in ("x86_64", "AMD64"):
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in capped[1]


@x86_only
def test_caps_really_make_bfloat16_slow():
    """What `auto` relies on: under ONEDNN_MAX_CPU_ISA=AVX2 torch's bfloat16 matmul is emulated, several times
    slower than float32 (measured ~8x here; on a CPU with AMX and no cap it is ~3x faster)."""
    code = """
import time, torch
torch.set_num_threads(1)
x, w = torch.randn(64, 576), torch.randn(1536, 576)
pairs = {dt: (x.to(dt), w.to(dt)) for dt in (torch.float32, torch.bfloat16)}
best = {dt: float("inf") for dt in pairs}
for _ in range(7):  # interleaved, best of 7: robust to other load on the machine
    for dt, (a, b) in pairs.items():
        t = time.perf_counter()
        for _ in range(20):
            torch.nn.functional.linear(a, b)
        best[dt] = min(best[dt], time.perf_counter() - t)
print(best[torch.bfloat16] / best[torch.float32])
"""
    env = {**{k: v for k, v in os.environ.items() if k not in hardware.ISA_CAP_VARS}, **CAPS}
    ratio = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                 check=True, timeout=300).stdout)
    assert ratio > 2.0, f"bfloat16 / float32 time under {CAPS}: {ratio:.2f}"


def test_thread_plan(monkeypatch):
    monkeypatch.setattr(hardware, "_local_servers", 0)  # the session's vLLM server fixture may run in this process
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert hardware.thread_plan() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(hardware, "usable_cores", lambda: 8)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 3)
    assert hardware.torch_threads() == 5
    monkeypatch.setattr(hardware, "busy_cores", lambda: 20)
    assert hardware.torch_threads() == 1  # never 0
    monkeypatch.setattr(hardware, "busy_cores", lambda: 0)
    hardware.note_local_server(True)
    try:
        assert hardware.thread_plan() == (1, "a local vLLM server on CPU holds the cores")
    finally:
        hardware.note_local_server(False)
    assert hardware.torch_threads() == 8


def test_usable_cores_follow_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no affinity on this OS")
    code = "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); " \
           "from metakl import hardware; print(hardware.usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_a_run_decides_its_threads_once(monkeypatch):
    monkeypatch.setattr(hardware, "_local_servers", 0)
    for var in ("OMP_NUM_THREADS", hardware.RUN_THREADS_VAR):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hardware, "usable_cores", lambda: 4)
    monkeypatch.setattr(hardware, "busy_cores", lambda: 1)
    with hardware.threads_for_run() as threads:
        assert threads == 3
        monkeypatch.setattr(hardware, "busy_cores", lambda: 3)  # the run's own work raises the load
        assert hardware.thread_plan() == (3, "decided when this run started")
        with hardware.threads_for_run() as inner:  # a run inside a run keeps the outer decision
            assert inner == 3
        assert os.environ[hardware.RUN_THREADS_VAR] == "3"  # inherited by the run's child processes (Ray workers)
    assert hardware.RUN_THREADS_VAR not in os.environ and hardware.torch_threads() == 1  # after the run: the load
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    with hardware.threads_for_run():
        assert hardware.thread_plan() == (2, "OMP_NUM_THREADS")  # the user's choice still wins
