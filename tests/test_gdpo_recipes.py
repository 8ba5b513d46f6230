"""Recipes (`--recipe paper | paper-literal | low-drift`) and the per-group normalisation (`group_normalization`)."""

from __future__ import annotations

import math

import pytest
import torch

from gdpo.losses import gdpo_loss


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _loss(ell, rewards, pairing, norm, tie_keys=None):
    policy = torch.tensor([ell], dtype=torch.float64)
    keys = None if tie_keys is None else torch.tensor([tie_keys])
    loss, metrics = gdpo_loss(policy, torch.zeros_like(policy), torch.tensor([rewards], dtype=torch.float64), beta=1.0,
                              pairing=pairing, weighting="none", link="sigmoid", tie_keys=keys, group_normalization=norm)
    return loss.item(), metrics


def test_paper_normalisation_divides_by_g_minus_1_with_binary_rewards():
    """Binary rewards, G = 4, one correct response: the adjacent chain has a single informative pair (0, 1) (ties
    ordered by column). Its pair loss is −σ(ℓ_0 − ℓ_1) = −σ(0.7). `pairs` divides by the 1 counted pair, `paper` by
    G − 1 = 3: the group weighs (G−1)× more under `pairs`."""
    ell, rewards = [0.5, -0.2, 0.3, 0.1], [1.0, 0.0, 0.0, 0.0]
    pairs, _ = _loss(ell, rewards, "adjacent", "pairs")
    paper, metrics = _loss(ell, rewards, "adjacent", "paper")
    assert pairs == pytest.approx(-sig(0.7), rel=1e-12)
    assert paper == pytest.approx(-sig(0.7) / 3, rel=1e-12)
    assert pairs / paper == pytest.approx(3.0, rel=1e-12)  # G − 1
    assert metrics["counted_pairs"] == 1 and metrics["loss_sum"] == pytest.approx(-sig(0.7) / 3, rel=1e-12)


def test_paper_normalisation_block_and_all_by_hand():
    # block, rewards [1, 1, 0, 0]: blocks {0, 1} > {2, 3}, pairs (0, 2) and (1, 3): Δ = 0.7 and −0.2.
    ell = [0.5, 0.1, -0.2, 0.3]
    total = -(sig(0.7) + sig(-0.2))
    assert _loss(ell, [1.0, 1.0, 0.0, 0.0], "block", "pairs")[0] == pytest.approx(total / 2, rel=1e-12)
    assert _loss(ell, [1.0, 1.0, 0.0, 0.0], "block", "paper")[0] == pytest.approx(total / 3, rel=1e-12)  # G − 1 = 3
    # all, rewards [1, 0, 0]: pairs (0, 1), (0, 2); the paper's 2/(G(G−1)) = 1/3 for G = 3.
    ell3 = [0.5, -0.2, 0.3]
    total3 = -(sig(0.7) + sig(0.2))
    assert _loss(ell3, [1.0, 0.0, 0.0], "all", "pairs")[0] == pytest.approx(total3 / 2, rel=1e-12)
    assert _loss(ell3, [1.0, 0.0, 0.0], "all", "paper")[0] == pytest.approx(total3 / 3, rel=1e-12)


@pytest.mark.parametrize("pairing", ["adjacent", "block", "all"])
def test_normalisations_agree_without_ties(pairing):
    ell, rewards = [0.5, -0.2, 0.3, 0.1], [0.9, 0.1, 0.5, 0.3]
    assert _loss(ell, rewards, pairing, "paper")[0] == pytest.approx(_loss(ell, rewards, pairing, "pairs")[0], rel=1e-12)


def test_unknown_group_normalization_is_refused():
    with pytest.raises(ValueError, match="group_normalization"):
        _loss([0.1, 0.2], [1.0, 0.0], "block", "mean")


# ---- recipes: resolved settings ---------------------------------------------------------------------------------------


def settings(*argv, yaml_text: str | None = None, tmp_path=None):
    from gdpo.cli import Settings

    args = list(argv)
    if yaml_text is not None:
        path = tmp_path / "train.yaml"
        path.write_text(yaml_text)
        args = ["--config", str(path), *args]
    return Settings("train").parse(["--output_dir", "/tmp/unused", "--use_cpu", "true", *args])[2]


def resolved(cfg) -> dict:
    return {k: getattr(cfg, k) for k in ("weighting", "pairing", "link", "group_normalization", "rpo_alpha")}


def test_paper_recipe_is_the_default():
    cfg = settings()
    assert cfg.recipe == "paper" and cfg.loss == "gdpo"
    assert resolved(cfg) == dict(weighting="minmax", pairing="block", link="sigmoid", group_normalization="paper", rpo_alpha=0.0)
    assert cfg.recipe_given == [] and cfg.beta == 0.1 and cfg.learning_rate == 2e-6


def test_paper_literal_recipe_is_the_printed_formula_and_warns(capsys):
    cfg = settings("--recipe", "paper-literal")
    assert resolved(cfg) == dict(weighting="raw", pairing="adjacent", link="sigmoid", group_normalization="paper", rpo_alpha=0.0)
    err = capsys.readouterr().err
    assert "warning: weighting raw is the paper's formula as printed" in err and "pushes the likelihood of the worst responses UP" in err
    # the A ≤ 0 problem is stated in --help too
    from gdpo.cli import Settings

    assert "A_i <= 0 gives infinite/negative weights" in " ".join(Settings("train").help().split())


def test_low_drift_recipe_is_the_previous_default():
    cfg = settings("--recipe", "low-drift")
    assert resolved(cfg) == dict(weighting="none", pairing="block", link="sigmoid", group_normalization="pairs", rpo_alpha=1.0)
    # the recipe's NLL term is for loss gdpo; the baselines stay plain
    assert settings("--recipe", "low-drift", "--loss", "dpo").rpo_alpha == 0.0


def test_given_settings_override_the_recipe_even_when_equal_to_the_default(tmp_path):
    # minmax and group_normalization paper are the default recipe's values: given explicitly they still win.
    cfg = settings("--recipe", "low-drift", "--weighting", "minmax", "--rpo_alpha", "0", "--group-normalization", "paper")
    assert resolved(cfg) == dict(weighting="minmax", pairing="block", link="sigmoid", group_normalization="paper", rpo_alpha=0.0)
    assert sorted(cfg.recipe_given) == ["group_normalization", "rpo_alpha", "weighting"]
    # YAML keys count as given; the command line wins over the YAML
    cfg = settings("--link", "logsigmoid", yaml_text="recipe: low-drift\nrpo_alpha: 0.0\nlink: sigmoid\n", tmp_path=tmp_path)
    assert cfg.recipe == "low-drift" and cfg.rpo_alpha == 0.0 and cfg.link == "logsigmoid" and cfg.weighting == "none"
    # and from Python
    from gdpo.trainer import GDPOConfig

    cfg = GDPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], recipe="low-drift", rpo_alpha=0.0)
    assert cfg.rpo_alpha == 0.0 and cfg.weighting == "none"


def test_unknown_recipe_is_one_line_naming_the_choices():
    from metakl.errors import UserError

    with pytest.raises(UserError, match=r"command line: setting 'recipe': expected one of paper, paper-literal, low-drift, got 'papr'"):
        settings("--recipe", "papr")
