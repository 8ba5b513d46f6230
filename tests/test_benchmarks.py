"""benchmarks/ scripts stand alone: the annotation benchmarks start (and stop) their own vLLM server when no
--base-url is given, as `metakl demo` does, so `make bench` works on a fresh machine (issue 22)."""

from __future__ import annotations

import argparse
import importlib.util

import httpx
import pytest

from conftest import ROOT, SMOLLM2


def _benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"base_url": None, "model": SMOLLM2, "annotators": "embedding,guided,open",
                                 "calibrate": False, **given})


@pytest.mark.parametrize("name", ["annotate_speed", "annotate_quality"])
def test_no_server_is_started_when_one_is_given_or_none_is_needed(name):
    bench = _benchmark(name)
    for args in (_args(base_url="http://127.0.0.1:9/v1"), _args(annotators="embedding")):
        before = vars(args).copy()
        with bench.llm_server(args):
            assert vars(args) == before  # the given server (or none) is used as it is
    if name == "annotate_quality":
        args = _args(calibrate=True)
        with bench.llm_server(args):
            assert args.base_url is None  # --calibrate asks no model


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.xdist_group("own_vllm_engine")
def test_annotate_speed_starts_and_stops_its_own_server(smollm2_path):
    """Before issue 22 the script defaulted to http://127.0.0.1:8011/v1 and failed unless a server ran there."""
    args = _args(annotators="guided")
    with _benchmark("annotate_speed").llm_server(args):
        url = args.base_url
        assert url.startswith("http://127.0.0.1:") and args.model == SMOLLM2
        assert SMOLLM2 in [m["id"] for m in httpx.get(f"{url}/models", timeout=30).json()["data"]]
    with pytest.raises(httpx.ConnectError):  # stopped with the run
        httpx.get(f"{url}/models", timeout=5)
