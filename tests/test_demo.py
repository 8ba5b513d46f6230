"""`python -m metakl.demo` (what `make demo` runs) says which dtype it picked and why, and runs in it."""

from __future__ import annotations

import subprocess

import pytest

from conftest import run_cli
from metakl import hardware

CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NATIVE = {var: None for var in hardware.ISA_CAP_VARS}  # this machine's own CPU, whatever the test run inherited


def _demo(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli(*args, module="metakl.demo", env={**NATIVE, **(extra or {})})


@pytest.mark.slow
def test_demo_on_a_cpu_without_native_bf16_picks_float32_and_says_why(smollm2_path):
    r = _demo("--backends", "transformers", "--max-tokens", "2", extra=CAPS)  # an AVX2-only CPU, emulated
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith("dtype auto: float32 (") and "bfloat16 would be emulated" in first
    if hardware.native_bf16_flags():
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in first
    else:
        assert "no native bfloat16" in first
    assert "dtype auto" not in r.stderr  # said once
    assert "transformers: 4 requests" in r.stdout and "0 failures" in r.stdout


def test_demo_refuses_an_unknown_dtype():
    r = _demo("--backends", "transformers", "--dtype", "bf16")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: dtype 'bf16': expected one of auto, float32, bfloat16, float16"
