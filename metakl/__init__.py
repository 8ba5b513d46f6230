"""MetaKL: distillation data tagged with metacognitive knowledge (arXiv 2511.12113)."""

__version__ = "0.1.0"
