"""`python -m metakl.demo` (what `make demo` runs) says which dtype it picked and why, and runs in it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from metakl import hardware

CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _demo(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in hardware.ISA_CAP_VARS}
    return subprocess.run([sys.executable, "-m", "metakl.demo", *args], capture_output=True, text=True,
                          env={**env, "HF_HUB_OFFLINE": "1", **(extra or {})}, timeout=600)


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
