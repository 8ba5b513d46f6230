"""The dataset card's project link (from the installed package's metadata, never a made-up URL) and its num_bytes
(the parquet files as written)."""

from __future__ import annotations

import email.message
import importlib.metadata
from pathlib import Path

from huggingface_hub import DatasetCard

from metakl.io import load_stage
from metakl.stages.publish import PublishConfig, project_url, publish, write_release
from tests.test_publish import stage_dir  # noqa: F401 - fixture


def _release(stage_dir: Path, out: Path, **options) -> Path:
    result = publish(load_stage(stage_dir), PublishConfig(name="Test release", **options), input_dir=stage_dir)
    return write_release(result, out)


def test_num_bytes_are_the_sizes_of_the_written_files(stage_dir, tmp_path):
    out = _release(stage_dir, tmp_path / "release", test_size=0.5, shard_rows=1)  # several shards per split
    data = DatasetCard.load(out / "README.md").data.to_dict()
    paths = {c["config_name"]: {f["split"]: f["path"] for f in c["data_files"]} for c in data["configs"]}
    for info in data["dataset_info"]:
        total = 0
        for split in info["splits"]:
            files = sorted(out.glob(paths[info["config_name"]][split["name"]]))
            assert files, (info["config_name"], split["name"])
            size = sum(f.stat().st_size for f in files)
            assert split["num_bytes"] == size > 0, (info["config_name"], split["name"])
            total += size
        assert info["download_size"] == info["dataset_size"] == total


def test_card_links_only_to_the_packages_own_url(stage_dir, tmp_path, monkeypatch):
    # The installed metakl as it is: today pyproject has no [project.urls], so the card names it without a link
    # (the card used to link "https://github.com/", which is no project's page).
    text = (_release(stage_dir, tmp_path / "a") / "README.md").read_text()
    assert "https://github.com/)" not in text
    url = project_url()
    assert f"Built with {f'[metakl]({url})' if url else 'metakl'} for Group Direct" in text
    # A distribution that declares one (metadata as pyproject's [project.urls] writes it): the card links there.
    fake = email.message.Message()
    fake["Name"] = "metakl"
    fake["Project-URL"] = "Documentation, https://docs.example.org/metakl"
    fake["Project-URL"] = "Repository, https://code.example.org/team/metakl"
    monkeypatch.setattr(importlib.metadata, "metadata", lambda name: fake)
    assert project_url() == "https://code.example.org/team/metakl"  # the repository over the documentation
    text = (_release(stage_dir, tmp_path / "b") / "README.md").read_text()
    assert "Built with [metakl](https://code.example.org/team/metakl) for Group Direct" in text
