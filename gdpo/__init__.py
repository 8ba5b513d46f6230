"""Group Direct Preference Optimization (MetaGDPO, arXiv 2511.12113) on MetaKL releases — not TRL's "GDPO"
(a multi-reward normalization option of its GRPOConfig)."""

__version__ = "0.1.0"
