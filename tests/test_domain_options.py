"""Per-domain settings and KEY=VALUE options (issue 20 item 10): an unknown domain is an error everywhere, with
one message from one helper (`metakl.schema.domain_mapping`), on the command line and in config files."""

from __future__ import annotations


import pytest
from datasets import Dataset

from conftest import run_cli
from metakl.errors import UserError
from metakl.io import save_stage
from metakl.schema import domain_mapping, features, key_values, make_id
from metakl.stages.annotate import AnnotateConfig
from metakl.stages.dedup import DedupConfig
from metakl.stages.filter import FilterConfig

UNKNOWN = "unknown domain 'bogus'; expected one of math, general, safety"


def test_key_values_parses_and_names_the_option():
    assert key_values(["safety=0.12", " math = 0.2"], "--x", "DOMAIN=EPSILON", "safety=0.1", float) == \
        {"safety": 0.12, "math": 0.2}
    for bad in ("safety", "=0.1", "safety=", "safety=abc"):
        with pytest.raises(UserError, match=rf"^--x: expected DOMAIN=EPSILON \(e.g. safety=0.1\), got '{bad}'$"):
            key_values([bad], "--x", "DOMAIN=EPSILON", "safety=0.1", float)


def test_domain_mapping_refuses_unknown_domains_and_non_mappings():
    assert domain_mapping({"math": 1, "safety": 2}, "w") == {"math": 1, "safety": 2}
    with pytest.raises(UserError, match=f"^w: {UNKNOWN}$"):
        domain_mapping({"math": 1, "bogus": 2}, "w")
    with pytest.raises(UserError, match=r"^w: expected a mapping of domain to value, got \[1\]$"):
        domain_mapping([1], "w")


@pytest.mark.parametrize("make, what", [
    (lambda: DedupConfig(domain_epsilon={"bogus": 0.1}), "dedup: domain_epsilon"),
    (lambda: FilterConfig(quotas={"bogus": 3}), "filter: quotas"),
    (lambda: AnnotateConfig(templates={"math": "math", "bogus": "general"}), "annotate: templates"),
])
def test_stage_configs_refuse_unknown_domains(make, what):
    with pytest.raises(UserError, match=f"^{what}: {UNKNOWN}$"):
        make()


@pytest.fixture()
def stage_input(tmp_path):
    rows = [{"id": make_id(q, "s"), "source": "s", "domain": "math", "question": q, "reference": "1", "choices": [],
             "meta": "{}", "errors": []} for q in ("What is 1 + 0?", "What is 2 - 1?")]
    save_stage(Dataset.from_list(rows, features=features()), tmp_path / "in")
    return tmp_path / "in"


def test_cli_options_and_config_files_refuse_unknown_domains(stage_input, tmp_path):
    """The reproduction from the issue (`--domain-epsilon bogus=0.1` was accepted) and its siblings: exit 2, one line
    naming the option or the setting, nothing written."""
    config = tmp_path / "c.yaml"
    config.write_text("dedup: {domain_epsilon: {bogus: 0.1}}\nfilter: {quotas: {bogus: 3}}\n")
    out = tmp_path / "out"
    for args, message in (
        (["dedup", str(stage_input), "--out", str(out), "--domain-epsilon", "bogus=0.1"], f"--domain-epsilon: {UNKNOWN}"),
        (["dedup", str(stage_input), "--out", str(out), "--domain-epsilon", "safety"],
         "--domain-epsilon: expected DOMAIN=EPSILON (e.g. safety=0.1), got 'safety'"),
        (["dedup", str(stage_input), "--out", str(out), "--config", str(config)], f"dedup: domain_epsilon: {UNKNOWN}"),
        (["filter", str(stage_input), "--out", str(out), "--quota", "bogus=3"], f"--quota: {UNKNOWN}"),
        (["filter", str(stage_input), "--out", str(out), "--config", str(config)], f"filter: quotas: {UNKNOWN}"),
    ):
        proc = run_cli(*args, in_process=True)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and not out.exists()
