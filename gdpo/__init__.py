"""GDPO: Group Direct Preference Optimization on MetaKL releases (arXiv 2511.12113)."""

__version__ = "0.1.0"
