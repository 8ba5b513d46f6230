"""Shared fixtures: real embedded models and a real local vLLM server (no stubs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("METAKL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SMOLLM2 = "smollm2-135m-instruct"


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not present: {path}")
    return path


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    from metakl.llm.models import resolve_chat_model

    return resolve_chat_model(SMOLLM2)


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from metakl.llm.models import resolve_embedding_model

    return resolve_embedding_model("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def vllm_server_url(smollm2_path) -> str:
    """Base URL of a real vLLM server serving SmolLM2 as 'smollm2-135m-instruct'.

    METAKL_TEST_VLLM_URL reuses a server already running (for quick local iterations); otherwise one is started
    for the session and stopped at the end.
    """
    url = os.environ.get("METAKL_TEST_VLLM_URL")
    if url:
        yield url
        return
    from metakl.llm.serve import VLLMServer

    with VLLMServer(SMOLLM2) as server:
        yield server.url
